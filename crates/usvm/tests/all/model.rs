//! Property test: random sequences of SET_ATTR / GET_ATTR (valid and invalid) against a
//! simple per-page reference model. Every errno, every GET result and the range boundaries
//! with their attributes must agree after every call.
//!
//! The model keeps, for each page of a small window, the attributes of the range holding it
//! and an id naming that range; a range is a run of pages with the same id. It implements
//! the kernel's rules directly on pages, with no tree and no shared code with the library.

use crate::util::*;
use proptest::prelude::*;
use usvm::uapi::*;
use usvm::{Location, RawAttr, Svm};

/// Window size: 3 maximum-size ranges of the 64 MiB-VRAM instance (512 pages each).
const W: u64 = 1536;
const MAX_PAGES: u64 = 512;
/// Unmapped holes inside the window: (first page, pages).
const HOLES: [(u64, u64); 2] = [(700, 3), (1300, 2)];
const UNDEF: u32 = KFD_IOCTL_SVM_LOCATION_UNDEFINED;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MAttrs {
    pref: u32,
    prefetch: u32,
    flags: u32,
    gran: u8,
    access: u64,
    aip: u64,
}

struct Model {
    /// Page number of the window's first page.
    base: u64,
    gpus: Vec<u32>,
    xnack: bool,
    pages: Vec<Option<(MAttrs, u64)>>,
    next_id: u64,
}

impl Model {
    fn new(base: u64, gpus: Vec<u32>, xnack: bool) -> Self {
        Model {
            base,
            gpus,
            xnack,
            pages: vec![None; W as usize],
            next_id: 1,
        }
    }

    fn all(&self) -> u64 {
        (1u64 << self.gpus.len()) - 1
    }

    fn defaults(&self) -> MAttrs {
        MAttrs {
            pref: UNDEF,
            prefetch: UNDEF,
            flags: 0x3,
            gran: 9,
            access: if self.xnack { self.all() } else { 0 },
            aip: 0,
        }
    }

    fn idx(&self, id: u32) -> Option<usize> {
        self.gpus.iter().position(|&g| g == id)
    }

