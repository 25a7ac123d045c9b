//! The rules [`super::Policy::Adaptive`] adds to the kernel's, as pure functions of
//! recorded state ([`Thrashing`], residency bits) and their inputs.
//!
//! - **Density prefetch** ([`density_extent`]), after NVIDIA UVM's prefetcher: a fault's
//!   migration grows to the largest aligned block around the faulting granule (up to
//!   [`DENSITY_REGION_PAGES`], never past the range or the faulting VMA) of which more than
//!   `density_percent` of the pages would be on the destination once the granule arrives.
//!   A stream faulting page after page thus moves 1, 2, 4, ... pages at a time instead of
//!   one page per fault.
//! - **Thrashing detection** ([`Thrashing`]), after UVM's: a block of
//!   `thrash_block_pages` that moved `thrash_moves` times, each move within `thrash_lapse`
//!   of the previous one, is thrashing. Mitigations: pinning (GPU faults on the block map
//!   the data where it is, as ACCESS_IN_PLACE would, so it stops moving; a CPU fault still
//!   brings it to RAM, where it then stays) when the range has no PREFERRED_LOC, else
//!   throttling (the faulting GPU waits `throttle_nap` before its fault is served). A pin
//!   ends after `pin_epoch` without a fault on the block.
//! - **Read-ahead**: a stream whose fault took the rest of its range also moves the next
//!   `stream_window_pages` of the faulting VMA, in the following ranges (recorded as
//!   `Cause::Policy { rule: "stream-ahead" }`): the stream's next faults find them there.
//! - **First touch**: a prefetch or a PREFERRED_LOC change does not migrate pages that
//!   were never populated ([`migrates_unpopulated`]): they are populated where they are
//!   first touched (RAM by the CPU, the faulting GPU's VRAM by a GPU fault).
//! - **Eviction**: VRAM keeps per-2 MiB access counts of the GPUs' accesses; the victims
//!   are the BOs with the fewest accesses per page since the last eviction (then the least
//!   recently used), instead of the least recently used alone (`gpu/vram.rs`).

use super::AdaptiveTunables;
use crate::addr::{PageNo, Pages};
use crate::events::MigrateTrigger;
use std::collections::HashMap;

/// The largest block density prefetch grows a fault's migration to (2 MiB, UVM's block).
pub const DENSITY_REGION_PAGES: u64 = 512;

/// The pages a fault on `granule` migrates: the largest aligned power-of-two block that
/// contains the granule, lies within `region_pages` alignment, and, clipped to `limit`
/// (the range and the faulting VMA), has more than `percent` % of its pages `resident`
/// (already at the destination) or in the granule; the granule itself when none has.
pub fn density_extent(
    granule: Pages,
    limit: Pages,
    region_pages: u64,
    percent: u8,
    resident: impl Fn(PageNo) -> bool,
) -> Pages {
    let Some(granule) = granule.intersect(limit) else {
        return granule;
    };
    let mut best = granule;
    let mut size = granule.len().next_power_of_two();
    while size <= region_pages {
        let block = Pages::new(granule.first.align_down(size), granule.first.align_down(size) + (size - 1));
        if block.intersect(granule) != Some(granule) {
            break; // the granule straddles this alignment: no bigger block holds it whole
        }
        let Some(block) = block.intersect(limit) else { break };
        let dense = block.iter().filter(|&p| granule.contains(p) || resident(p)).count() as u64;
        if dense * 100 > u64::from(percent) * block.len() {
            best = block;
        }
        size *= 2;
    }
    best
}

/// Sequential-stream prefetch, after the kernel's file readahead: when the pages right
/// before the granule are already at the destination (a run of `n` of them, counted back
/// up to `window` pages, across range boundaries), the fault takes `2n` pages from the
/// granule's first (at most `window`, never past `limit`): a stream's migrations triple
/// in reach until they reach the window, and the first fault of the next range takes as
/// much. Only a fault on the granule's first page is a stream's next fault (a random
/// access lands anywhere in its granule); `None` otherwise, and when the page before it is
/// not at the destination.
pub fn stream_extent(
    (page, granule): (PageNo, Pages),
    limit: Pages,
    window: u64,
    resident: impl Fn(PageNo) -> bool,
) -> Option<Pages> {
    if page != granule.first {
        return None;
    }
    let mut run = 0;
    let mut p = granule.first;
    while run < window {
        match p.checked_sub(1) {
            Some(q) if resident(q) => (p, run) = (q, run + 1),
            _ => break,
        }
    }
    if run == 0 {
        return None;
    }
    let n = (2 * run).max(granule.len()).min(window.max(granule.len()));
    Pages::new(granule.first, granule.first + (n - 1)).intersect(limit)
}

