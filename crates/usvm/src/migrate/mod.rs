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
//! All of it runs with the instance's state lock held (the range's migration lock in the
//! kernel). The only lock the CPU fault handler needs to resolve a fault on a page that is
//! *not* out of RAM is the `out` set's (a leaf), so it can always serve device accesses
//! that touch never-populated memory, whatever a migration is waiting for.

mod batch;
pub mod pageset;

use crate::attr::{Location, SvmFlags};
use crate::error::{Error, Result};
use crate::events::EventHub;
use crate::events::{Counter, EventKind, EvictTrigger, MigrateTrigger, UnmapTrigger};
use crate::gpu::Devices;
use crate::gpu::sdma::CopyOp;
use crate::gpu::vram::Bo;
use crate::gpu::vram::Clear;
use crate::map;
use crate::policy;
use crate::range::{PageNo, SvmRange, VramBacking};
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE, uffd::Uffd, vma};
use batch::ToVramBatch;
use pageset::PageSet;
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
}

impl Ctx<'_> {
    /// The GPU index of a location, if it is one of the instance's GPUs.
    pub(crate) fn gpu_of(&self, l: Location) -> Option<usize> {
        l.gpu().and_then(|g| self.devs.gpus.iter().position(|d| d.id == g))
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

/// The engine's process-side resources of one instance.
///
/// RAM pages freed by a migration to VRAM are not given back to the kernel at once: up
/// to [`POOL_PAGES`] of them wait in `pool` (moved there, page-table entries only) and
/// become the fresh RAM pages of the next migration back, which then costs one copy
/// instead of zeroing new pages and copying. Staging areas use transparent huge pages, so
/// that aligned 2 MiB pieces move as one page-table entry.
#[derive(Debug)]
pub struct Engine {
    /// The userfaultfd watching the application's SVM ranges (faults and events).
    pub uffd: Arc<Uffd>,
    /// A second userfaultfd, without events, for usvm's own areas (`staging_out`, `pool`):
    /// moving pages into them, and dropping theirs, must raise no event for the reader
    /// thread to wait on (it may be the one migrating).
    pub(crate) own: Uffd,
    /// Registered with `uffd`, empty between batches: receives collected pages.
    staging_out: usize,
    /// Not registered: fresh RAM pages for large batches are populated here.
    staging_in: usize,
    /// Registered: populated RAM pages kept for reuse, `[0, pool_level)` full.
    pool: usize,
    pool_level: Mutex<u64>,
    /// Pages whose data usvm moved out of the application's RAM (or is moving).
    pub(crate) out: Mutex<PageSet>,
    /// Pages the application dropped (MADV_DONTNEED) whose zap may not have happened yet:
    /// the REMOVE event comes before the kernel zaps the pages, so a migration can still
    /// collect their old data in between. Such data must never be committed or come back.
    /// An entry goes when usvm resolves the page's next fault (the zap is then done).
    /// Locked inside `out`, and only with it held.
    pub(crate) dropped: Mutex<PageSet>,
    /// Pages that mremap moved elsewhere while their data was out of RAM (their `out` marks
    /// moved to the new place): the data follows them when the queued Remap change is
    /// applied, so until then a migration under way keeps such a page's data in VRAM, or
    /// commits it there, instead of taking the page for dropped. Locked inside `out`.
    pub(crate) remapped: Mutex<PageSet>,
    /// Pages the application unmapped (munmap, or the old place of an mremap) whose change
    /// is read but not applied yet: the ranges still cover them, but whatever is mapped
    /// there now (MAP_FIXED, a new mmap) is not theirs, so no migration marks or collects
    /// them (one did, and the queued unmap then dropped the new mapping's data). Locked
    /// inside `out`.
    pub(crate) gone: Mutex<PageSet>,
    /// Fault injection: the next N page collections fail as if the page were busy.
    pub inject_busy: AtomicU64,
}

/// How [`Engine::commit_in`] puts data into the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// `UFFDIO_MOVE` the source pages (they leave the source area).
    Move,
    /// `UFFDIO_COPY` them (fresh pages; the source stays).
    Copy,
}