    fn mapped(&self, p: u64) -> bool {
        p < W && !HOLES.iter().any(|&(s, n)| p >= s && p < s + n)
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The window-relative page interval [s, l] of an ioctl, or its errno.
    fn entry(&self, start: u64, size: u64) -> Result<(u64, u64), i32> {
        if !start.is_multiple_of(4096) || !size.is_multiple_of(4096) || start == 0 || size == 0 {
            return Err(libc::EINVAL);
        }
        let end = start.checked_add(size).ok_or(libc::EINVAL)?;
        let s = (start >> 12) - self.base;
        let l = (end >> 12) - 1 - self.base;
        Ok((s, l))
    }

    fn ioctl(&mut self, op: u32, start: u64, size: u64, attrs: &mut [RawAttr]) -> i32 {
        let (s, l) = match self.entry(start, size) {
            Ok(v) => v,
            Err(e) => return e,
        };
        match op {
            KFD_IOCTL_SVM_OP_SET_ATTR => self.set(s, l, attrs),
            KFD_IOCTL_SVM_OP_GET_ATTR => self.get(s, l, attrs),
            _ => libc::EINVAL,
        }
    }

    fn set(&mut self, s: u64, l: u64, attrs: &[RawAttr]) -> i32 {
        for a in attrs {
            let ok = match a.ty {
                0 => a.value == 0 || a.value == UNDEF || self.idx(a.value).is_some(),
                1 => a.value == 0 || self.idx(a.value).is_some(),
                2..=4 => self.idx(a.value).is_some(),
                5..=7 => true,
                _ => false,
            };
            if !ok {
                return libc::EINVAL;
            }
        }
        if !(s..=l).all(|p| self.mapped(p)) {
            return libc::EFAULT;
        }
        // Pages to update: every page of [s, l] (no range is mapped to a GPU yet, so none
        // is skipped as "same attributes"). Ranges sticking out are cut at s and l + 1.
        let cut = |m: &mut Model, at: u64| {
            // Give the pages from `at` to the end of their range a new id.
            if at >= W || at == 0 {
                return;
            }
            let (Some((_, left)), Some((_, right))) =
                (m.pages[at as usize - 1], m.pages[at as usize])
            else {
                return;
            };
            if left != right {
                return;
            }
            let id = m.fresh_id();
            let mut p = at;
            while p < W && matches!(m.pages[p as usize], Some((_, x)) if x == right) {
                m.pages[p as usize].as_mut().unwrap().1 = id;
                p += 1;
            }
        };
        cut(self, s);
        cut(self, l + 1);
        // Gaps: new ranges cut at absolute multiples of MAX_PAGES.
        let d = self.defaults();
        let mut p = s;
        while p <= l {
            if self.pages[p as usize].is_none() {
                let id = self.fresh_id();
                let mut q = p;
                while q <= l && self.pages[q as usize].is_none() {
                    if q != p && (self.base + q).is_multiple_of(MAX_PAGES) {
                        break;
                    }
                    self.pages[q as usize] = Some((d, id));
                    q += 1;
                }
                p = q;
            } else {
                p += 1;
            }
        }
        for p in s..=l {
            let (m, _) = self.pages[p as usize].as_mut().unwrap();
            for a in attrs {
                let bit = |v: u32| 1u64 << self.gpus.iter().position(|&g| g == v).unwrap();
                match a.ty {
                    0 => m.pref = a.value,
                    1 => m.prefetch = a.value,
                    2 => {
                        m.access |= bit(a.value);
                        m.aip &= !bit(a.value);
                    }
                    3 => {
                        m.access &= !bit(a.value);
                        m.aip |= bit(a.value);
                    }
                    4 => {
                        m.access &= !bit(a.value);
                        m.aip &= !bit(a.value);
                    }
                    5 => m.flags |= a.value,
                    6 => m.flags &= !a.value,
                    7 => m.gran = a.value.min(63) as u8,
                    _ => unreachable!(),
                }
            }
        }
        0
    }

    fn get(&self, s: u64, l: u64, attrs: &mut [RawAttr]) -> i32 {
        if !(s..=l).all(|p| self.mapped(p)) {
            return libc::EFAULT;
        }
        if attrs.iter().any(|a| !matches!(a.ty, 0 | 1 | 2 | 5 | 6 | 7)) {
            return libc::EINVAL;
        }
        let covered: Vec<MAttrs> = (s..=l)
            .filter_map(|p| self.pages[p as usize].map(|(m, _)| m))
            .collect();
        let (pref, prefetch, fand, forr, gran, acc, aip) = if covered.is_empty() {
            let d = self.defaults();
            (d.pref, d.prefetch, d.flags, d.flags, d.gran, d.access, 0)
        } else {
            let common = |f: fn(&MAttrs) -> u32| {
                let v = f(&covered[0]);
                if covered.iter().all(|m| f(m) == v) {
                    v
                } else {
                    UNDEF
                }
            };
            (
                common(|m| m.pref),
                common(|m| m.prefetch),
                covered.iter().fold(!0, |a, m| a & m.flags),
                covered.iter().fold(0, |a, m| a | m.flags),
                covered.iter().map(|m| m.gran).min().unwrap(),
                covered.iter().fold(self.all(), |a, m| a & m.access),
                covered.iter().fold(self.all(), |a, m| a & m.aip),
            )
        };
        for a in attrs.iter_mut() {
            match a.ty {
                0 => a.value = pref,
                1 => a.value = prefetch,
                2 => {
                    let Some(i) = self.idx(a.value) else {
                        return libc::EINVAL;
                    };
                    a.ty = if acc & (1 << i) != 0 {
                        2
                    } else if aip & (1 << i) != 0 {
                        3
                    } else {
                        4
                    };
                }
                5 => a.value = fand,
                6 => a.value = !forr,
                7 => a.value = u32::from(gran),
                _ => unreachable!(),
            }
        }
        0
    }

    /// Ranges as (window page, pages, attributes).
    fn ranges(&self) -> Vec<(u64, u64, MAttrs)> {
        let mut out: Vec<(u64, u64, MAttrs)> = Vec::new();
        let mut prev_id = 0;
        for (p, e) in self.pages.iter().enumerate() {
            match e {
                Some((m, id)) if *id == prev_id => out.last_mut().unwrap().1 += 1,
                Some((m, id)) => {
                    out.push((p as u64, 1, *m));
                    prev_id = *id;
                }
                None => prev_id = 0,
            }
        }
        out
    }
}

fn real_ranges(svm: &Svm, base: u64) -> Vec<(u64, u64, MAttrs)> {
    let gpus = svm.gpu_ids();
    let mask = |ids: &[usvm::GpuId]| {
        ids.iter()
            .map(|g| 1u64 << gpus.iter().position(|x| x == g).unwrap())
            .sum()
    };
    svm.ranges()
        .iter()
        .map(|r| {
            assert_eq!(r.actual_loc, Location::Sysmem);
            assert_eq!(r.vram_pages, 0);
            (
                (r.start as u64 >> 12) - base,
                r.size as u64 >> 12,
                MAttrs {
                    pref: r.preferred_loc.to_raw(),
                    prefetch: r.prefetch_loc.to_raw(),
                    flags: r.flags.bits(),
                    gran: r.granularity as u8,
                    access: mask(&r.access),
                    aip: mask(&r.access_in_place),
                },
            )
        })
        .collect()
}

/// One generated call.
#[derive(Clone, Debug)]
enum Call {
    Ioctl {
        op: u32,
        start: u64,
        npages: u64,
        skew: u8,
        attrs: Vec<(u32, u32)>,
    },
    Xnack(bool),
}

fn attr_strategy() -> impl Strategy<Value = (u32, u32)> {
    let ty = prop_oneof![20 => 0u32..8, 1 => 8u32..10];
    (ty, 0u8..8, any::<u32>()).prop_map(|(ty, sel, raw)| {
        // Values are chosen from pools that matter for the type; the GPU ids are 0x1111 and
        // 0x2222 (the instance's), 0xdead is unknown. `raw` gives random flags / sizes.
        let v = match ty {
            0 | 1 => [0, UNDEF, 0x1111, 0x2222, 0x1111, 0x2222, 0xdead, raw][sel as usize],
            2..=4 => [0x1111, 0x2222, 0x1111, 0x2222, 0x1111, 0x2222, 0xdead, 0][sel as usize],
            5 | 6 => [0x1, 0x2, 0x8, 0x10, 0x40, raw & 0xff, raw, 0x3][sel as usize],
            7 => [0, 1, 5, 9, 63, 64, 100, raw][sel as usize],
            _ => raw,
        };
        (ty, v)
    })
}

fn call_strategy() -> impl Strategy<Value = Call> {
    let op = prop_oneof![12 => Just(0u32), 8 => Just(1u32), 1 => Just(2u32)];
    let npages = prop_oneof![4 => 1u64..16, 3 => 1u64..700, 1 => 1u64..=W];
    let skew = prop_oneof![30 => Just(0u8), 1 => 1u8..5];
    let ioctl = (
        op,
        0..W,
        npages,
        skew,
        prop::collection::vec(attr_strategy(), 0..5),
    )
        .prop_map(|(op, start, npages, skew, attrs)| Call::Ioctl {
            op,
            start,
            npages: npages.min(W - start),
            skew,
            attrs,
        });
    prop_oneof![30 => ioctl, 1 => any::<bool>().prop_map(Call::Xnack)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn set_get_match_the_model(xnack in any::<bool>(), calls in prop::collection::vec(call_strategy(), 1..40)) {
        let svm = Svm::builder().gpus(2).vram_bytes(64 << 20).xnack(xnack).build().unwrap();
        prop_assert_eq!(svm.max_range_bytes(), MAX_PAGES as usize * PAGE);
        let map = Mapping::anon(W as usize * PAGE, 2 * MIB);
        for (p, n) in HOLES {
            map.punch(p as usize * PAGE, n as usize * PAGE);
        }
        let base = map.addr as u64 >> 12;
        let mut model = Model::new(base, svm.gpu_ids().iter().map(|g| g.0).collect(), xnack);
        for (i, call) in calls.iter().enumerate() {
            match call {
                Call::Xnack(on) => {
                    svm.set_xnack(*on).unwrap();
                    model.xnack = *on;
                }
                Call::Ioctl { op, start, npages, skew, attrs } => {
                    let mut start = (base + start) << 12;
                    let mut size = npages << 12;
                    match skew {
                        1 => start += 1,
                        2 => size += 2048,
                        3 => size = 0,
                        4 => start = 0,
                        _ => {}
                    }
                    let mut real: Vec<RawAttr> = attrs.iter().map(|&(t, v)| RawAttr::new(t, v)).collect();
                    // GET queries use query types only most of the time.
                    if *op == KFD_IOCTL_SVM_OP_GET_ATTR {
                        for a in real.iter_mut() {
                            if a.ty == 3 && a.value % 2 == 0 { a.ty = 2; }
                        }
                    }
                    let mut expect = real.clone();
                    let got = errno(svm.svm_ioctl(*op, start, size, &mut real));
                    let want = model.ioctl(*op, start, size, &mut expect);
                    prop_assert_eq!(got, want, "call {}: {:?}", i, call);
                    prop_assert_eq!(&real, &expect, "call {} results: {:?}", i, call);
                }
            }
            prop_assert_eq!(real_ranges(&svm, base), model.ranges(), "ranges after call {}: {:?}", i, call);
        }
    }
}
