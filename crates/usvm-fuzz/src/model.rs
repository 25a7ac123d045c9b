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
use usvm::{RawAttr, Svm};

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
    pages: Vec<Option<(MAttrs, bool, u64)>>,
    /// Per page: the GPU (id) whose VRAM holds the data, if any.
    vram: Vec<Option<u32>>,
    next_id: u64,
}

impl Model {
    fn new(base: u64, gpus: Vec<u32>, xnack: bool) -> Self {
        Model { base, gpus, xnack, pages: vec![None; W as usize], vram: vec![None; W as usize], next_id: 1 }
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

    fn bit(&self, gpu: u32) -> u64 {
        1u64 << self.idx(gpu).unwrap()
    }

    /// Whether a range already has every requested attribute (PREFETCH never does;
    /// granularity compares the raw value).
    fn has_all(&self, m: &MAttrs, attrs: &[RawAttr]) -> bool {
        attrs.iter().all(|a| match a.ty {
            0 => m.pref == a.value,
            1 => false,
            2 => m.access & self.bit(a.value) != 0,
            3 => m.aip & self.bit(a.value) != 0,
            4 => (m.access | m.aip) & self.bit(a.value) == 0,
            5 => m.flags & a.value == a.value,
            6 => m.flags & a.value == 0,
            7 => u32::from(m.gran) == a.value,
            _ => unreachable!(),
        })
    }

    /// The GPUs a range is mapped on by SET_ATTR; `actual` is where its data is.
    fn map_set(&self, m: &MAttrs, mapped: bool, actual: Option<u32>) -> u64 {
        if !self.xnack {
            return m.access | m.aip;
        }
        let mut set = m.aip;
        if let Some(g) = actual {
            set |= self.bit(g) & m.access;
        }
        if set == 0 && (mapped || m.flags & 0x40 != 0) { m.access } else { set }
    }

    /// Where a range's data goes (prefetch decision, then the seed's PREFERRED_LOC rule);
    /// returns (migration attempted, invalidated the GPUs). Everything fits in VRAM and
    /// every page of the window is anonymous, so a migration moves the whole range.
    fn migrate(&mut self, a: u64, b: u64, old_pref: u32, asks_prefetch: bool) -> bool {
        let m = self.pages[a as usize].unwrap().0;
        let cur = self.vram[a as usize];
        let best = match m.prefetch {
            UNDEF | 0 => m.prefetch,
            g => {
                let cands = if self.xnack { m.aip } else { m.access | m.aip };
                if cands & !self.bit(g) != 0 { 0 } else { g }
            }
        };
        let is_gpu = |v: u32| v != 0 && v != UNDEF;
        let seed = if !asks_prefetch && m.pref != old_pref {
            if (old_pref == 0 || old_pref == UNDEF) && is_gpu(m.pref) {
                let cands = if self.xnack { m.aip } else { m.access | m.aip };
                Some(if cands & !self.bit(m.pref) != 0 { 0 } else { m.pref })
            } else if is_gpu(old_pref) && m.pref == 0 {
                Some(0)
            } else {
                None
            }
        } else {
            None
        };
        let target = match (best, seed) {
            (UNDEF, None) => return false,
            (UNDEF, Some(t)) => t,
            (b, _) => b,
        };
        if target == 0 && cur.is_none() {
            return false;
        }
        let to = if target == 0 { None } else { Some(target) };
        for p in a..=b {
            self.vram[p as usize] = to;
        }
        // The migration's invalidation: XNACK on (without ALWAYS_MAPPED) unmaps the range.
        if self.xnack && m.flags & 0x40 == 0 {
            for p in a..=b {
                self.pages[p as usize].as_mut().unwrap().1 = false;
            }
        }
        true
    }

    /// The extent [first, last] of the range holding page `p`.
    fn extent(&self, p: u64) -> (u64, u64) {
        let id = self.pages[p as usize].unwrap().2;
        let same = |q: u64| matches!(self.pages[q as usize], Some((_, _, x)) if x == id);
        let (mut a, mut b) = (p, p);
        while a > 0 && same(a - 1) {
            a -= 1;
        }
        while b + 1 < W && same(b + 1) {
            b += 1;
        }
        (a, b)
    }

    /// Gives pages [a, b] a fresh range id.
    fn relabel(&mut self, a: u64, b: u64) {
        let id = self.fresh_id();
        for p in a..=b {
            self.pages[p as usize].as_mut().unwrap().2 = id;
        }
    }

    /// Maps the range holding page `p` if its GPU set is not empty.
    fn map_range(&mut self, p: u64) {
        let (a, b) = self.extent(p);
        let (m, mapped, _) = self.pages[a as usize].unwrap();
        if self.map_set(&m, mapped, self.vram[a as usize]) != 0 {
            for q in a..=b {
                self.pages[q as usize].as_mut().unwrap().1 = true;
            }
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
        let mut updated: Vec<u64> = Vec::new(); // a page of each updated range
        let mut remap: Vec<u64> = Vec::new(); // a page of each piece to remap
        let d = self.defaults();
        let mut p = s;
        while p <= l {
            match self.pages[p as usize] {
                Some((m, mapped, _)) => {
                    let (a, b) = self.extent(p);
                    if !(mapped && self.has_all(&m, attrs)) {
                        let (base, gmask) = (self.base, (1u64 << m.gran) - 1);
                        let aligned = |x: u64| (base + x) & gmask == 0;
                        if a < s {
                            self.relabel(a, s - 1);
                            if !aligned(s) {
                                remap.push(a);
                            }
                        }
                        if b > l {
                            self.relabel(l + 1, b);
                            if !aligned(l + 1) {
                                remap.push(l + 1);
                            }
                        }
                        self.relabel(a.max(s), b.min(l));
                        updated.push(a.max(s));
                    }
                    p = b.min(l) + 1;
                }
                None => {
                    // A gap: new ranges cut at absolute multiples of MAX_PAGES.
                    let id = self.fresh_id();
                    updated.push(p);
                    let mut q = p;
                    while q <= l && self.pages[q as usize].is_none() {
                        if q != p && (self.base + q).is_multiple_of(MAX_PAGES) {
                            break;
                        }
                        self.pages[q as usize] = Some((d, false, id));
                        q += 1;
                    }
                    p = q;
                }
            }
        }
        let old_prefs: Vec<u32> = updated.iter().map(|&u| self.pages[u as usize].unwrap().0.pref).collect();
        for &u in &updated {
            let (a, b) = self.extent(u);
            for p in a..=b {
                let (m, _, _) = self.pages[p as usize].as_mut().unwrap();
                for at in attrs {
                    let bit = 1u64 << self.gpus.iter().position(|&g| g == at.value).unwrap_or(0);
                    match at.ty {
                        0 => m.pref = at.value,
                        1 => m.prefetch = at.value,
                        2 => {
                            m.access |= bit;
                            m.aip &= !bit;
                        }
                        3 => {
                            m.access &= !bit;
                            m.aip |= bit;
                        }
                        4 => {
                            m.access &= !bit;
                            m.aip &= !bit;
                        }
                        5 => m.flags |= at.value,
                        6 => m.flags &= !at.value,
                        7 => m.gran = at.value.min(63) as u8,
                        _ => unreachable!(),
                    }
                }
            }
        }
        let update_mapping = (!self.xnack && !remap.is_empty())
            || attrs.iter().any(|a| matches!(a.ty, 5 | 6) || (matches!(a.ty, 2..=4) && !self.xnack));
        let asks_prefetch = attrs.iter().any(|a| a.ty == 1);
        for (&u, &old_pref) in updated.iter().zip(&old_prefs) {
            let (a, b) = self.extent(u);
            let migrated = self.migrate(a, b, old_pref, asks_prefetch);
            let (m, mapped, _) = self.pages[a as usize].unwrap();
            if migrated && (!self.xnack || m.flags & 0x40 != 0) && mapped {
                continue;
            }
            if migrated || update_mapping {
                self.map_range(u);
            }
        }
        for &r in &remap {
            self.map_range(r);
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
        let covered: Vec<MAttrs> =
            (s..=l).filter_map(|p| self.pages[p as usize].map(|(m, _, _)| m)).collect();
        let (pref, prefetch, fand, forr, gran, acc, aip) = if covered.is_empty() {
            let d = self.defaults();
            (d.pref, d.prefetch, d.flags, d.flags, d.gran, d.access, 0)
        } else {
            let common = |f: fn(&MAttrs) -> u32| {
                let v = f(&covered[0]);
                if covered.iter().all(|m| f(m) == v) { v } else { UNDEF }
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

    /// Ranges as (window page, pages, attributes, mapped to a GPU, VRAM GPU, VRAM pages).
    fn ranges(&self) -> Vec<(u64, u64, MAttrs, bool, u32, u64)> {
        let mut out: Vec<(u64, u64, MAttrs, bool, u32, u64)> = Vec::new();
        let mut prev_id = 0;
        for (p, e) in self.pages.iter().enumerate() {
            match e {
                Some((_, _, id)) if *id == prev_id => {
                    let last = out.last_mut().unwrap();
                    last.1 += 1;
                    last.5 += u64::from(self.vram[p].is_some());
                }
                Some((m, mapped, id)) => {
                    let v = self.vram[p];
                    out.push((p as u64, 1, *m, *mapped, v.unwrap_or(0), u64::from(v.is_some())));
                    prev_id = *id;
                }
                None => prev_id = 0,
            }
        }
        out
    }
}

fn real_ranges(svm: &Svm, base: u64) -> Vec<(u64, u64, MAttrs, bool, u32, u64)> {
    let gpus = svm.gpu_ids();
    let mask =
        |ids: &[usvm::GpuId]| ids.iter().map(|g| 1u64 << gpus.iter().position(|x| x == g).unwrap()).sum();
    svm.ranges()
        .iter()
        .map(|r| {
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
                r.mapped_to_gpu,
                r.actual_loc.to_raw(),
                r.vram_pages as u64,
            )
        })
        .collect()
}

/// One generated call.
#[derive(Clone, Debug)]
enum Call {
    Ioctl { op: u32, start: u64, npages: u64, skew: u8, attrs: Vec<(u32, u32)> },
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
    let ioctl = (op, 0..W, npages, skew, prop::collection::vec(attr_strategy(), 0..5)).prop_map(
        |(op, start, npages, skew, attrs)| Call::Ioctl {
            op,
            start,
            npages: npages.min(W - start),
            skew,
            attrs,
        },
    );
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
