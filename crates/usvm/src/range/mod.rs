//! SVM ranges: the per-range state of KFD's `struct svm_range` and the tree that holds them.
//!
//! Addresses here are **page numbers** (byte address >> 12) and intervals are inclusive
//! `[start, last]`, exactly as in the kernel's range code, so that the arithmetic of the
//! semantics document carries over unchanged.
//!
//! - [`RangeAttrs`] and [`AttrOp`]: the attributes of a range and the validated SET_ATTR
//!   operations that change them (`svm_range_apply_attrs`, `svm_range_is_same_attrs`).
//! - [`SvmRange`]: attributes plus residency and GPU-mapping state, and how a range splits.
//! - [`tree::RangeTree`]: the address-ordered set of ranges, with the SET_ATTR transaction
//!   (`svm_range_add`), GET_ATTR aggregation and partial unmapping.

pub mod tree;

use crate::attr::{Location, SvmFlags};
use crate::gpu::GpuIdx;
use crate::gpu::vram::Bo;
use std::time::Instant;

pub use crate::addr::PageNo;

/// The largest granularity a range stores (`min(value, 63)`).
pub const MAX_GRANULARITY: u8 = 63;

/// A set of GPUs by their index in the instance (KFD's per-range bitmaps, 64 GPUs at most).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GpuMask(pub u64);

impl GpuMask {
    /// No GPU.
    pub const EMPTY: GpuMask = GpuMask(0);

    /// The first `n` GPUs.
    pub const fn first(n: usize) -> GpuMask {
        if n >= 64 { GpuMask(u64::MAX) } else { GpuMask((1u64 << n) - 1) }
    }
    /// Whether GPU `idx` is in the set.
    pub const fn contains(self, idx: GpuIdx) -> bool {
        self.0 & (1 << idx.get()) != 0
    }
    /// Adds GPU `idx`.
    pub fn insert(&mut self, idx: GpuIdx) {
        self.0 |= 1 << idx.get();
    }
    /// Removes GPU `idx`.
    pub fn remove(&mut self, idx: GpuIdx) {
        self.0 &= !(1 << idx.get());
    }
    /// The GPU indices in the set, ascending.
    pub fn iter(self) -> impl Iterator<Item = GpuIdx> {
        GpuIdx::all(64).filter(move |&i| self.contains(i))
    }
}

impl std::ops::BitAnd for GpuMask {
    type Output = GpuMask;
    fn bitand(self, o: GpuMask) -> GpuMask {
        GpuMask(self.0 & o.0)
    }
}

impl std::ops::BitOr for GpuMask {
    type Output = GpuMask;
    fn bitor(self, o: GpuMask) -> GpuMask {
        GpuMask(self.0 | o.0)
    }
}

/// One validated SET_ATTR entry, with GPU ids already resolved to GPU indices
/// (the output of `svm_range_check_attr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrOp {
    /// PREFERRED_LOC.
    Preferred(Location),
    /// PREFETCH_LOC (never UNDEFINED).
    Prefetch(Location),
    /// ACCESS for a GPU index.
    Access(GpuIdx),
    /// ACCESS_IN_PLACE for a GPU index.
    AccessInPlace(GpuIdx),
    /// NO_ACCESS for a GPU index.
    NoAccess(GpuIdx),
    /// SET_FLAGS.
    SetFlags(SvmFlags),
    /// CLR_FLAGS.
    ClrFlags(SvmFlags),
    /// GRANULARITY, as given (stored as `min(value, 63)`).
    Granularity(u32),
}

/// The user-visible attributes of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeAttrs {
    /// PREFERRED_LOC.
    pub preferred_loc: Location,
    /// PREFETCH_LOC.
    pub prefetch_loc: Location,
    /// Flags.
    pub flags: SvmFlags,
    /// log2 of the granule in pages, at most 63.
    pub granularity: u8,
    /// GPUs with ACCESS (`bitmap_access`).
    pub access: GpuMask,
    /// GPUs with ACCESS_IN_PLACE (`bitmap_aip`).
    pub access_in_place: GpuMask,
}

impl RangeAttrs {
    /// The attributes of a new range (`svm_range_set_default_attributes`): locations
    /// undefined, flags `HOST_ACCESS | COHERENT`, the given granularity and ACCESS bitmap.
    pub fn new_default(granularity: u8, access: GpuMask) -> Self {
        RangeAttrs {
            preferred_loc: Location::Undefined,
            prefetch_loc: Location::Undefined,
            flags: SvmFlags::DEFAULT,
            granularity,
            access,
            access_in_place: GpuMask::EMPTY,
        }
    }

    /// Applies the operations in order: a later one overrides an earlier one.
    pub fn apply(&mut self, ops: &[AttrOp]) {
        for op in ops {
            match *op {
                AttrOp::Preferred(l) => self.preferred_loc = l,
                AttrOp::Prefetch(l) => self.prefetch_loc = l,
                AttrOp::Access(g) => {
                    self.access.insert(g);
                    self.access_in_place.remove(g);
                }
                AttrOp::AccessInPlace(g) => {
                    self.access.remove(g);
                    self.access_in_place.insert(g);
                }
                AttrOp::NoAccess(g) => {
                    self.access.remove(g);
                    self.access_in_place.remove(g);
                }
                AttrOp::SetFlags(f) => self.flags |= f,
                AttrOp::ClrFlags(f) => self.flags &= !f,
                AttrOp::Granularity(v) => self.granularity = v.min(MAX_GRANULARITY as u32) as u8,
            }
        }
    }

