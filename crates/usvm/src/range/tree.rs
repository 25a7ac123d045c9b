//! The range tree: non-overlapping [`SvmRange`]s ordered by start page.
//!
//! KFD keeps ranges in an interval tree; since top-level ranges never overlap, an ordered
//! map keyed by the start page answers the same queries in `O(log n + k)`: the ranges
//! overlapping `[start, last]` are the one containing `start` (if any) followed by those
//! starting inside the interval.

use super::{AttrOp, PageNo, RangeAttrs, SvmRange};
use crate::addr::Pages;
use crate::attr::{Location, SvmFlags};
use crate::range::GpuMask;
use std::collections::BTreeMap;

/// The outcome of the SET_ATTR transaction (`svm_range_add` plus the attribute commit).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddOutcome {
    /// Start pages of the ranges that received the new attributes, in the kernel's
    /// processing order (each overlapping range, then the gap before it; the trailing gap last).
    pub updated: Vec<PageNo>,
    /// Start pages of split-off pieces whose GPU mapping must be redone (the split point
    /// was not granule aligned), in the order they were made.
    pub remap: Vec<PageNo>,
    /// Number of ranges created in gaps.
    pub created: usize,
    /// The PREFERRED_LOC each updated range had before this call (UNDEFINED for new
    /// ranges), in the order of `updated`.
    pub old_preferred: Vec<Location>,
}

/// GET_ATTR's aggregate over the ranges overlapping an interval (`svm_range_get_attr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// The common PREFERRED_LOC, else UNDEFINED.
    pub preferred_loc: Location,
    /// The common PREFETCH_LOC, else UNDEFINED.
    pub prefetch_loc: Location,
    /// AND of the flags.
    pub flags_and: SvmFlags,
    /// OR of the flags.
    pub flags_or: SvmFlags,
    /// Minimum granularity.
    pub granularity: u8,
    /// AND of the ACCESS bitmaps, starting from the supported GPUs.
    pub access: GpuMask,
    /// AND of the ACCESS_IN_PLACE bitmaps, starting from the supported GPUs.
    pub access_in_place: GpuMask,
}

/// Folds one range's location into the running aggregate: the result is the common value
/// of all ranges, and UNDEFINED for good as soon as one is UNDEFINED or differs.
fn fold_location(acc: &mut Option<Location>, v: Location) {
    if let Some(cur) = *acc {
        if v == Location::Undefined || (cur != Location::Undefined && cur != v) {
            *acc = None; // frozen at UNDEFINED
        } else {
            *acc = Some(v);
        }
    }
}

/// The set of ranges of one instance.
#[derive(Debug, Default)]
pub struct RangeTree {
    map: BTreeMap<PageNo, SvmRange>,
}

