//! The kernel's placement decisions as pure functions: they compute, they never act.
//!
//! This is the home of every placement heuristic: the kernel's (`svm_range_set_max_pages`,
//! the best prefetch and restore locations, which GPUs map a range), the seed's (a
//! PREFERRED_LOC change migrates), and what a SET_ATTR or a GPU retry fault moves.
//! Everything here is deterministic and unit tested; the instance acts on the answers.

use crate::attr::{Location, SvmFlags};
use crate::gpu::GpuIdx;
use crate::range::{AttrOp, GpuMask, PageNo, RangeAttrs};

/// Smallest maximum range size, in pages (2 MiB).
pub const MIN_MAX_RANGE_PAGES: u64 = 1 << 9;
/// Largest maximum range size, in pages (1 GiB).
pub const MAX_MAX_RANGE_PAGES: u64 = 1 << 18;

/// The largest range SET_ATTR creates in a gap (`svm_range_set_max_pages`): for each GPU
/// 1/32 of its VRAM in pages, clamped to [2 MiB, 1 GiB], rounded down to a power of two;
/// the minimum over the GPUs.
pub fn max_range_pages(vram_bytes: impl IntoIterator<Item = u64>) -> u64 {
    vram_bytes
        .into_iter()
        .map(|b| {
            let pages = (b >> 17).clamp(MIN_MAX_RANGE_PAGES, MAX_MAX_RANGE_PAGES);
            1u64 << pages.ilog2()
        })
        .min()
        .unwrap_or(MAX_MAX_RANGE_PAGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_range_pages_follows_the_kernel() {
        assert_eq!(max_range_pages([64 << 20]), 512); // clamped up to 2 MiB
        assert_eq!(max_range_pages([1 << 30]), 8192); // 32 MiB
        assert_eq!(max_range_pages([16u64 << 30]), 131072); // 512 MiB
        assert_eq!(max_range_pages([1u64 << 40]), 262144); // clamped down to 1 GiB
        assert_eq!(max_range_pages([3 << 30]), 16384); // 96 MiB -> 64 MiB (power of two)
        assert_eq!(max_range_pages([1 << 30, 256 << 20]), 2048); // minimum over GPUs
    }
}

/// Which GPUs SET_ATTR, a remap or the restore worker map a range on (section 7.1):
/// XNACK off, every GPU with ACCESS or ACCESS_IN_PLACE; XNACK on, the IN_PLACE GPUs plus
/// the GPU holding the data if it has ACCESS, or (when that is empty and the range is
/// already mapped or ALWAYS_MAPPED) every ACCESS GPU.
pub fn gpus_to_map(
    attrs: &RangeAttrs,
    actual_gpu: Option<GpuIdx>,
    mapped_to_gpu: bool,
    xnack: bool,
) -> GpuMask {
    if !xnack {
        return attrs.access | attrs.access_in_place;
    }
    let mut set = attrs.access_in_place;
    if let Some(g) = actual_gpu.filter(|&g| attrs.access.contains(g)) {
        set.insert(g);
    }
    if set == GpuMask::EMPTY && (mapped_to_gpu || attrs.flags.contains(SvmFlags::GPU_ALWAYS_MAPPED)) {
        set = attrs.access;
    }
    set
}

/// Whether a SET_ATTR with these operations redoes the GPU mappings of the ranges it
/// updates (`update_mapping`): flag changes always; access changes, and split pieces to
/// remap, only with XNACK off; locations and granularity never.
pub fn ops_update_mapping(ops: &[AttrOp], xnack: bool, remap_pending: bool) -> bool {
    (!xnack && remap_pending)
        || ops.iter().any(|op| match op {
            AttrOp::SetFlags(_) | AttrOp::ClrFlags(_) => true,
            AttrOp::Access(_) | AttrOp::AccessInPlace(_) | AttrOp::NoAccess(_) => !xnack,
            _ => false,
        })
}

/// Where a prefetch to GPU `target` really goes (`svm_range_best_prefetch_location`):
/// system memory when a GPU that maps the range (XNACK off: ACCESS or IN_PLACE; on:
/// IN_PLACE) is outside the target's hive, since it could not reach the target's VRAM;
/// otherwise the range's PREFETCH_LOC.
pub fn best_prefetch_location(
    attrs: &RangeAttrs,
    target: GpuIdx,
    xnack: bool,
    same_hive: impl Fn(GpuIdx, GpuIdx) -> bool,
) -> Location {
    let candidates = if xnack { attrs.access_in_place } else { attrs.access | attrs.access_in_place };
    if candidates.iter().any(|c| c != target && !same_hive(target, c)) {
        Location::Sysmem
    } else {
        attrs.prefetch_loc
    }
}

/// Where a GPU retry fault puts the data (`svm_range_best_restore_location`, section 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreLocation {
    /// System memory.
    Sysmem,
    /// The VRAM of the GPU with this index.
    Gpu(GpuIdx),
    /// The faulting GPU has no access: a fatal fault.
    NoAccess,
}

