//! The migration engine (KFD's `kfd_migrate.c` on top of `mm/migrate_device.c`).
//!
//! Every migration runs the kernel's three phases, per VMA piece and per staging batch:
//!
//! ```text
//!  setup     mark the pages "out of RAM" (CPU faults on them now wait for us),
//!            invalidate the GPUs (XNACK off / ALWAYS_MAPPED: evict the queues;
//!            XNACK on: unmap the range from the GPUs), then collect:
//!              RAM -> VRAM  UFFDIO_MOVE the application's pages into `staging_out`
//!                           (the CPU page-table entries leave the application's page
//!                           table atomically; holes count as collected, unpopulated);
//!                           pages that cannot move (shared after fork, pinned) are
//!                           retried MIGRATE_COLLECT_RETRIES times, then stay in RAM
//!              VRAM -> RAM  populate `staging_in` with fresh RAM pages
//!  pages     copy with the GPU's copy engine (chunks of <= 512 pages, fences);
//!            unpopulated sources become zeroed VRAM; pages of failed chunks are
//!            given back to the application untouched
//!  finalize  commit residency (per-page VRAM bits, BO, actual_loc, counters) and
//!            free the RAM pages (RAM -> VRAM: MADV_DONTNEED of the staging batch;
//!            VRAM -> RAM: UFFDIO_MOVE the copies into the application, then wake the
//!            threads waiting on them)
//!  restore   remap the range on its GPUs and resume the queues (XNACK off)
//! ```
//!
//! Files: `engine.rs` (the process-side resources: userfaultfds, staging areas, RAM pool,
//! the out-of-RAM sets, and `commit_in`, the only way data enters the application),
//! `to_vram.rs` and `batch.rs` (RAM -> VRAM, one staging batch as one value), `to_ram.rs`
//! (VRAM -> RAM), `register.rs` (watching memory with the userfaultfd); this file holds
//! what both directions share (the context, the invalidation and restore around a piece,
//! the MIGRATE events).
//!
//! All of it runs with the instance's state lock held (the range's migration lock in the
//! kernel). The only lock the CPU fault handler needs to resolve a fault on a page that is
//! *not* out of RAM is the `out` set's (a leaf), so it can always serve device accesses
//! that touch never-populated memory, whatever a migration is waiting for.

mod batch;
mod engine;
mod out_of_ram;
pub mod pageset;
mod register;
mod to_ram;
mod to_vram;

pub use engine::{Engine, Fill};
pub use register::{register, register_interval, unregister_interval};
pub use to_ram::to_ram;
pub use to_vram::to_vram;

use crate::addr::Pages;
use crate::addr::each_page;
use crate::attr::{Location, SvmFlags};
use crate::error::{Error, Result};
use crate::events::EventHub;
use crate::events::{Counter, EventKind, EvictTrigger, MigrateTrigger, UnmapTrigger};
use crate::gpu::Devices;
use crate::gpu::GpuIdx;
use crate::gpu::sdma::CopyOp;
use crate::gpu::vram::Bo;
use crate::gpu::vram::Clear;
use crate::map;
use crate::policy;
use crate::range::{PageNo, SvmRange, VramBacking};
use crate::sys::{self, PAGE_SIZE, uffd::Uffd, vma};
use batch::ToVramBatch;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// What a migration works with: the engine, the GPUs, the events and the XNACK mode (never
/// the instance's ranges: a migration works on one range, and anything it needs from the
/// others, VRAM eviction, goes through an [`Evict`] callback).
pub(crate) struct Ctx<'a> {
    /// The process-side resources.
    pub(crate) engine: &'a Engine,
    /// The GPUs.
    pub(crate) devs: &'a Devices,
    /// Events and counters.
    pub(crate) events: &'a EventHub,
    /// XNACK on (unmap from the GPUs) or off (evict the queues).
    pub(crate) xnack: bool,
    /// Migrations to VRAM take only pages that hold data (the placement rules leave
    /// never-populated pages to be populated where they are first touched); off, holes
    /// become zeroed VRAM, as the kernel's migrations make them.
    pub(crate) populated_only: bool,
}