impl Engine {
    /// Opens the userfaultfd and maps the staging areas (address space only).
    pub fn new() -> Result<Self> {
        let uffd = Arc::new(Uffd::new(true)?);
        let bytes = STAGING_PAGES as usize * PAGE_SIZE;
        let pool_bytes = POOL_PAGES as usize * PAGE_SIZE;
        let staging_out = sys::mmap::map_anon_aligned(bytes, 2 << 20)?;
        let staging_in = sys::mmap::map_anon_aligned(bytes, 2 << 20)?;
        let pool = sys::mmap::map_anon_aligned(pool_bytes, 2 << 20)?;
        sys::mmap::advise_hugepages(staging_out, bytes);
        sys::mmap::advise_hugepages(staging_in, bytes);
        sys::mmap::advise_hugepages(pool, pool_bytes);
        // Empty at every fork (no migration runs across one and the pool is drained): a child
        // has no use for them.
        sys::mmap::advise_dontfork(staging_out, bytes);
        sys::mmap::advise_dontfork(staging_in, bytes);
        sys::mmap::advise_dontfork(pool, pool_bytes);
        let own = Uffd::new(false)?;
        own.register(staging_out, bytes)?;
        own.register(pool, pool_bytes)?;
        Ok(Engine {
            uffd,
            own,
            staging_out,
            staging_in,
            pool,
            pool_level: Mutex::new(0),
            out: Mutex::new(PageSet::default()),
            dropped: Mutex::new(PageSet::default()),
            remapped: Mutex::new(PageSet::default()),
            gone: Mutex::new(PageSet::default()),
            inject_busy: AtomicU64::new(0),
        })
    }

    /// Frees the `n` pages at the start of `staging_out` (all populated): into the pool
    /// when there is room, else back to the kernel.
    fn release_staging_out(&self, n: u64, all_populated: bool) -> Result<()> {
        let bytes = n as usize * PAGE_SIZE;
        let mut level = self.pool_level.lock();
        let aligned = !n.is_multiple_of(SMALL_BATCH_PAGES) || level.is_multiple_of(SMALL_BATCH_PAGES);
        if all_populated && aligned && *level + n <= POOL_PAGES {
            let dst = self.pool + *level as usize * PAGE_SIZE;
            let (done, err) = self.own.move_pages(dst, self.staging_out, bytes, false);
            *level += (done / PAGE_SIZE) as u64;
            if err.is_none() {
                return Ok(());
            }
        }
        sys::mmap::discard(self.staging_out, bytes)
    }

    /// `n` populated RAM pages to copy into, which the caller moves into the application
    /// (leaving the area empty): the top of the pool when it holds enough (keeping it
    /// huge-page aligned), else fresh pages in `staging_in`.
    fn fresh_pages(&self, n: u64) -> Result<usize> {
        let mut level = self.pool_level.lock();
        if *level >= n && (*level - n).is_multiple_of(SMALL_BATCH_PAGES) {
            *level -= n;
            return Ok(self.pool + *level as usize * PAGE_SIZE);
        }
        drop(level);
        sys::mmap::populate(self.staging_in, n as usize * PAGE_SIZE)?;
        Ok(self.staging_in)
    }