/// Whether a migration of this trigger takes pages that were never populated (the kernel
/// gives them zeroed VRAM): under the adaptive policy only a GPU fault does (the GPU is
/// touching them first); prefetches and PREFERRED_LOC changes leave them where they are.
pub fn migrates_unpopulated(adaptive: bool, trigger: MigrateTrigger) -> bool {
    !adaptive || trigger == MigrateTrigger::PagefaultGpu
}

/// `Location::Sysmem` as `Location::to_raw` writes it.
const SYSMEM_RAW: u32 = 0;

/// What a GPU fault on a thrashing block does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mitigation {
    /// Not thrashing: the kernel's decision stands.
    None,
    /// Map the data where it is (as ACCESS_IN_PLACE would): nothing moves.
    Pin,
    /// Wait this long before serving the fault, then decide as the kernel does.
    Throttle(std::time::Duration),
}

/// The state of one block that moved recently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Block {
    /// Moves so far, each to another place than the one before and within the lapse.
    moves: u32,
    /// Where the last move went (`Location::to_raw`).
    last_dest: u32,
    /// When it last moved, ns.
    last_move_ns: u64,
    /// Pinned: when a fault last found the pin, ns.
    pinned_seen_ns: Option<u64>,
}

/// Thrashing detection: recent moves per block, and the pins.
#[derive(Clone, Debug, Default)]
pub struct Thrashing {
    blocks: HashMap<u64, Block>,
    /// Total number of pins ever made (for tests and counters).
    pins: u64,
}

impl Thrashing {
    fn block_of(p: PageNo, t: &AdaptiveTunables) -> u64 {
        p.get() / t.thrash_block_pages.max(1)
    }

    /// Records that `pages` moved to `dest` (`Location::to_raw`) at `now_ns`: a block whose
    /// moves go back and forth, each within the lapse of the one before, reaches the
    /// threshold and is pinned. Moves on to the same place (a stream growing its
    /// migrations) are not back and forth.
    pub fn observe_move(&mut self, pages: Pages, dest: u32, now_ns: u64, t: &AdaptiveTunables) {
        let lapse = t.thrash_lapse.as_nanos() as u64;
        let (first, last) = (Self::block_of(pages.first, t), Self::block_of(pages.last, t));
        for b in first..=last {
            let e = self.blocks.entry(b).or_default();
            if e.pinned_seen_ns.is_some() {
                continue;
            }
            let quick = e.moves > 0 && now_ns.saturating_sub(e.last_move_ns) <= lapse;
            if quick && e.last_dest == dest {
                e.last_move_ns = now_ns;
                continue;
            }
            e.moves = if quick { e.moves + 1 } else { 1 };
            (e.last_move_ns, e.last_dest) = (now_ns, dest);
            if e.moves >= t.thrash_moves {
                e.pinned_seen_ns = Some(now_ns);
                self.pins += 1;
            }
        }
        // Forget blocks that went quiet, so the map stays as small as the moving set.
        if self.blocks.len() > 4096 {
            let epoch = t.pin_epoch.as_nanos() as u64;
            self.blocks.retain(|_, e| match e.pinned_seen_ns {
                Some(s) => now_ns.saturating_sub(s) <= epoch,
                None => now_ns.saturating_sub(e.last_move_ns) <= lapse,
            });
        }
    }