impl Ctx<'_> {
    /// The GPU index of a location, if it is one of the instance's GPUs.
    pub(crate) fn gpu_of(&self, l: Location) -> Option<GpuIdx> {
        l.gpu().and_then(|g| self.devs.gpus.iter().position(|d| d.id == g)).map(GpuIdx::new)
    }
}

/// Makes room in VRAM for a migration: moves the ranges holding these BOs (the victims
/// the VRAM manager chose) back to RAM (TTM_EVICTION).
pub(crate) type Evict<'e> = &'e mut dyn FnMut(&[Bo]);

/// Collection of a page that could not be moved is retried this many times (the seed).
pub const MIGRATE_COLLECT_RETRIES: u32 = 3;
/// VRAM -> VRAM first empties the source; this many attempts, then EDEADLK (section 4.7).
pub const VRAM_TO_VRAM_TRIES: u32 = 3;
/// Pages moved per staging batch (64 MiB).
pub const STAGING_PAGES: u64 = 16384;

/// Largest number of RAM pages kept for reuse after migrations to VRAM (256 MiB).
pub const POOL_PAGES: u64 = 65536;
/// Batches back to RAM smaller than this (a 2 MiB huge page) use `UFFDIO_COPY`.
pub const SMALL_BATCH_PAGES: u64 = 512;

/// What the setup phase did to the GPUs, for the restore to undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalidation {
    /// The range was not mapped anywhere.
    None,
    /// XNACK off or ALWAYS_MAPPED: every GPU's queues were evicted.
    QueuesEvicted,
    /// XNACK on: the pages were unmapped from the GPUs.
    Unmapped,
}

/// The invalidation a migration issues for one VMA piece `[ps, pl]` of `r`, inside the
/// piece's MIGRATE_START / MIGRATE_END as the kernel's `migrate_vma_setup` does (its
/// MMU_NOTIFY_MIGRATE event: sections 4.4, 4.5, 6.1, 6.2), even when nothing ends up
/// moving. XNACK off or ALWAYS_MAPPED: every GPU's queues are evicted, once per migration
/// (`inv` says whether that happened); XNACK on: the piece is unmapped from the GPUs.
fn invalidate_piece(
    cx: &Ctx,
    r: &mut SvmRange,
    (ps, pl): (PageNo, PageNo),
    xnack: bool,
    inv: &mut Invalidation,
) {
    let mapped = r.mapped_gpus.iter().next().is_some();
    if !xnack || r.attrs.flags.contains(SvmFlags::GPU_ALWAYS_MAPPED) {
        if mapped && *inv != Invalidation::QueuesEvicted {
            for g in GpuIdx::all(cx.devs.gpus.len()) {
                cx.devs.evict_queues(g, EvictTrigger::Svm);
            }
            *inv = Invalidation::QueuesEvicted;
        }
    } else {
        // Also when no GPU holds entries: the unmap clears `mapped_to_gpu`.
        map::unmap_from_gpus(cx.devs, r, Pages::new(ps, pl), UnmapTrigger::MmuNotifyMigrate);
        if mapped {
            *inv = Invalidation::Unmapped;
        }
    }
}

/// After the pieces of a migration over `[first, last]`: under XNACK on a migration over
/// the whole range leaves it mapped nowhere, however many pieces it had (one piece over the
/// whole range clears the state itself).
fn end_invalidation(r: &mut SvmRange, (first, last): (PageNo, PageNo), xnack: bool) {
    let unmaps = xnack && !r.attrs.flags.contains(SvmFlags::GPU_ALWAYS_MAPPED);
    if unmaps && first <= r.start && last >= r.last {
        r.mapped_to_gpu = false;
        r.mapped_gpus = crate::range::GpuMask::EMPTY;
    }
}