    /// Puts data into the application's pages `[first, first + n)` from `src` (`n` pages
    /// there, in order), by `UFFDIO_MOVE` or `UFFDIO_COPY`, and marks them back in RAM.
    ///
    /// The check "is the page still out of RAM, and not dropped" and the ioctl happen under
    /// the `out` lock,
    /// which the reader holds while it reads an munmap / MADV_DONTNEED / mremap event and
    /// takes the pages out of the set: so a page the application dropped or unmapped while
    /// its data was away is skipped (its old data must not come back: the kernel's
    /// invalidation retry). While such an event waits to be read, the ioctl fails with
    /// `EAGAIN`: the lock is let go so the reader can take the event in, and the page is
    /// tried again (at once `EAGAIN` on the reader thread itself, which must not wait for
    /// itself). An `EEXIST` is believed only when the application really has the page: its
    /// data is then the newer one.
    ///
    /// Returns how many pages from `first` are settled (now in RAM, or dropped by the
    /// application) and the error that stopped it, if any.
    pub fn commit_in(&self, first: PageNo, n: u64, src: usize, fill: Fill) -> (u64, Option<i32>) {
        let since = std::time::Instant::now();
        let mut i = 0;
        while i < n {
            let mut out = self.out.lock();
            let dropped = self.dropped.lock();
            let wanted = |p: PageNo| out.contains(p) && !dropped.contains(p);
            if !wanted(first + i) {
                // Dropped or unmapped by the application meanwhile: its data must not come back.
                drop(dropped);
                out.remove(first + i, first + i);
                i += 1;
                continue;
            }
            let mut k = 1;
            while i + k < n && wanted(first + i + k) {
                k += 1;
            }
            drop(dropped);
            let dst = ((first + i) << PAGE_SHIFT) as usize;
            let s = src + i as usize * PAGE_SIZE;
            let len = k as usize * PAGE_SIZE;
            let (bytes, err) = match fill {
                Fill::Move => match self.uffd.move_pages(dst, s, len, false) {
                    // UFFDIO_MOVE wants both areas with the same protection and mlock state:
                    // memory the application made read-only or locked gets a copy instead
                    // (the data stayed in VRAM, and a CPU fault on it got SIGBUS).
                    (0, Some(libc::EINVAL)) => self.uffd.copy(dst, s, len),
                    r => r,
                },
                Fill::Copy => self.uffd.copy(dst, s, len),
            };
            let mut m = (bytes / PAGE_SIZE) as u64;
            let err = match err {
                Some(libc::EEXIST) if app_has_page(first + i + m) => {
                    m += 1;
                    None
                }
                e => e,
            };
            if m > 0 {
                out.remove(first + i, first + i + m - 1);
            }
            drop(out);
            i += m;
            match err {
                None => {}
                // Stopped early after some progress (see `Uffd::move_pages`): go on from there.
                Some(libc::EAGAIN) if m > 0 => {}
                Some(libc::EAGAIN)
                    if !sys::uffd::is_event_reader() && since.elapsed() < sys::uffd::EAGAIN_PATIENCE =>
                {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                Some(e) => return (i, Some(e)),
            }
        }
        (n, None)
    }

    /// Forgets the VRAM copies of the `n` pages from `first` of `r` that [`Self::commit_in`]
    /// settled, except those whose mapping mremap moved away meanwhile: their data is to
    /// follow them (the queued Remap change copies it from VRAM).
    fn forget_vram_copies(&self, r: &mut SvmRange, first: PageNo, n: u64) {
        let _out = self.out.lock();
        let remapped = self.remapped.lock();
        for p in first..first + n {
            if !remapped.contains(p) {
                r.in_vram.set(p - r.start, false);
            }
        }
    }

    /// Gives the RAM pool back to the kernel (before a fork: pages shared copy-on-write with
    /// a child must not be reused as fresh pages).
    pub fn drain_pool(&self) {
        let mut level = self.pool_level.lock();
        let _ = sys::mmap::discard(self.pool, *level as usize * PAGE_SIZE);
        *level = 0;
    }

    /// Forgets that the pages `[start, last]` are out of RAM (their data is gone).
    pub fn forget_out(&self, start: PageNo, last: PageNo) {
        self.out.lock().remove(start, last);
    }

    /// Resolves a CPU fault on `page` if its data is in RAM: the page was never populated
    /// (or the application dropped it). Every missing page of its 2 MiB block that is not
    /// out of RAM gets the zero page at once (one fault per block, not per page; the zero
    /// page costs no memory and a write copies it as usual), under the `out` lock so that
    /// no migration can start collecting those pages meanwhile. Returns false when the
    /// page's data is out of RAM.
    pub fn resolve_if_in_ram(&self, page: PageNo) -> Result<bool> {
        let out = self.out.lock();
        if out.contains(page) {
            return Ok(false);
        }
        let block = page & !(SMALL_BATCH_PAGES - 1);
        let has = sys::pagemap::has_memory((block << PAGE_SHIFT) as usize, SMALL_BATCH_PAGES as usize)
            .unwrap_or_else(|_| vec![true; SMALL_BATCH_PAGES as usize]);
        let mut zeroed_faulting = false;
        for (s, l) in
            runs(block, block + SMALL_BATCH_PAGES - 1, |p| !has[(p - block) as usize] && !out.contains(p))
        {
            // Pages of the block outside the registered mapping are refused: not ours.
            if self.uffd.zeropage((s << PAGE_SHIFT) as usize, ((l - s + 1) as usize) * PAGE_SIZE).is_ok() {
                zeroed_faulting |= s <= page && page <= l;
                // Absent, so any zap is done: what the application writes there now is new.
                self.dropped.lock().remove(s, l);
            }
        }
        if !zeroed_faulting {
            match self.uffd.zeropage((page << PAGE_SHIFT) as usize, PAGE_SIZE) {
                Ok(()) => {}
                // No watched mapping there any more (unmapped since the fault): the thread
                // faults again and the kernel decides (SIGSEGV when nothing is mapped).
                Err(e) if e.errno() == libc::ENOENT => {
                    self.uffd.wake((page << PAGE_SHIFT) as usize, PAGE_SIZE)?;
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
            self.dropped.lock().remove(page, page);
        }
        Ok(true)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let bytes = STAGING_PAGES as usize * PAGE_SIZE;
        // Unregister first: an unmap of registered memory would wait for a reader of the
        // UNMAP event, and the reader thread is gone by now.
        let _ = self.own.unregister(self.staging_out, bytes);
        let _ = self.own.unregister(self.pool, POOL_PAGES as usize * PAGE_SIZE);
        let _ = sys::mmap::unmap(self.staging_out, bytes);
        let _ = sys::mmap::unmap(self.staging_in, bytes);
        let _ = sys::mmap::unmap(self.pool, POOL_PAGES as usize * PAGE_SIZE);
    }
}

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
            for g in 0..cx.devs.gpus.len() {
                cx.devs.evict_queues(g, EvictTrigger::Svm);
            }
            *inv = Invalidation::QueuesEvicted;
        }
    } else {
        // Also when no GPU holds entries: the unmap clears `mapped_to_gpu`.
        map::unmap_from_gpus(cx.devs, r, ps, pl, UnmapTrigger::MmuNotifyMigrate);
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
        map::unmap_from_gpus(cx.devs, r, s, l, UnmapTrigger::MmuNotify);
    }
    for g in 0..cx.devs.gpus.len() {
        cx.devs.restore_queues(g, false);
    }
}