/// The best location for the data of a range when GPU `faulter` faults on it:
/// preferred location first (the faulter itself, system memory, or a GPU in the faulter's
/// hive), then the faulter if it has ACCESS, then, with ACCESS_IN_PLACE, where the data is
/// if the faulter can reach it (else system memory); otherwise no access.
///
/// `preferred` is the preferred location resolved to a GPU index (`Some(None)` = system
/// memory, `None` = undefined); `actual` is the GPU holding the data, if any.
pub fn best_restore_location(
    attrs: &RangeAttrs,
    preferred: Option<Option<GpuIdx>>,
    actual: Option<GpuIdx>,
    faulter: GpuIdx,
    same_hive: impl Fn(GpuIdx, GpuIdx) -> bool,
) -> RestoreLocation {
    match preferred {
        Some(Some(p)) if p == faulter => return RestoreLocation::Gpu(faulter),
        Some(None) => return RestoreLocation::Sysmem,
        Some(Some(p)) if same_hive(p, faulter) => return RestoreLocation::Gpu(p),
        _ => {}
    }
    if attrs.access.contains(faulter) {
        return RestoreLocation::Gpu(faulter);
    }
    if attrs.access_in_place.contains(faulter) {
        return match actual {
            Some(a) if a == faulter || same_hive(a, faulter) => RestoreLocation::Gpu(a),
            _ => RestoreLocation::Sysmem,
        };
    }
    RestoreLocation::NoAccess
}

/// A migration a decision asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Nothing moves.
    Stay,
    /// To system memory.
    ToSysmem,
    /// To the VRAM of the GPU with this index.
    ToGpu(GpuIdx),
}

/// What a SET_ATTR moves a range to (`svm_range_trigger_migration`, section 4.2, plus the
/// seed's rule): the range's PREFETCH_LOC (resolved by [`best_prefetch_location`]) when it
/// names one; otherwise, when the call changed PREFERRED_LOC and did not prefetch, the seed
/// migrates from system (or undefined) to the new GPU (downgraded like a prefetch when a
/// GPU mapping the range is outside the target's hive) and from a GPU back to system memory
/// (`seed_enabled` off: never). Nothing moves to system memory when the data is already
/// there.
///
/// `attrs` are the range's new attributes, `old_pref` its PREFERRED_LOC before the call,
/// `actual` where its data is; `gpu_idx` resolves a (checked) GPU id to its index.
pub fn set_attr_move(
    attrs: &RangeAttrs,
    old_pref: Location,
    (seed_enabled, asks_prefetch, xnack): (bool, bool, bool),
    actual: Location,
    gpu_idx: impl Fn(crate::attr::GpuId) -> GpuIdx,
    same_hive: impl Fn(GpuIdx, GpuIdx) -> bool,
) -> Move {
    let best = match attrs.prefetch_loc {
        Location::Gpu(g) => best_prefetch_location(attrs, gpu_idx(g), xnack, &same_hive),
        other => other,
    };
    let new_pref = attrs.preferred_loc;
    let seed = match (old_pref, new_pref) {
        _ if !seed_enabled || asks_prefetch || new_pref == old_pref => None,
        (Location::Sysmem | Location::Undefined, Location::Gpu(g)) => {
            let mut a = *attrs;
            a.prefetch_loc = new_pref;
            Some(best_prefetch_location(&a, gpu_idx(g), xnack, &same_hive))
        }
        (Location::Gpu(_), Location::Sysmem) => Some(Location::Sysmem),
        _ => None,
    };
    let target = match (best, seed) {
        (Location::Undefined, Some(t)) => t,
        (b, _) => b,
    };
    match target {
        Location::Sysmem if actual == Location::Sysmem => Move::Stay,
        Location::Sysmem => Move::ToSysmem,
        Location::Gpu(g) => Move::ToGpu(gpu_idx(g)),
        Location::Undefined => Move::Stay,
    }
}