/// The restore work (section 6.3): remap the whole range on its GPUs, then resume the
/// queues. A range that cannot be remapped is unmapped instead, so no GPU keeps entries to
/// pages that moved.
fn restore(cx: &Ctx, r: &mut SvmRange, inv: Invalidation, xnack: bool) {
    if inv != Invalidation::QueuesEvicted {
        return;
    }
    let gpus = policy::gpus_to_map(&r.attrs, cx.gpu_of(r.actual_loc), r.mapped_to_gpu, xnack);
    let (s, l) = (r.start, r.last);
    if map::remap_range(cx.devs, r, gpus).is_err() {
        map::unmap_from_gpus(cx.devs, r, Pages::new(s, l), UnmapTrigger::MmuNotify);
    }
    for g in GpuIdx::all(cx.devs.gpus.len()) {
        cx.devs.restore_queues(g, false);
    }
}

/// Runs of consecutive pages of `[first, last]` for which `pick` holds.
fn runs(first: PageNo, last: PageNo, pick: impl Fn(PageNo) -> bool) -> Vec<(PageNo, PageNo)> {
    let mut out: Vec<(PageNo, PageNo)> = Vec::new();
    for p in each_page(first, last) {
        if pick(p) {
            match out.last_mut() {
                Some((_, l)) if *l + 1 == p => *l = p,
                _ => out.push((p, p)),
            }
        }
    }
    out
}

/// Copy ops for pages `pages` (with their source and destination addresses), merged where
/// both sides are contiguous; returns the ops and, per op, how many pages it carries.
fn merge_ops(pages: impl Iterator<Item = (usize, usize)>) -> Vec<CopyOp> {
    let mut ops: Vec<CopyOp> = Vec::new();
    for (src, dst) in pages {
        match ops.last_mut() {
            Some(o)
                if o.src + o.npages as usize * PAGE_SIZE == src
                    && o.dst + o.npages as usize * PAGE_SIZE == dst =>
            {
                o.npages += 1
            }
            _ => ops.push(CopyOp { src, dst, npages: 1 }),
        }
    }
    ops
}

/// The MIGRATE_START / MIGRATE_END pair around one VMA piece.
fn piece_events<T>(
    cx: &Ctx,
    (prefetch_loc, preferred_loc): (u32, u32),
    (s, l): (PageNo, PageNo),
    (from, to): (u32, u32),
    trigger: MigrateTrigger,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let npages = l - s + 1;
    cx.events.emit(|| EventKind::MigrateStart {
        start: s.get(),
        npages,
        from,
        to,
        prefetch_loc,
        preferred_loc,
        trigger,
    });
    let res = f();
    let error = match &res {
        Ok(_) => 0,
        Err(e) => -e.errno(),
    };
    cx.events.emit(|| EventKind::MigrateEnd { start: s.get(), npages, from, to, trigger, error });
    res
}

/// One debug line per migration (`RUST_LOG=usvm=debug`).
fn log_migration(
    dir: &str,
    (first, last): (PageNo, PageNo),
    gpu: GpuIdx,
    trigger: MigrateTrigger,
    moved: u64,
    ok: bool,
) {
    tracing::debug!(
        addr = format_args!("{:#x}", first.addr()),
        pages = last - first + 1,
        gpu = %gpu,
        ?trigger,
        moved,
        ok,
        "{dir}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::pg;

    #[test]
    fn runs_group_consecutive_pages() {
        assert_eq!(runs(pg(10), pg(20), |p| !p.is_multiple_of(5)), vec![(pg(11), pg(14)), (pg(16), pg(19))]);
        assert_eq!(runs(pg(3), pg(3), |_| true), vec![(pg(3), pg(3))]);
        assert!(runs(pg(0), pg(9), |_| false).is_empty());
    }

    #[test]
    fn copy_ops_merge_where_both_sides_continue() {
        let p = PAGE_SIZE;
        let ops = merge_ops([(0, 10 * p), (p, 11 * p), (2 * p, 20 * p), (3 * p, 21 * p)].into_iter());
        assert_eq!(
            ops,
            vec![CopyOp { src: 0, dst: 10 * p, npages: 2 }, CopyOp { src: 2 * p, dst: 20 * p, npages: 2 }]
        );
    }
}