/// Runs of consecutive pages of `[first, last]` for which `pick` holds.
fn runs(first: PageNo, last: PageNo, pick: impl Fn(PageNo) -> bool) -> Vec<(PageNo, PageNo)> {
    let mut out: Vec<(PageNo, PageNo)> = Vec::new();
    for p in first..=last {
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
        start: s,
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
    cx.events.emit(|| EventKind::MigrateEnd { start: s, npages, from, to, trigger, error });
    res
}

/// Registers the anonymous private memory of `r` with the userfaultfd (once per range):
/// from then on its missing pages fault to usvm, and the application's munmap, mremap and
/// MADV_DONTNEED of it are reported.
pub fn register(engine: &Engine, r: &mut SvmRange) -> Result<()> {
    if r.registered {
        return Ok(());
    }
    register_interval(engine, r.start, r.last)?;
    r.registered = true;
    Ok(())
}

/// Registers the anonymous private memory of the pages `[first, last]`, which this
/// instance does not watch yet, with the userfaultfd. `EADDRINUSE` when another instance
/// watches some of it; on any error, what this call registered is unregistered again, so
/// a refused call leaves nothing behind (that memory stayed watched by this instance, and
/// the other could never take it).
pub fn register_interval(engine: &Engine, first: PageNo, last: PageNo) -> Result<()> {
    let mut done: Vec<(usize, usize)> = Vec::new();
    let mut result = Ok(());
    for piece in vma::mapped_pieces(first, last) {
        let p = match piece {
            Ok(p) => p,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if p.vma.migratable() {
            let (addr, len) = ((p.first << PAGE_SHIFT) as usize, (p.last - p.first + 1) as usize * PAGE_SIZE);
            match engine.uffd.register(addr, len) {
                Ok(()) => done.push((addr, len)),
                Err(e) => {
                    result = Err(match e {
                        Error::Sys { errno: libc::EBUSY, .. } => {
                            Error::AddressInUse { addr: p.first << PAGE_SHIFT }
                        }
                        e => e,
                    });
                    break;
                }
            }
        }
    }
    if result.is_err() {
        for (addr, len) in done {
            let _ = engine.uffd.unregister(addr, len);
        }
    }
    result
}

/// Undoes [`register_interval`] for `[first, last]` (a refused call rolling back).
pub fn unregister_interval(engine: &Engine, first: PageNo, last: PageNo) {
    for p in vma::mapped_pieces(first, last).map_while(Result::ok) {
        if p.vma.migratable() {
            let len = (p.last - p.first + 1) as usize * PAGE_SIZE;
            let _ = engine.uffd.unregister((p.first << PAGE_SHIFT) as usize, len);
        }
    }
}

/// How many rounds of TTM eviction an allocation may ask for before it fails.
pub const EVICTION_ROUNDS: usize = 3;

/// A BO for the whole range `r` on GPU `g`; when VRAM is short, the least recently used
/// BOs are handed to `evict` (every range sharing them goes back to RAM, trigger
/// TTM_EVICTION) and the allocation tries again (section 6.5).
fn alloc_evicting(cx: &Ctx, r: &SvmRange, g: usize, evict: Evict) -> Result<crate::gpu::vram::Bo> {
    let npages = r.npages();
    let vram = &cx.devs.gpus[g].vram;
    let mut round = 0;
    loop {
        match vram.alloc(npages, Clear::No) {
            Ok(bo) => return Ok(bo),
            Err(e) if round == EVICTION_ROUNDS => return Err(e),
            Err(e) => {
                let victims = vram.choose_victims(npages);
                if victims.is_empty() {
                    return Err(e);
                }
                let ids: Vec<u64> = victims.iter().map(|b| b.id()).collect();
                tracing::debug!(
                    gpu = g,
                    need_pages = npages,
                    victims = ids.len(),
                    "VRAM full: evicting LRU ranges"
                );
                evict(&victims);
                drop(victims);
                vram.end_eviction(&ids);
                round += 1;
            }
        }
    }
}

/// RAM -> VRAM of the pages `[first, last]` of `r`, to GPU `g` (`svm_migrate_to_vram`). A
/// range on another GPU first goes through RAM. Returns the number of pages that moved;
/// pages that could not be collected stay in RAM.
pub fn to_vram(
    cx: &Ctx,
    r: &mut SvmRange,
    (first, last): (PageNo, PageNo),
    g: usize,
    trigger: MigrateTrigger,
    evict: Evict,
) -> Result<u64> {
    let xnack = cx.xnack;
    // VRAM -> VRAM: empty the old GPU first (section 4.7).
    let mut tries = 0;
    while let Some(cur) = cx.gpu_of(r.actual_loc) {
        if cur == g {
            break;
        }
        if tries == VRAM_TO_VRAM_TRIES {
            return Err(Error::Deadlock);
        }
        let (s, l) = (r.start, r.last);
        to_ram(cx, r, (s, l), trigger)?;
        tries += 1;
    }
    // Watched before any VRAM is taken: memory another instance watches is refused
    // (EADDRINUSE) with nothing to undo (a BO taken first stayed with the range).
    register(cx.engine, r)?;
    let npages = r.npages();
    let dev = &cx.devs.gpus[g];
    let _reservation = dev.vram.reserve(npages * PAGE_SIZE as u64)?;
    if r.vram.is_none() {
        let bo = alloc_evicting(cx, r, g, evict)?;
        r.vram = Some(VramBacking { bo, offset: 0 });
    }
    let mut inv = Invalidation::None;
    let mut moved = 0;
    let mut result = Ok(());
    // Holes (memory unmapped since) are stepped over; a failed lookup ends the migration
    // early, without error.
    for vma::Piece { first: page, last: end, vma: v } in vma::mapped_pieces(first, last).map_while(Result::ok)
    {
        let ids = (0, dev.id.0);
        let locs = (r.attrs.prefetch_loc.to_raw(), r.attrs.preferred_loc.to_raw());
        let res = piece_events(cx, locs, (page, end), ids, trigger, || {
            invalidate_piece(cx, r, (page, end), xnack, &mut inv);
            if v.migratable() { piece_to_vram(cx, r, g, page, end) } else { Ok(0) }
        });
        match res {
            Ok(n) => moved += n,
            Err(e) => result = Err(e),
        }
    }
    cx.events.count(g, Counter::PageIn, moved);
    // From what the range holds, not from `moved`: a piece that failed after committing
    // pages (its batch settled them on the way out) reports none, and dropping the BO of
    // committed pages would lose them.
    if r.vram_pages() > 0 {
        r.actual_loc = Location::Gpu(dev.id);
    } else if r.actual_loc == Location::Sysmem {
        r.vram = None;
    }
    if let Some(b) = &r.vram {
        b.bo.touch();
    }
    end_invalidation(r, (first, last), xnack);
    restore(cx, r, inv, xnack);
    log_migration("RAM -> VRAM", (first, last), g, trigger, moved, result.is_ok());
    result.map(|()| moved)
}

/// One debug line per migration (`RUST_LOG=usvm=debug`).
fn log_migration(
    dir: &str,
    (first, last): (PageNo, PageNo),
    gpu: usize,
    trigger: MigrateTrigger,
    moved: u64,
    ok: bool,
) {
    tracing::debug!(
        addr = format_args!("{:#x}", first << PAGE_SHIFT),
        pages = last - first + 1,
        gpu,
        ?trigger,
        moved,
        ok,
        "{dir}"
    );
}

/// The three phases for one anonymous VMA piece `[ps, pl]` of `r`, RAM -> VRAM of GPU `g`,
/// one staging batch ([`ToVramBatch`]) at a time.
fn piece_to_vram(cx: &Ctx, r: &mut SvmRange, g: usize, ps: PageNo, pl: PageNo) -> Result<u64> {
    let dev = &cx.devs.gpus[g];
    let backing = r.vram.clone().expect("BO allocated");
    let mut moved = 0;
    for (rs, rl) in runs(ps, pl, |p| !r.page_in_vram(p)) {
        let mut bs = rs;
        while bs <= rl {
            let bl = rl.min(bs + STAGING_PAGES - 1);
            let mut batch = ToVramBatch::collect(cx.engine, r, backing.clone(), (bs, bl))?;
            if let Err(e) = batch.copy(&dev.sdma) {
                // Its pages go back to the application; the rest of the range moves.
                tracing::debug!(gpu = g, error = %e, "a copy chunk to VRAM failed");
            }
            moved += batch.finalize()?;
            bs = bl + 1;
        }
    }
    Ok(moved)
}

/// VRAM -> RAM of the pages `[first, last]` of `r` (`svm_migrate_vram_to_ram`). Returns the
/// number of pages that moved.
pub fn to_ram(
    cx: &Ctx,
    r: &mut SvmRange,
    (first, last): (PageNo, PageNo),
    trigger: MigrateTrigger,
) -> Result<u64> {
    let xnack = cx.xnack;
    let Some(g) = cx.gpu_of(r.actual_loc) else { return Ok(0) };
    let mut inv = Invalidation::None;
    let id = cx.devs.gpus[g].id.0;
    let mut moved = 0;
    let mut result = Ok(());
    // A single page is its own VMA piece (a CPU fault at granularity 0): no walk needed.
    // Holes are stepped over: pages the application unmapped have nothing to come back to
    // (their VRAM copies go when the munmap event is applied), and a fault on a page next
    // to them must still be served (it got SIGBUS when its granule met a hole whose event
    // the reader had not read yet).
    let bounds: Vec<Result<(PageNo, PageNo)>> = if first == last {
        vec![Ok((first, last))]
    } else {
        vma::mapped_pieces(first, last).map(|p| p.map(|p| (p.first, p.last))).collect()
    };
    for b in bounds {
        let (page, end) = match b {
            Ok(b) => b,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let locs = (r.attrs.prefetch_loc.to_raw(), r.attrs.preferred_loc.to_raw());
        match piece_events(cx, locs, (page, end), (id, 0), trigger, || {
            invalidate_piece(cx, r, (page, end), xnack, &mut inv);
            piece_to_ram(cx, r, g, page, end)
        }) {
            Ok(n) => moved += n,
            Err(e) => result = Err(e),
        }
    }
    cx.events.count(g, Counter::PageOut, moved);
    if r.vram_pages() == 0 {
        r.actual_loc = Location::Sysmem;
        r.vram = None;
    }
    end_invalidation(r, (first, last), xnack);
    restore(cx, r, inv, xnack);
    // Only now, with the bookkeeping done, may the threads that faulted on these pages go on.
    let _ = cx.engine.uffd.wake((first << PAGE_SHIFT) as usize, ((last - first + 1) << PAGE_SHIFT) as usize);
    log_migration("VRAM -> RAM", (first, last), g, trigger, moved, result.is_ok());
    result.map(|()| moved)
}

/// The three phases for one VMA piece `[ps, pl]` of `r`, VRAM of GPU `g` -> RAM.
fn piece_to_ram(cx: &Ctx, r: &mut SvmRange, g: usize, ps: PageNo, pl: PageNo) -> Result<u64> {
    let eng = &cx.engine;
    let dev = &cx.devs.gpus[g];
    let Some(backing) = r.vram.clone() else { return Ok(0) };
    let mut moved = 0;
    for (rs, rl) in runs(ps, pl, |p| r.page_in_vram(p)) {
        let mut bs = rs;
        while bs <= rl {
            let bl = rl.min(bs + STAGING_PAGES - 1);
            let n = bl - bs + 1;
            let bytes = n as usize * PAGE_SIZE;
            if n < SMALL_BATCH_PAGES {
                moved += small_to_ram(cx, r, g, &backing, bs, n)?;
                bs = bl + 1;
                continue;
            }
            // --- setup: fresh RAM pages (from the pool when it has them).
            let fresh = eng.fresh_pages(n)?;
            // --- pages: copy VRAM -> the new RAM pages.
            let ops = merge_ops((0..n).map(|i| {
                (backing.bo.host_addr(backing.offset + (bs + i - r.start)), fresh + i as usize * PAGE_SIZE)
            }));
            let (arrived, copy_err) = dev.sdma.copy_sync(&ops);
            // --- finalize: move the copies into the application, drop the VRAM pages
            // (`to_ram` wakes the waiting threads at the end).
            let (settled, err) = eng.commit_in(bs, arrived, fresh, Fill::Move);
            eng.forget_vram_copies(r, bs, settled);
            if let Some(errno) = err {
                sys::mmap::discard(fresh, bytes)?;
                return Err(Error::Sys { call: "UFFDIO_MOVE", errno });
            }
            moved += arrived;
            // Whatever did not move in (a failed copy chunk) is dropped, leaving the area empty;
            // a large area also gives back its (now empty) page tables.
            if arrived < n || n >= SMALL_BATCH_PAGES {
                sys::mmap::discard(fresh, bytes)?;
            }
            copy_err?;
            bs = bl + 1;
        }
    }
    Ok(moved)
}

/// Whether the application really has `page` in memory: an `EEXIST` is believed (and the
/// VRAM copy dropped for the application's newer data) only when this says so; otherwise
/// it is an error like any other and the data stays in VRAM.
fn app_has_page(page: PageNo) -> bool {
    sys::pagemap::has_memory((page << PAGE_SHIFT) as usize, 1).is_ok_and(|v| v[0])
}

/// VRAM -> RAM of a batch smaller than a huge page (a CPU fault at a small granularity):
/// per run of contiguous VRAM pages, one `UFFDIO_COPY` allocates the RAM pages, copies
/// the data and maps them (setup, pages and finalize in one system call, without the TLB
/// shootdown that moving a staging page out would cost). The copy engine accounts for the
/// copy, so its fault injection applies as to a chunk.
fn small_to_ram(
    cx: &Ctx,
    r: &mut SvmRange,
    g: usize,
    backing: &VramBacking,
    bs: PageNo,
    n: u64,
) -> Result<u64> {
    let eng = &cx.engine;
    let dev = &cx.devs.gpus[g];
    let start = r.start;
    let host = |p: PageNo| backing.bo.host_addr(backing.offset + (p - start));
    let mut i = 0u64;
    while i < n {
        let src = host(bs + i);
        let mut k = 1;
        while i + k < n && host(bs + i + k) == src + k as usize * PAGE_SIZE {
            k += 1;
        }
        dev.sdma.account_external(k as usize * PAGE_SIZE)?;
        let (settled, err) = eng.commit_in(bs + i, k, src, Fill::Copy);
        eng.forget_vram_copies(r, bs + i, settled);
        if let Some(errno) = err {
            return Err(Error::Sys { call: "UFFDIO_COPY", errno });
        }
        i += k;
    }
    Ok(n)
}