    /// The mitigation for a GPU fault on `page` at `now_ns` (`has_preferred`: the range has
    /// a PREFERRED_LOC, which pinning would override). The fault itself counts: a block
    /// that went back to RAM within the lapse after moves enough that this fault's move
    /// would reach the threshold is pinned now, before that move. A pin found by a fault
    /// stays for another epoch; one not seen for an epoch ends (the block starts over).
    pub fn on_gpu_fault(
        &mut self,
        page: PageNo,
        now_ns: u64,
        has_preferred: bool,
        t: &AdaptiveTunables,
    ) -> Mitigation {
        let Some(e) = self.blocks.get_mut(&Self::block_of(page, t)) else {
            return Mitigation::None;
        };
        let lapse = t.thrash_lapse.as_nanos() as u64;
        let back_again = e.last_dest == SYSMEM_RAW && now_ns.saturating_sub(e.last_move_ns) <= lapse;
        if e.pinned_seen_ns.is_none() && back_again && e.moves > 0 && e.moves + 1 >= t.thrash_moves {
            e.pinned_seen_ns = Some(now_ns);
            self.pins += 1;
        }
        let Some(seen) = e.pinned_seen_ns else {
            return Mitigation::None;
        };
        if now_ns.saturating_sub(seen) > t.pin_epoch.as_nanos() as u64 {
            *e = Block::default();
            return Mitigation::None;
        }
        e.pinned_seen_ns = Some(now_ns);
        if has_preferred { Mitigation::Throttle(t.throttle_nap) } else { Mitigation::Pin }
    }

    /// How many pins were made.
    #[cfg(test)]
    pub fn pins(&self) -> u64 {
        self.pins
    }
}

/// [`super::Policy::Adaptive`] with its tunables.
#[derive(Debug)]
pub struct AdaptiveRules(pub AdaptiveTunables);