    /// Whether the range already has every requested attribute (`svm_range_is_same_attrs`).
    /// PREFETCH_LOC never counts as "same"; granularity compares the raw requested value,
    /// so a request above 63 is never "same" either.
    pub fn has_all(&self, ops: &[AttrOp]) -> bool {
        ops.iter().all(|op| match *op {
            AttrOp::Preferred(l) => self.preferred_loc == l,
            AttrOp::Prefetch(_) => false,
            AttrOp::Access(g) => self.access.contains(g),
            AttrOp::AccessInPlace(g) => self.access_in_place.contains(g),
            AttrOp::NoAccess(g) => !self.access.contains(g) && !self.access_in_place.contains(g),
            AttrOp::SetFlags(f) => self.flags.contains(f),
            AttrOp::ClrFlags(f) => !self.flags.intersects(f),
            AttrOp::Granularity(v) => u32::from(self.granularity) == v,
        })
    }
}

/// One SVM range: a page interval with attributes, residency and GPU-mapping state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvmRange {
    /// First page.
    pub start: PageNo,
    /// Last page (inclusive).
    pub last: PageNo,
    /// The attributes.
    pub attrs: RangeAttrs,
    /// `Sysmem`, or the GPU whose VRAM holds (some of) the pages (`actual_loc`).
    pub actual_loc: Location,
    /// The VRAM BO backing the range on `actual_loc`: page `p` of the range lives at BO
    /// page `offset + (p - start)`. Shared with the other pieces of a split range.
    pub vram: Option<VramBacking>,
    /// Which pages have their data in VRAM (empty while none has).
    pub in_vram: PageBits,
    /// Whether the range's anonymous memory is registered with the instance's
    /// userfaultfd (done at its first migration to VRAM).
    pub registered: bool,
    /// Whether the range's size is reserved against the system-memory limit (ranges made
    /// under XNACK off; split pieces keep it, as KFD's do).
    pub accounted: bool,
    /// Whether the whole range has been validated and mapped to the GPUs it should be.
    pub mapped_to_gpu: bool,
    /// GPUs whose page tables may hold entries of this range (cleared on a full unmap).
    pub mapped_gpus: GpuMask,
    /// Pending XNACK-off invalidations (the restore worker remaps ranges with `invalid > 0`).
    pub invalid: u32,
    /// When the range was last validated and mapped (GPU-fault dedup window).
    pub validate_timestamp: Option<Instant>,
}

impl SvmRange {
    /// A new range over `[start, last]` with the given attributes, all in system memory.
    pub fn new(start: PageNo, last: PageNo, attrs: RangeAttrs) -> Self {
        debug_assert!(start <= last);
        SvmRange {
            start,
            last,
            attrs,
            actual_loc: Location::Sysmem,
            vram: None,
            in_vram: PageBits::default(),
            registered: false,
            accounted: false,
            mapped_to_gpu: false,
            mapped_gpus: GpuMask::EMPTY,
            invalid: 0,
            validate_timestamp: None,
        }
    }

    /// The range's pages.
    pub fn pages(&self) -> crate::addr::Pages {
        crate::addr::Pages::new(self.start, self.last)
    }

    /// Number of pages.
    pub fn npages(&self) -> u64 {
        self.last - self.start + 1
    }

    /// How many pages have their data in VRAM (`vram_pages`).
    pub fn vram_pages(&self) -> u64 {
        self.in_vram.count()
    }

    /// Whether page `p` (absolute) has its data in VRAM.
    pub fn page_in_vram(&self, p: PageNo) -> bool {
        self.in_vram.get(p - self.start)
    }

    /// Splits the range at page `at` (`start < at <= last`): `self` keeps `[start, at - 1]`
    /// and the returned range takes `[at, last]`. Both keep the attributes, `actual_loc` and
    /// the mapping state, as `svm_range_split` does.
    pub fn split_off(&mut self, at: PageNo) -> SvmRange {
        debug_assert!(self.start < at && at <= self.last);
        let mut right = self.clone();
        let keep = at - self.start;
        right.start = at;
        self.last = at - 1;
        right.in_vram = self.in_vram.split_off(keep);
        if let Some(v) = &mut right.vram {
            v.offset += keep;
        }
        right
    }

    /// Whether `page` is a multiple of this range's granule (`2^granularity` pages).
    pub fn granule_aligned(&self, page: PageNo) -> bool {
        let g = u32::from(self.attrs.granularity);
        g >= 64 || page.is_multiple_of(1u64 << g)
    }
}

/// A range's VRAM: the BO and where the range's first page sits in it.
#[derive(Clone, Debug)]
pub struct VramBacking {
    /// The buffer object (a reference).
    pub bo: Bo,
    /// BO page of the range's first page.
    pub offset: u64,
}

