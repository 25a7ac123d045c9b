//! The engine's process-side resources of one instance: the userfaultfds, the staging
//! areas and the RAM pool, and the sets of pages that are out of RAM.

use super::*;
use crate::addr::each_page;

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
    pub(super) staging_out: usize,
    /// Not registered: fresh RAM pages for large batches are populated here.
    pub(super) staging_in: usize,
    /// Registered: populated RAM pages kept for reuse, `[0, pool_level)` full.
    pub(super) pool: usize,
    pub(super) pool_level: Mutex<u64>,
    /// Pages whose data is out of RAM, and what the application did to them meanwhile: the
    /// "out of RAM" protocol ([`super::out_of_ram::OutOfRam`]), under one lock.
    pub(crate) out: Mutex<super::out_of_ram::OutOfRam>,
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
            out: Mutex::new(Default::default()),
            inject_busy: AtomicU64::new(0),
        })
    }

    /// Frees the `n` pages at the start of `staging_out` (all populated): into the pool
    /// when there is room, else back to the kernel.
    pub(super) fn release_staging_out(&self, n: u64, all_populated: bool) -> Result<()> {
        let bytes = n as usize * PAGE_SIZE;
        let mut level = self.pool_level.lock();
        let aligned = !n.is_multiple_of(SMALL_BATCH_PAGES) || level.is_multiple_of(SMALL_BATCH_PAGES);
        if all_populated && aligned && *level + n <= POOL_PAGES {
            let dst = self.pool + *level as usize * PAGE_SIZE;
            // SAFETY: both are usvm's own areas registered with `own`; the pool's level
            // (locked) says which of its pages hold moved pages.
            let (done, err) = unsafe { self.own.move_pages(dst, self.staging_out, bytes, false) };
            *level += (done / PAGE_SIZE) as u64;
            if err.is_none() {
                return Ok(());
            }
        }
        // SAFETY: the staging area, whose pages are copies no longer needed.
        unsafe { sys::mmap::discard(self.staging_out, bytes) }
    }

    /// `n` populated RAM pages to copy into, which the caller moves into the application
    /// (leaving the area empty): the top of the pool when it holds enough (keeping it
    /// huge-page aligned), else fresh pages in `staging_in`.
    pub(super) fn fresh_pages(&self, n: u64) -> Result<usize> {
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
            if !out.committable(first + i) {
                // Dropped or unmapped by the application meanwhile: its data must not come back.
                out.unmark(Pages::one(first + i));
                i += 1;
                continue;
            }
            let mut k = 1;
            while i + k < n && out.committable(first + i + k) {
                k += 1;
            }
            let dst = (first + i).addr();
            let s = src + i as usize * PAGE_SIZE;
            let len = k as usize * PAGE_SIZE;
            let (bytes, err) = match fill {
                // SAFETY: `s` is a staging-in piece this call owns, `dst` application pages
                // registered with `uffd` and marked out of RAM; `commit_in`'s count says
                // which pages arrived.
                Fill::Move => match unsafe { self.uffd.move_pages(dst, s, len, false) } {
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
                out.unmark(Pages::new(first + i, first + i + m - 1));
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
    pub(super) fn forget_vram_copies(&self, r: &mut SvmRange, first: PageNo, n: u64) {
        let out = self.out.lock();
        for p in each_page(first, first + n - 1) {
            if !out.is_remapped(p) {
                r.in_vram.set(p - r.start, false);
            }
        }
    }

    /// Gives the RAM pool back to the kernel (before a fork: pages shared copy-on-write with
    /// a child must not be reused as fresh pages).
    pub fn drain_pool(&self) {
        let mut level = self.pool_level.lock();
        // SAFETY: the pool of fresh pages (usvm's own), emptied under its lock.
        let _ = unsafe { sys::mmap::discard(self.pool, *level as usize * PAGE_SIZE) };
        *level = 0;
    }

    /// Forgets that the pages `[start, last]` are out of RAM (their data is gone).
    pub fn forget_out(&self, pages: Pages) {
        self.out.lock().unmark(pages);
    }

    /// Resolves a CPU fault on `page` if its data is in RAM: the page was never populated
    /// (or the application dropped it). Every missing page of its 2 MiB block that is not
    /// out of RAM gets the zero page at once (one fault per block, not per page; the zero
    /// page costs no memory and a write copies it as usual), under the `out` lock so that
    /// no migration can start collecting those pages meanwhile. Returns false when the
    /// page's data is out of RAM.
    pub fn resolve_if_in_ram(&self, page: PageNo) -> Result<bool> {
        let mut out = self.out.lock();
        if out.is_out(page) {
            return Ok(false);
        }
        let block = page.align_down(SMALL_BATCH_PAGES);
        let has = sys::pagemap::has_memory(block.addr(), SMALL_BATCH_PAGES as usize)
            .unwrap_or_else(|_| vec![true; SMALL_BATCH_PAGES as usize]);
        let mut zeroed_faulting = false;
        for (s, l) in
            runs(block, block + SMALL_BATCH_PAGES - 1, |p| !has[(p - block) as usize] && !out.is_out(p))
        {
            // Pages of the block outside the registered mapping are refused: not ours.
            if self.uffd.zeropage(s.addr(), ((l - s + 1) as usize) * PAGE_SIZE).is_ok() {
                zeroed_faulting |= s <= page && page <= l;
                // Absent, so any zap is done: what the application writes there now is new.
                out.zero_filled(Pages::new(s, l));
            }
        }
        if !zeroed_faulting {
            match self.uffd.zeropage(page.addr(), PAGE_SIZE) {
                Ok(()) => {}
                // No watched mapping there any more (unmapped since the fault): the thread
                // faults again and the kernel decides (SIGSEGV when nothing is mapped).
                Err(e) if e.errno() == libc::ENOENT => {
                    self.uffd.wake(page.addr(), PAGE_SIZE)?;
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
            out.zero_filled(Pages::one(page));
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
        // SAFETY: the engine's own areas, dropped with it: no migration runs any more.
        unsafe {
            let _ = sys::mmap::unmap(self.staging_out, bytes);
            let _ = sys::mmap::unmap(self.staging_in, bytes);
            let _ = sys::mmap::unmap(self.pool, POOL_PAGES as usize * PAGE_SIZE);
        }
    }
}

/// Whether the application really has `page` in memory: an `EEXIST` is believed (and the
/// VRAM copy dropped for the application's newer data) only when this says so; otherwise
/// it is an error like any other and the data stays in VRAM.
fn app_has_page(page: PageNo) -> bool {
    sys::pagemap::has_memory(page.addr(), 1).is_ok_and(|v| v[0])
}