impl RangeTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// All ranges in address order.
    pub fn iter(&self) -> impl Iterator<Item = &SvmRange> {
        self.map.values()
    }

    /// The range starting at `start`.
    pub fn get(&self, start: PageNo) -> Option<&SvmRange> {
        self.map.get(&start)
    }

    /// The range starting at `start`, mutably.
    pub fn get_mut(&mut self, start: PageNo) -> Option<&mut SvmRange> {
        self.map.get_mut(&start)
    }

    /// The range containing `page`.
    pub fn find(&self, page: PageNo) -> Option<&SvmRange> {
        self.map.range(..=page).next_back().map(|(_, r)| r).filter(|r| r.last >= page)
    }

    /// The ranges overlapping `[start, last]`, in address order.
    pub fn overlapping(&self, Pages { first: start, last }: Pages) -> impl Iterator<Item = &SvmRange> {
        let from = match self.find(start) {
            Some(r) => r.start,
            None => start,
        };
        self.map.range(from..=last).map(|(_, r)| r)
    }

    /// The last range ending before `page`.
    pub fn prev(&self, page: PageNo) -> Option<&SvmRange> {
        self.map.range(..page).next_back().map(|(_, r)| r).filter(|r| r.last < page)
    }

    /// The first range starting after `page`.
    pub fn next(&self, page: PageNo) -> Option<&SvmRange> {
        self.map.range(page + 1..).next().map(|(_, r)| r)
    }

    /// Takes the range starting at `start` out of the tree (a migration works on it alone,
    /// then puts it back with [`Self::insert`]).
    pub fn take(&mut self, start: PageNo) -> Option<SvmRange> {
        self.map.remove(&start)
    }

    /// Inserts `r`, which overlaps no range of the tree.
    pub fn insert(&mut self, r: SvmRange) {
        let prev = self.map.insert(r.start, r);
        debug_assert!(prev.is_none(), "ranges overlap");
    }

    /// Fills the gap `[start, last]` with new ranges cut at absolute multiples of
    /// `max_pages` (`svm_range_split_new`), returning their start pages.
    fn fill_gap(
        &mut self,
        mut start: PageNo,
        last: PageNo,
        defaults: &RangeAttrs,
        max_pages: u64,
        accounted: bool,
        out: &mut AddOutcome,
    ) {
        while start <= last {
            let end = (start + max_pages).align_down(max_pages) - 1;
            let l = last.min(end);
            let mut r = SvmRange::new(start, l, *defaults);
            r.accounted = accounted;
            self.insert(r);
            out.updated.push(start);
            out.created += 1;
            start = l + 1;
        }
    }

    /// The SET_ATTR transaction over `[start, last]` (`svm_range_add`, then the commit):
    ///
    /// - a range that already has every requested attribute and is mapped to the GPUs is
    ///   left alone;
    /// - a range that sticks out of the interval is split: the covered part gets the new
    ///   attributes, head and tail keep the old ones (and are queued for remapping when the
    ///   cut is not granule aligned);
    /// - a range inside the interval is updated as a whole;
    /// - gaps get new ranges with `defaults`, cut at multiples of `max_pages`.
    ///
    /// Ranges are never merged. Attributes are applied in `ops` order. New ranges are
    /// marked `accounted` as asked (XNACK off reserves their size).
    pub fn add(
        &mut self,
        start: PageNo,
        last: PageNo,
        ops: &[AttrOp],
        defaults: &RangeAttrs,
        max_pages: u64,
        accounted: bool,
    ) -> AddOutcome {
        debug_assert!(start <= last && max_pages.is_power_of_two());
        let mut out = AddOutcome::default();
        let keys: Vec<PageNo> = self.overlapping(Pages::new(start, last)).map(|r| r.start).collect();
        let mut cursor = start;
        for key in keys {
            let r = &self.map[&key];
            let (rs, rl) = (r.start, r.last);
            if r.mapped_to_gpu && r.attrs.has_all(ops) {
                // Nothing to do for this range.
            } else if rs < start || rl > last {
                let mut mid = self.map.remove(&key).expect("range vanished");
                if rs < start {
                    let rest = mid.split_off(start);
                    if !mid.granule_aligned(start) {
                        out.remap.push(mid.start);
                    }
                    self.insert(std::mem::replace(&mut mid, rest));
                }
                if rl > last {
                    let tail = mid.split_off(last + 1);
                    if !tail.granule_aligned(last + 1) {
                        out.remap.push(tail.start);
                    }
                    self.insert(tail);
                }
                out.updated.push(mid.start);
                self.insert(mid);
            } else {
                out.updated.push(rs);
            }
            // As the kernel does, the gap before a range is filled after the range itself
            // was handled, so `updated` lists ranges in the kernel's processing order.
            if rs > cursor {
                self.fill_gap(cursor, rs - 1, defaults, max_pages, accounted, &mut out);
            }
            cursor = rl.min(last) + 1;
        }
        if cursor <= last {
            self.fill_gap(cursor, last, defaults, max_pages, accounted, &mut out);
        }
        for &s in &out.updated {
            let r = self.map.get_mut(&s).expect("updated range");
            out.old_preferred.push(r.attrs.preferred_loc);
            r.attrs.apply(ops);
        }
        out
    }

    /// GET_ATTR aggregation over `[start, last]`; `None` when no range overlaps (the caller
    /// then reports defaults). Holes between ranges are ignored.
    pub fn aggregate(&self, pages: Pages, supported: GpuMask) -> Option<Aggregate> {
        let mut preferred = Some(Location::Undefined);
        let mut prefetch = Some(Location::Undefined);
        let mut agg = Aggregate {
            preferred_loc: Location::Undefined,
            prefetch_loc: Location::Undefined,
            flags_and: SvmFlags::all(),
            flags_or: SvmFlags::empty(),
            granularity: u8::MAX,
            access: supported,
            access_in_place: supported,
        };
        let mut any = false;
        for r in self.overlapping(pages) {
            any = true;
            fold_location(&mut preferred, r.attrs.preferred_loc);
            fold_location(&mut prefetch, r.attrs.prefetch_loc);
            agg.access = agg.access & r.attrs.access;
            agg.access_in_place = agg.access_in_place & r.attrs.access_in_place;
            agg.flags_and &= r.attrs.flags;
            agg.flags_or |= r.attrs.flags;
            agg.granularity = agg.granularity.min(r.attrs.granularity);
        }
        agg.preferred_loc = preferred.unwrap_or(Location::Undefined);
        agg.prefetch_loc = prefetch.unwrap_or(Location::Undefined);
        any.then_some(agg)
    }

    /// Pages of `[start, last]` that no range covers (what SET_ATTR would create).
    pub fn gap_pages(&self, pages: Pages) -> u64 {
        let covered: u64 =
            self.overlapping(pages).filter_map(|r| r.pages().intersect(pages)).map(Pages::len).sum();
        pages.len() - covered
    }

    /// Removes the pages `[start, last]` from every range (the bookkeeping of munmap):
    /// ranges inside the interval disappear, ranges sticking out are cut and the surviving
    /// pieces keep their attributes. Returns the removed pieces.
    pub fn remove_interval(&mut self, pages: Pages) -> Vec<SvmRange> {
        let Pages { first: start, last } = pages;
        let keys: Vec<PageNo> = self.overlapping(pages).map(|r| r.start).collect();
        let mut removed = Vec::with_capacity(keys.len());
        for key in keys {
            let mut r = self.map.remove(&key).expect("range vanished");
            if r.start < start {
                let mid = r.split_off(start);
                self.insert(std::mem::replace(&mut r, mid));
            }
            if r.last > last {
                let tail = r.split_off(last + 1);
                self.insert(tail);
            }
            removed.push(r);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::pg;
    use crate::attr::{GpuId, Location};

    const MAX: u64 = 512;

    fn defaults() -> RangeAttrs {
        RangeAttrs::new_default(9, GpuMask::EMPTY)
    }

    fn bounds(t: &RangeTree) -> Vec<(PageNo, PageNo)> {
        t.iter().map(|r| (r.start, r.last)).collect()
    }

    #[test]
    fn gaps_are_cut_at_max_pages_multiples() {
        let mut t = RangeTree::new();
        let out = t.add(pg(100), pg(1500), &[], &defaults(), MAX, false);
        assert_eq!(bounds(&t), vec![(pg(100), pg(511)), (pg(512), pg(1023)), (pg(1024), pg(1500))]);
        assert_eq!(out.created, 3);
        assert_eq!(out.updated, vec![pg(100), pg(512), pg(1024)]);
    }

    #[test]
    fn partial_overlap_splits_and_never_merges() {
        let mut t = RangeTree::new();
        let g1 = Location::Gpu(GpuId(0x1111));
        t.add(pg(0), pg(2047), &[AttrOp::Preferred(g1)], &defaults(), 4096, false);
        assert_eq!(bounds(&t), vec![(pg(0), pg(2047))]);
        let out = t.add(pg(512), pg(1023), &[AttrOp::Preferred(Location::Sysmem)], &defaults(), 4096, false);
        assert_eq!(bounds(&t), vec![(pg(0), pg(511)), (pg(512), pg(1023)), (pg(1024), pg(2047))]);
        assert_eq!(out.updated, vec![pg(512)]);
        assert!(out.remap.is_empty(), "cuts at 512 and 1024 are 2 MiB aligned");
        // Setting the middle back does not merge anything.
        t.add(pg(512), pg(1023), &[AttrOp::Preferred(g1)], &defaults(), 4096, false);
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|r| r.attrs.preferred_loc == g1));
    }

    #[test]
    fn unaligned_cuts_are_queued_for_remap() {
        let mut t = RangeTree::new();
        t.add(pg(0), pg(1023), &[], &defaults(), 4096, false);
        let out = t.add(pg(10), pg(20), &[AttrOp::Granularity(0)], &defaults(), 4096, false);
        assert_eq!(bounds(&t), vec![(pg(0), pg(9)), (pg(10), pg(20)), (pg(21), pg(1023))]);
        assert_eq!(out.remap, vec![pg(0), pg(21)]);
        assert_eq!(t.get(pg(10)).unwrap().attrs.granularity, 0);
        assert_eq!(t.get(pg(21)).unwrap().attrs.granularity, 9);
    }

    #[test]
    fn mapped_ranges_with_same_attrs_are_left_alone() {
        let mut t = RangeTree::new();
        t.add(pg(0), pg(1023), &[AttrOp::Granularity(4)], &defaults(), 4096, false);
        t.get_mut(pg(0)).unwrap().mapped_to_gpu = true;
        let out = t.add(pg(100), pg(200), &[AttrOp::Granularity(4)], &defaults(), 4096, false);
        assert_eq!(bounds(&t), vec![(pg(0), pg(1023))]);
        assert!(out.updated.is_empty());
        // A raw granularity above 63 is never "same" (stored as 63, compared raw).
        t.add(pg(0), pg(1023), &[AttrOp::Granularity(100)], &defaults(), 4096, false);
        let out = t.add(pg(0), pg(1023), &[AttrOp::Granularity(100)], &defaults(), 4096, false);
        assert_eq!(out.updated, vec![pg(0)]);
        // Prefetch is never "same".
        let out = t.add(pg(0), pg(1023), &[AttrOp::Prefetch(Location::Sysmem)], &defaults(), 4096, false);
        assert_eq!(out.updated, vec![pg(0)]);
    }

    #[test]
    fn aggregate_ignores_holes_and_freezes_undefined() {
        let mut t = RangeTree::new();
        let g1 = Location::Gpu(GpuId(1));
        assert_eq!(t.aggregate(Pages::new(pg(0), pg(10)), GpuMask(3)), None);
        t.add(pg(0), pg(511), &[AttrOp::Preferred(g1)], &defaults(), MAX, false);
        t.add(pg(1024), pg(1535), &[AttrOp::Preferred(g1)], &defaults(), MAX, false);
        assert_eq!(t.aggregate(Pages::new(pg(0), pg(1535)), GpuMask(3)).unwrap().preferred_loc, g1);
        t.add(pg(2048), pg(2559), &[], &defaults(), MAX, false);
        t.add(pg(3072), pg(3583), &[AttrOp::Preferred(g1)], &defaults(), MAX, false);
        // An UNDEFINED range in the middle freezes the result even if later ones agree.
        assert_eq!(
            t.aggregate(Pages::new(pg(0), pg(3583)), GpuMask(3)).unwrap().preferred_loc,
            Location::Undefined
        );
    }

    #[test]
    fn remove_interval_keeps_survivors() {
        let mut t = RangeTree::new();
        t.add(pg(0), pg(1535), &[AttrOp::Granularity(3)], &defaults(), 4096, false);
        let gone = t.remove_interval(Pages::new(pg(512), pg(1023)));
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].start, gone[0].last), (pg(512), pg(1023)));
        assert_eq!(bounds(&t), vec![(pg(0), pg(511)), (pg(1024), pg(1535))]);
        assert!(t.iter().all(|r| r.attrs.granularity == 3));
        t.remove_interval(Pages::new(pg(0), pg(5000)));
        assert_eq!(t.len(), 0);
    }
}