impl PartialEq for VramBacking {
    fn eq(&self, o: &Self) -> bool {
        self.bo.same(&o.bo) && self.offset == o.offset
    }
}
impl Eq for VramBacking {}

/// A bit per page, allocated only once a bit is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageBits(Vec<u64>);

impl PageBits {
    /// Bit `i`.
    pub fn get(&self, i: u64) -> bool {
        self.0.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Sets or clears bit `i`.
    pub fn set(&mut self, i: u64, v: bool) {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            if !v {
                return;
            }
            self.0.resize(w + 1, 0);
        }
        if v {
            self.0[w] |= 1 << (i % 64);
        } else {
            self.0[w] &= !(1 << (i % 64));
        }
        if !v && self.0.iter().all(|&x| x == 0) {
            self.0 = Vec::new();
        }
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Keeps bits `[0, at)` and returns bits `[at, ..)` renumbered from 0.
    pub fn split_off(&mut self, at: u64) -> PageBits {
        let mut right = PageBits::default();
        let total = self.0.len() as u64 * 64;
        for i in at..total {
            if self.get(i) {
                right.set(i - at, true);
            }
        }
        // Bit `at` lives in word `at / 64`: clear it and the bits above, if that word
        // exists (a shorter vector has no bit at or above `at`; masking its last word
        // instead cleared low bits of a range split past its last VRAM page, and their
        // data was lost).
        self.0.truncate(at.div_ceil(64) as usize);
        if !at.is_multiple_of(64)
            && let Some(w) = self.0.get_mut((at / 64) as usize)
        {
            *w &= (1u64 << (at % 64)) - 1;
        }
        if self.0.iter().all(|&x| x == 0) {
            self.0 = Vec::new();
        }
        right
    }
}

#[cfg(test)]
mod bits_tests {
    use super::PageBits;

    #[test]
    fn set_count_split() {
        let mut b = PageBits::default();
        for i in [0, 5, 63, 64, 100, 200] {
            b.set(i, true);
        }
        assert_eq!(b.count(), 6);
        let r = b.split_off(64);
        assert_eq!(b.count(), 3);
        assert!(b.get(63) && !b.get(64));
        assert_eq!(r.count(), 3);
        assert!(r.get(0) && r.get(36) && r.get(136));
        let mut c = r.clone();
        let d = c.split_off(37);
        assert_eq!((c.count(), d.count()), (2, 1));
        assert!(d.get(99));
        c.set(0, false);
        c.set(36, false);
        assert_eq!(c, PageBits::default());
    }

    proptest::proptest! {
        /// Random sets, clears and splits against a plain vector of booleans.
        #[test]
        fn behaves_like_a_vector_of_bools(
            ops in proptest::collection::vec((0u8..3, 0u64..400, proptest::bool::ANY), 1..80)
        ) {
            let mut bits = PageBits::default();
            let mut model = vec![false; 400];
            for (kind, i, v) in ops {
                match kind {
                    0 | 1 => {
                        bits.set(i, v || kind == 0);
                        model[i as usize] = v || kind == 0;
                    }
                    _ => {
                        let right = bits.split_off(i);
                        let tail: Vec<bool> = model.split_off(i as usize);
                        for (j, &b) in tail.iter().enumerate() {
                            proptest::prop_assert_eq!(right.get(j as u64), b, "right bit {} of a split at {}", j, i);
                        }
                        proptest::prop_assert_eq!(right.count(), tail.iter().filter(|&&b| b).count() as u64);
                        // Keep the left part, the model padded back to its size.
                        model.resize(400, false);
                    }
                }
                for (j, &b) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(bits.get(j as u64), b, "bit {}", j);
                }
                proptest::prop_assert_eq!(bits.count(), model.iter().filter(|&&b| b).count() as u64);
            }
        }
    }

    /// A split beyond the last set bit keeps every bit (a range in VRAM up to page 293,
    /// split at 455, lost pages 263-293).
    #[test]
    fn split_past_the_last_word_keeps_every_bit() {
        let mut b = PageBits::default();
        for i in 0..294 {
            b.set(i, true);
        }
        let r = b.split_off(455);
        assert_eq!((b.count(), r.count()), (294, 0));
        assert!(b.get(293) && b.get(263) && !b.get(294));
        let r = b.split_off(240);
        assert_eq!((b.count(), r.count()), (240, 54));
        for at in [1, 63, 64, 65, 100, 127, 128, 129, 293, 294, 300, 320, 1000] {
            let mut c = PageBits::default();
            for i in (0..294).step_by(3) {
                c.set(i, true);
            }
            let before = c.count();
            let d = c.split_off(at);
            assert_eq!(c.count() + d.count(), before, "split at {at}");
            assert!((0..at).all(|i| c.get(i) == (i < 294 && i % 3 == 0)), "split at {at}");
            assert!((0..400).all(|i| d.get(i) == (i + at < 294 && (i + at) % 3 == 0)), "split at {at}");
        }
    }
}