/// What a GPU retry fault does with the faulting granule (section 5.4): with the data in
/// system memory and system memory its best place, nothing moves (the GPU maps it in
/// place); otherwise the data goes to the best place.
pub fn retry_fault_move(actual: Location, best: RestoreLocation) -> Move {
    match best {
        RestoreLocation::Gpu(b) => Move::ToGpu(b),
        RestoreLocation::Sysmem if actual == Location::Sysmem => Move::Stay,
        RestoreLocation::Sysmem => Move::ToSysmem,
        RestoreLocation::NoAccess => Move::Stay,
    }
}

#[cfg(test)]
mod move_tests {
    use super::*;
    use crate::attr::GpuId;

    fn gpu(i: usize) -> Location {
        Location::Gpu(GpuId(0x1111 * (i as u32 + 1)))
    }

    fn idx(g: GpuId) -> GpuIdx {
        GpuIdx::new((g.0 / 0x1111 - 1) as usize)
    }

    fn attrs(prefetch: Location, preferred: Location) -> RangeAttrs {
        let mut a = RangeAttrs::new_default(9, GpuMask::EMPTY);
        a.prefetch_loc = prefetch;
        a.preferred_loc = preferred;
        a
    }

    fn decide(a: &RangeAttrs, old: Location, flags: (bool, bool, bool), actual: Location) -> Move {
        set_attr_move(a, old, flags, actual, idx, |x, y| x == y)
    }

    const PLAIN: (bool, bool, bool) = (true, false, false);

    #[test]
    fn prefetch_wins_and_goes_where_it_says() {
        let a = attrs(gpu(1), Location::Undefined);
        assert_eq!(decide(&a, Location::Undefined, PLAIN, Location::Sysmem), Move::ToGpu(GpuIdx::new(1)));
        let a = attrs(Location::Sysmem, gpu(0));
        assert_eq!(decide(&a, Location::Undefined, PLAIN, gpu(0)), Move::ToSysmem);
        assert_eq!(decide(&a, Location::Undefined, PLAIN, Location::Sysmem), Move::Stay, "already there");
    }

    #[test]
    fn a_gpu_outside_the_hive_downgrades_a_prefetch() {
        let mut a = attrs(gpu(0), Location::Undefined);
        a.access = GpuMask(0b10); // GPU 1 maps it, and is not in GPU 0's hive
        assert_eq!(decide(&a, Location::Undefined, PLAIN, Location::Sysmem), Move::Stay);
        assert_eq!(decide(&a, Location::Undefined, PLAIN, gpu(1)), Move::ToSysmem);
    }

    #[test]
    fn the_seeds_preferred_loc_rule() {
        let to_gpu = attrs(Location::Undefined, gpu(1));
        assert_eq!(decide(&to_gpu, Location::Sysmem, PLAIN, Location::Sysmem), Move::ToGpu(GpuIdx::new(1)));
        assert_eq!(
            decide(&to_gpu, Location::Undefined, PLAIN, Location::Sysmem),
            Move::ToGpu(GpuIdx::new(1))
        );
        assert_eq!(decide(&to_gpu, gpu(1), PLAIN, Location::Sysmem), Move::Stay, "no change");
        assert_eq!(
            decide(&to_gpu, Location::Sysmem, (false, false, false), Location::Sysmem),
            Move::Stay,
            "off"
        );
        assert_eq!(
            decide(&to_gpu, Location::Sysmem, (true, true, false), Location::Sysmem),
            Move::Stay,
            "prefetching"
        );
        let back = attrs(Location::Undefined, Location::Sysmem);
        assert_eq!(decide(&back, gpu(0), PLAIN, gpu(0)), Move::ToSysmem);
        assert_eq!(decide(&back, gpu(0), PLAIN, Location::Sysmem), Move::Stay);
        let gpu_to_gpu = attrs(Location::Undefined, gpu(1));
        assert_eq!(decide(&gpu_to_gpu, gpu(0), PLAIN, gpu(0)), Move::Stay, "GPU to GPU is not the seed's");
    }

    #[test]
    fn retry_faults_map_in_place_or_move() {
        use RestoreLocation as R;
        assert_eq!(retry_fault_move(Location::Sysmem, R::Sysmem), Move::Stay);
        assert_eq!(retry_fault_move(gpu(0), R::Sysmem), Move::ToSysmem);
        assert_eq!(retry_fault_move(Location::Sysmem, R::Gpu(GpuIdx::new(1))), Move::ToGpu(GpuIdx::new(1)));
        assert_eq!(retry_fault_move(gpu(1), R::Gpu(GpuIdx::new(1))), Move::ToGpu(GpuIdx::new(1)));
    }
}

