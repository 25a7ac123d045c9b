//! The per-page reference model of SET_ATTR / GET_ATTR, shared by the property test
//! (`tests/model.rs`) and the `ioctl` fuzz target.
//!
//! The model keeps, for each page of a small window, the attributes of the range holding it
//! and an id naming that range; a range is a run of pages with the same id. It implements
//! the kernel's rules directly on pages, with no tree and no shared code with the library.
//! Every errno, every GET result and the range boundaries with their attributes, GPU-mapping
//! state and residency must agree with the library after every call.

use usvm::uapi::*;
use usvm::{RawAttr, Svm};

/// Window size in pages: 3 maximum-size ranges of the 64 MiB-VRAM instance (512 pages each).
pub const W: u64 = 1536;
/// The maximum range size of that instance, in pages.
pub const MAX_PAGES: u64 = 512;
/// Unmapped holes inside the window: (first page, pages).
pub const HOLES: [(u64, u64); 2] = [(700, 3), (1300, 2)];
const UNDEF: u32 = KFD_IOCTL_SVM_LOCATION_UNDEFINED;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// The attributes of a range, raw.
pub struct MAttrs {
    /// PREFERRED_LOC.
    pub pref: u32,
    /// PREFETCH_LOC.
    pub prefetch: u32,
    /// Flags.
    pub flags: u32,
    /// Granularity.
    pub gran: u8,
    /// GPUs (bit = index) with ACCESS.
    pub access: u64,
    /// GPUs with ACCESS_IN_PLACE.
    pub aip: u64,
}

/// The reference model of one window.
pub struct Model {
    /// Page number of the window's first page.
    base: u64,
    gpus: Vec<u32>,
    /// XNACK mode: the defaults of new ranges and the mapping rules follow it.
    pub xnack: bool,
    pages: Vec<Option<(MAttrs, bool, u64)>>,
    /// Per page: the GPU (id) whose VRAM holds the data, if any.
    vram: Vec<Option<u32>>,
    next_id: u64,
}

impl Model {
    /// A model of the window starting at page `base`, with the instance's GPU ids.
    pub fn new(base: u64, gpus: Vec<u32>, xnack: bool) -> Self {
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

    /// The window-relative page interval [s, l] of an ioctl, `None` when some of it lies
    /// outside the window, or its errno.
    fn entry(&self, start: u64, size: u64) -> Result<Option<(u64, u64)>, i32> {
        if !start.is_multiple_of(4096) || !size.is_multiple_of(4096) || start == 0 || size == 0 {
            return Err(libc::EINVAL);
        }
        let end = start.checked_add(size).ok_or(libc::EINVAL)?;
        let s = (start >> 12).wrapping_sub(self.base);
        let l = ((end >> 12) - 1).wrapping_sub(self.base);
        Ok((s < W && l < W).then_some((s, l)))
    }

    /// One `svm_ioctl`: returns the errno (0 on success) and fills GET results in place.
    ///
    /// An interval reaching outside the window must hold some unmapped page (the caller
    /// makes sure: above the user address space, or terabytes long): it is `EFAULT` once
    /// the attributes pass validation.
    pub fn ioctl(&mut self, op: u32, start: u64, size: u64, attrs: &mut [RawAttr]) -> i32 {
        let (s, l) = match self.entry(start, size) {
            Ok(Some(v)) => v,
            Ok(None) => {
                return match op {
                    KFD_IOCTL_SVM_OP_SET_ATTR if !self.valid_set_attrs(attrs) => libc::EINVAL,
                    KFD_IOCTL_SVM_OP_SET_ATTR | KFD_IOCTL_SVM_OP_GET_ATTR => libc::EFAULT,
                    _ => libc::EINVAL,
                };
            }
            Err(e) => return e,
        };
        match op {
            KFD_IOCTL_SVM_OP_SET_ATTR => self.set(s, l, attrs),
            KFD_IOCTL_SVM_OP_GET_ATTR => self.get(s, l, attrs),
            _ => libc::EINVAL,
        }
    }

    /// SET_ATTR's first check: every attribute type and value is valid.
    fn valid_set_attrs(&self, attrs: &[RawAttr]) -> bool {
        attrs.iter().all(|a| match a.ty {
            0 => a.value == 0 || a.value == UNDEF || self.idx(a.value).is_some(),
            1 => a.value == 0 || self.idx(a.value).is_some(),
            2..=4 => self.idx(a.value).is_some(),
            5..=7 => true,
            _ => false,
        })
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
        if !self.valid_set_attrs(attrs) {
            return libc::EINVAL;
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
    pub fn ranges(&self) -> Vec<(u64, u64, MAttrs, bool, u32, u64)> {
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

/// The library's ranges in the model's terms (see [`Model::ranges`]).
pub fn real_ranges(svm: &Svm, base: u64) -> Vec<(u64, u64, MAttrs, bool, u32, u64)> {
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