impl super::Placement for AdaptiveRules {
    fn fault_extent(&self, f: &super::FaultView<'_>) -> Pages {
        let limit = (f.limit)();
        let dense =
            density_extent(f.granule, limit, DENSITY_REGION_PAGES, self.0.density_percent, f.resident);
        match stream_extent((f.page, f.granule), limit, self.0.stream_window_pages, f.resident) {
            Some(s) => Pages::new(dense.first.min(s.first), dense.last.max(s.last)),
            None => dense,
        }
    }
    fn read_ahead(&self, f: &super::FaultView<'_>, extent: Pages) -> u64 {
        let limit = (f.limit)();
        let streaming =
            stream_extent((f.page, f.granule), limit, self.0.stream_window_pages, f.resident).is_some();
        if streaming && extent.last == limit.last { self.0.stream_window_pages } else { 0 }
    }
    fn gpu_fault(&self, st: &mut Thrashing, page: PageNo, now_ns: u64, has_preferred: bool) -> Mitigation {
        st.on_gpu_fault(page, now_ns, has_preferred, &self.0)
    }
    fn observe_move(&self, st: &mut Thrashing, pages: Pages, dest: u32, now_ns: u64) {
        st.observe_move(pages, dest, now_ns, &self.0);
    }
    fn migrates_unpopulated(&self, trigger: MigrateTrigger) -> bool {
        migrates_unpopulated(true, trigger)
    }
    fn frequency_eviction(&self) -> bool {
        true
    }
    fn exact_duplicates(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::pg;
    use std::time::Duration;

    fn p(a: u64, b: u64) -> Pages {
        Pages::new(pg(a), pg(b))
    }

    #[test]
    fn a_stream_doubles_what_each_fault_takes() {
        let limit = p(0, 10_000);
        // Nothing resident yet: the granule alone.
        assert_eq!(density_extent(p(0, 0), limit, 512, 51, |_| false), p(0, 0));
        // Page 0 resident, fault on 1: [0, 1] is 2/2 dense, [0, 3] only 2/4.
        assert_eq!(density_extent(p(1, 1), limit, 512, 51, |x| x == pg(0)), p(0, 1));
        // [0, 1] resident, fault on 2: [0, 3] 3/4, [0, 7] 3/8.
        assert_eq!(density_extent(p(2, 2), limit, 512, 51, |x| x < pg(2)), p(0, 3));
        // [0, 255] resident, fault on 256: 257/512 is not over 51 %, [256, 511] 1/256.
        assert_eq!(density_extent(p(256, 256), limit, 512, 51, |x| x < pg(256)), p(256, 256));
        // [0, 262] resident, fault on 263: the whole 2 MiB block (264/512 > 51 %).
        assert_eq!(density_extent(p(263, 263), limit, 512, 51, |x| x < pg(263)), p(0, 511));
        // Never past the region: the next block starts over.
        assert_eq!(density_extent(p(512, 512), limit, 512, 51, |x| x < pg(512)), p(512, 512));
    }

    #[test]
    fn density_stays_inside_the_range_and_the_vma() {
        // The limit cuts the block: [0, 3] clipped to [2, 3] is 2/2 dense.
        assert_eq!(density_extent(p(3, 3), p(2, 100), 512, 51, |x| x == pg(2)), p(2, 3));
        // The granule itself is clipped too.
        assert_eq!(density_extent(p(0, 511), p(100, 200), 512, 51, |_| false), p(100, 200));
        // A bigger granule starts at its own size.
        assert_eq!(density_extent(p(16, 31), p(0, 1000), 512, 51, |x| x < pg(16)), p(0, 31));
        // A sparse neighbourhood takes nothing more.
        assert_eq!(density_extent(p(7, 7), p(0, 1000), 512, 51, |x| x == pg(100)), p(7, 7));
    }

    #[test]
    fn a_stream_takes_as_much_as_it_has_behind_it() {
        let limit = p(0, 100_000);
        assert_eq!(stream_extent((pg(10), p(10, 10)), limit, 2048, |_| false), None);
        // [0, 9] behind page 10: twenty pages from 10.
        assert_eq!(stream_extent((pg(10), p(10, 10)), limit, 2048, |x| x < pg(10)), Some(p(10, 29)));
        // Across a range boundary (the caller's residency covers every range): the whole
        // next range in one fault, clipped to it.
        assert_eq!(
            stream_extent((pg(512), p(512, 512)), p(512, 1023), 2048, |x| x < pg(512)),
            Some(p(512, 1023))
        );
        // Never more than the window.
        assert_eq!(
            stream_extent((pg(5000), p(5000, 5000)), limit, 2048, |x| x < pg(5000)),
            Some(p(5000, 7047))
        );
        // A fault inside its granule is no stream's next fault.
        assert_eq!(stream_extent((pg(700), p(512, 1023)), limit, 2048, |x| x < pg(512)), None);
        // From page 0 nothing is behind.
        assert_eq!(stream_extent((pg(0), p(0, 0)), limit, 2048, |_| true), None);
    }

    #[test]
    fn only_gpu_faults_populate_pages_under_adaptive() {
        assert!(migrates_unpopulated(false, MigrateTrigger::Prefetch));
        assert!(!migrates_unpopulated(true, MigrateTrigger::Prefetch));
        assert!(migrates_unpopulated(true, MigrateTrigger::PagefaultGpu));
    }

    const GPU: u32 = 0x1111;
    const RAM: u32 = 0;

    #[test]
    fn a_stream_growing_its_moves_is_not_thrashing() {
        let t = AdaptiveTunables::default();
        let mut th = Thrashing::default();
        for (i, n) in [1, 2, 4, 8, 16].into_iter().enumerate() {
            th.observe_move(p(0, n - 1), GPU, i as u64, &t);
        }
        assert_eq!(th.on_gpu_fault(pg(0), 10, false, &t), Mitigation::None);
    }

    #[test]
    fn three_quick_moves_pin_a_block_until_a_quiet_epoch() {
        let t = AdaptiveTunables::default();
        let mut th = Thrashing::default();
        let ms = 1_000_000;
        th.observe_move(p(0, 15), GPU, 0, &t);
        assert_eq!(th.on_gpu_fault(pg(3), ms, false, &t), Mitigation::None, "one move");
        th.observe_move(p(0, 15), RAM, ms, &t);
        th.observe_move(p(0, 15), RAM, ms, &t); // on to the same place: not back and forth
        // Back in RAM after two moves: the GPU fault's move would be the third.
        assert_eq!(th.on_gpu_fault(pg(3), 2 * ms, false, &t), Mitigation::Pin);
        assert_eq!(th.on_gpu_fault(pg(16), 3 * ms, false, &t), Mitigation::None, "another block");
        assert_eq!(th.on_gpu_fault(pg(3), 3 * ms, true, &t), Mitigation::Throttle(t.throttle_nap));
        // Faults keep the pin; an epoch without one ends it.
        let quiet = 3 * ms + t.pin_epoch.as_nanos() as u64 + 1;
        assert_eq!(th.on_gpu_fault(pg(3), quiet, false, &t), Mitigation::None);
        assert_eq!(th.pins(), 1);
    }

    #[test]
    fn slow_moves_are_not_thrashing() {
        let t = AdaptiveTunables { thrash_lapse: Duration::from_millis(1), ..Default::default() };
        let mut th = Thrashing::default();
        for i in 0..10 {
            th.observe_move(p(0, 0), if i % 2 == 0 { GPU } else { RAM }, i * 2_000_000, &t);
        }
        assert_eq!(th.on_gpu_fault(pg(0), 20_000_000, false, &t), Mitigation::None);
    }
}