/// The granule of `page` for a range with granularity `g`, clipped to `[start, last]`.
pub fn granule_extent(page: PageNo, g: u8, start: PageNo, last: PageNo) -> (PageNo, PageNo) {
    let size = 1u64.checked_shl(u32::from(g)).unwrap_or(0);
    if size == 0 {
        return (start, last); // 2^63 and up: the whole range
    }
    let lo = page.align_down(size);
    let hi = lo.saturating_add(size - 1);
    (lo.max(start), hi.min(last))
}

#[cfg(test)]
mod placement_tests {
    use super::*;
    use crate::addr::pg;
    use crate::attr::Location;

    fn attrs(access: u64, aip: u64) -> RangeAttrs {
        let mut a = RangeAttrs::new_default(9, GpuMask(access));
        a.access_in_place = GpuMask(aip);
        a.preferred_loc = Location::Undefined;
        a
    }

    #[test]
    fn restore_location_follows_section_5_3() {
        let no_hive = |a: GpuIdx, b: GpuIdx| a == b;
        let hive = |_: GpuIdx, _: GpuIdx| true;
        let a = attrs(0b11, 0);
        // Preferred location first.
        assert_eq!(
            best_restore_location(&a, Some(Some(GpuIdx::new(0))), None, GpuIdx::new(0), no_hive),
            RestoreLocation::Gpu(GpuIdx::new(0))
        );
        assert_eq!(
            best_restore_location(&a, Some(None), None, GpuIdx::new(0), no_hive),
            RestoreLocation::Sysmem
        );
        assert_eq!(
            best_restore_location(&a, Some(Some(GpuIdx::new(1))), None, GpuIdx::new(0), hive),
            RestoreLocation::Gpu(GpuIdx::new(1))
        );
        // Preferred on a non-hive GPU falls through to ACCESS.
        assert_eq!(
            best_restore_location(&a, Some(Some(GpuIdx::new(1))), None, GpuIdx::new(0), no_hive),
            RestoreLocation::Gpu(GpuIdx::new(0))
        );
        // IN_PLACE: where the data is when reachable, else system memory.
        let b = attrs(0, 0b01);
        assert_eq!(best_restore_location(&b, None, None, GpuIdx::new(0), no_hive), RestoreLocation::Sysmem);
        assert_eq!(
            best_restore_location(&b, None, Some(GpuIdx::new(0)), GpuIdx::new(0), no_hive),
            RestoreLocation::Gpu(GpuIdx::new(0))
        );
        assert_eq!(
            best_restore_location(&b, None, Some(GpuIdx::new(1)), GpuIdx::new(0), no_hive),
            RestoreLocation::Sysmem
        );
        assert_eq!(
            best_restore_location(&b, None, Some(GpuIdx::new(1)), GpuIdx::new(0), hive),
            RestoreLocation::Gpu(GpuIdx::new(1))
        );
        assert_eq!(
            best_restore_location(&attrs(0, 0), None, None, GpuIdx::new(0), no_hive),
            RestoreLocation::NoAccess
        );
    }

    #[test]
    fn granules_are_aligned_and_clipped() {
        assert_eq!(granule_extent(pg(1000), 9, pg(0), pg(10_000)), (pg(512), pg(1023)));
        assert_eq!(granule_extent(pg(1000), 9, pg(700), pg(900)), (pg(700), pg(900)));
        assert_eq!(granule_extent(pg(1000), 0, pg(0), pg(10_000)), (pg(1000), pg(1000)));
        assert_eq!(granule_extent(pg(5), 63, pg(3), pg(9)), (pg(3), pg(9)));
    }

    #[test]
    fn gpus_to_map_follows_section_7_1() {
        let mut a = attrs(0b01, 0b10);
        assert_eq!(gpus_to_map(&a, None, false, false), GpuMask(0b11));
        assert_eq!(gpus_to_map(&a, None, false, true), GpuMask(0b10));
        assert_eq!(gpus_to_map(&a, Some(GpuIdx::new(0)), false, true), GpuMask(0b11));
        a.access_in_place = GpuMask::EMPTY;
        assert_eq!(gpus_to_map(&a, None, false, true), GpuMask::EMPTY);
        assert_eq!(gpus_to_map(&a, None, true, true), GpuMask(0b01));
        a.flags |= SvmFlags::GPU_ALWAYS_MAPPED;
        assert_eq!(gpus_to_map(&a, None, false, true), GpuMask(0b01));
    }
}
