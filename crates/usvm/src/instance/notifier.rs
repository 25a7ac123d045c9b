//! The application's own page-table changes (KFD's MMU notifier callbacks and their
//! deferred work): the userfaultfd reader queues them as [`PendingOp`]s, the next holder of
//! the instance lock applies them (section 6), and the restore worker remaps ranges whose
//! queues were evicted (XNACK off).

use super::{SvmInner, SvmState};
use crate::addr::Pages;
use crate::addr::each_page;
use crate::attr::{Location, SvmFlags};
use crate::events::UnmapTrigger;
use crate::gpu::GpuIdx;
use crate::history::{Cause, Move};
use crate::map;
use crate::migrate;
use crate::policy;
use crate::range::{GpuMask, PageNo, SvmRange};
use crate::sys::{PAGE_SHIFT, PAGE_SIZE};
use std::time::Duration;

/// A change of the application's own page tables, reported by the userfaultfd and applied
/// by the next holder of the instance lock (KFD's MMU notifier callbacks + deferred work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PendingOp {
    /// munmap of `[start, last]`.
    Unmap { start: PageNo, last: PageNo },
    /// MADV_DONTNEED of `[start, last]`: the data is gone, the pages read as zero.
    Remove { start: PageNo, last: PageNo },
    /// mremap moved `npages` from `from` to `to`.
    Remap { from: PageNo, to: PageNo, npages: u64 },
}

/// Messages to the instance's worker thread.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Work {
    /// A CPU fault on a page whose data is out of RAM, the lock having been busy.
    Fault(crate::sys::uffd::Fault),
    /// Apply the pending page-table changes now.
    Flush,
    /// The restore work (section 6.3), after RESTORE_DELAY.
    Restore,
    /// A GPU stream's read-ahead (`SvmInner::read_ahead`): `n` pages after page `after`,
    /// in the VMA holding `addr`, to the VRAM of GPU `to`, while the faulting GPU goes on.
    ReadAhead { after: PageNo, n: u64, addr: usize, to: crate::gpu::GpuIdx },
}

/// The restore worker re-validates evicted ranges this long after the eviction.
pub const RESTORE_DELAY: Duration = Duration::from_millis(1);

impl SvmInner {
    /// Applies the page-table changes the userfaultfd reported (section 6.1-6.4).
    pub(super) fn apply_pending(&self, st: &mut SvmState) {
        let ops = std::mem::take(&mut *self.pending.lock());
        if ops.is_empty() {
            return;
        }
        self.apply_ops(st, ops);
        // Lowered only once the changes are applied (a device access seeing it lowered
        // must find them done, not under way on another thread), unless more came since.
        let pending = self.pending.lock();
        if pending.is_empty() {
            self.devs.changes_pending.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Applies `ops` in order (see [`Self::apply_pending`]).
    pub(super) fn apply_ops(&self, st: &mut SvmState, ops: Vec<PendingOp>) {
        let mut ops = ops.into_iter();
        while let Some(op) = ops.next() {
            match op {
                PendingOp::Unmap { start, last } => {
                    self.cpu_unmapped(st, Pages::new(start, last), Cause::Munmap)
                }
                PendingOp::Remove { start, last } => self.cpu_removed(st, start, last),
                PendingOp::Remap { from, to, npages } => {
                    if !self.cpu_remapped(st, from, to, npages) {
                        // An event still waits to be read (EAGAIN, on the reader thread):
                        // keep this change and the later ones for the next lock holder,
                        // with the old data still in VRAM.
                        let mut pending = self.pending.lock();
                        let later = std::mem::take(&mut *pending);
                        pending.push(op);
                        pending.extend(ops.by_ref());
                        pending.extend(later);
                        self.devs.changes_pending.store(true, std::sync::atomic::Ordering::SeqCst);
                        drop(pending);
                        self.post(Work::Flush);
                        break;
                    }
                }
            }
        }
    }

    /// MADV_DONTNEED of `[start, last]`: the VRAM copies are gone; XNACK off (or
    /// ALWAYS_MAPPED), the GPUs' queues are evicted once and the restore worker remaps;
    /// XNACK on, the pages are unmapped from the GPUs.
    fn cpu_removed(&self, st: &mut SvmState, start: PageNo, last: PageNo) {
        let xnack = st.xnack;
        let keys: Vec<PageNo> = st.tree.overlapping(Pages::new(start, last)).map(|r| r.start).collect();
        for k in keys {
            let r = st.tree.get_mut(k).expect("range");
            self.drop_vram_recorded(r, (start, last), Cause::DontNeed);
            let mapped = r.mapped_gpus != GpuMask::EMPTY;
            if mapped && (!xnack || r.attrs.flags.contains(SvmFlags::GPU_ALWAYS_MAPPED)) {
                // XNACK off: evict the queues once; the restore worker remaps.
                r.invalid += 1;
                if st.evicted_ranges == 0 {
                    for g in GpuIdx::all(self.devs.gpus.len()) {
                        self.devs.evict_queues(g, crate::events::EvictTrigger::Svm);
                    }
                    self.post(Work::Restore);
                }
                st.evicted_ranges += 1;
            } else {
                map::unmap_from_gpus(&self.devs, r, Pages::new(start, last), UnmapTrigger::MmuNotify);
            }
        }
    }

    /// mremap moved `npages` from `from` to `to`: the pages whose data is in VRAM did not
    /// move with the mapping, so their data goes to the new place (a page the application
    /// has there already keeps its data), then the old place is forgotten. False (nothing
    /// forgotten) when a copy met EAGAIN: an event waits to be read.
    fn cpu_remapped(&self, st: &mut SvmState, from: PageNo, to: PageNo, npages: u64) -> bool {
        let last = from + npages - 1;
        let keys: Vec<PageNo> = st.tree.overlapping(Pages::new(from, last)).map(|r| r.start).collect();
        let mut copied = true;
        for k in keys {
            let r = st.tree.get_mut(k).expect("range");
            let Some(b) = r.vram.clone() else { continue };
            for p in each_page(from.max(r.start), last.min(r.last)).filter(|&p| r.page_in_vram(p)) {
                let src = b.bo.host_addr(b.offset + (p - r.start));
                let dst = to + (p - from);
                match self.engine.commit_in(dst, 1, src, migrate::Fill::Copy).1 {
                    None => {}
                    Some(libc::EAGAIN) => copied = false,
                    // Anything else would fail again on every retry (the worker would
                    // spin): say so and go on.
                    Some(errno) => tracing::error!(
                        page = format_args!("{:#x}", dst.addr()),
                        errno,
                        "mremap: the data of a VRAM page could not follow it"
                    ),
                }
                let _ = self.engine.uffd.wake(dst.addr(), PAGE_SIZE);
            }
        }
        if copied {
            {
                self.engine.out.lock().remap_applied(Pages::new(from, last));
            }
            // The VRAM data followed the mapping to its new place (in RAM).
            self.cpu_unmapped(st, Pages::new(from, last), Cause::Mremap);
        }
        copied
    }

    /// Forgets the VRAM copies of `[start, last]` of `r` and records it: the data is gone
    /// (munmap, MADV_DONTNEED: to nowhere) or followed the mapping to RAM (mremap).
    fn drop_vram_recorded(&self, r: &mut SvmRange, (start, last): (PageNo, PageNo), cause: Cause) {
        let from = r.actual_loc;
        let (s, l) = (start.max(r.start), last.min(r.last));
        let n = if r.vram.is_some() && s <= l {
            each_page(s, l).filter(|&p| r.page_in_vram(p)).count()
        } else {
            0
        };
        drop_vram(r, start, last);
        let to = if cause == Cause::Mremap { Location::Sysmem } else { Location::Undefined };
        let trigger = crate::events::MigrateTrigger::Prefetch;
        let m = Move {
            start: 0,
            npages: n,
            from,
            to,
            trigger,
            cause,
            at_ns: crate::events::clock_ns(),
            id: 0,
            linked: None,
        };
        let range = (r.start.addr(), (r.npages() << PAGE_SHIFT) as usize);
        self.record(m, s, range);
    }

    /// `[start, last]` is no longer mapped by the application: unmap it from the GPUs now
    /// (UNMAP_FROM_GPU, trigger 2), drop its VRAM copies and its range pieces.
    pub(super) fn cpu_unmapped(&self, st: &mut SvmState, pages: Pages, cause: Cause) {
        let Pages { first: start, last } = pages;
        let keys: Vec<PageNo> = st.tree.overlapping(pages).map(|r| r.start).collect();
        for k in keys {
            let r = st.tree.get_mut(k).expect("range");
            map::unmap_from_gpus(&self.devs, r, pages, UnmapTrigger::UnmapFromCpu);
            self.drop_vram_recorded(r, (start, last), cause.clone());
        }
        {
            let mut out = self.engine.out.lock();
            out.unmark(pages);
            out.unmap_applied(pages);
        }
        for gone in st.tree.remove_interval(pages) {
            if gone.accounted {
                st.reserved_bytes -= gone.npages() << PAGE_SHIFT;
            }
        }
    }

    /// The restore worker (section 6.3): remap every invalidated range, then resume the
    /// queues; when a range cannot be remapped, report `R` and try again later.
    pub(crate) fn restore_work(&self) {
        let mut st = self.lock_state();
        if st.evicted_ranges == 0 {
            return;
        }
        let snapshot = st.evicted_ranges;
        tracing::debug!(evicted_ranges = snapshot, "restore worker: revalidating evicted ranges");
        let xnack = st.xnack;
        let keys: Vec<PageNo> = st.tree.iter().filter(|r| r.invalid > 0).map(|r| r.start).collect();
        let mut ok = true;
        for k in keys {
            let r = st.tree.get_mut(k).expect("range");
            let gpus = policy::gpus_to_map(&r.attrs, self.gpu_of(r.actual_loc), r.mapped_to_gpu, xnack);
            match map::remap_range(&self.devs, r, gpus) {
                Ok(()) => r.invalid = 0,
                Err(_) => ok = false,
            }
        }
        if ok && st.evicted_ranges == snapshot {
            st.evicted_ranges = 0;
            for g in GpuIdx::all(self.devs.gpus.len()) {
                self.devs.restore_queues(g, false);
            }
        } else {
            for g in GpuIdx::all(self.devs.gpus.len()) {
                self.devs.restore_queues(g, true);
            }
            self.post(Work::Restore);
        }
    }

    /// The munmap notifier for `[addr, addr + len)` (`svm_range_unmap_from_cpu`), called
    /// before usvm unmaps a buffer of its own: clears the GPU mappings of the pages
    /// (UNMAP_FROM_GPU, trigger 2), their VRAM copies and their range pieces.
    pub(crate) fn notify_unmap(&self, addr: usize, len: usize) {
        let start = PageNo::of_addr(addr);
        let last = PageNo::of_addr(addr + len) - 1;
        let mut st = self.lock_state();
        self.cpu_unmapped(&mut st, Pages::new(start, last), Cause::Munmap);
    }
}

/// Forgets the VRAM copies of the pages `[start, last]` of `r` (their data is gone).
fn drop_vram(r: &mut SvmRange, start: PageNo, last: PageNo) {
    if r.vram.is_none() {
        return;
    }
    for p in each_page(start.max(r.start), last.min(r.last)) {
        r.in_vram.set(p - r.start, false);
    }
    if r.vram_pages() == 0 {
        r.actual_loc = Location::Sysmem;
        r.vram = None;
    }
}

#[cfg(test)]
mod tests {
    use crate::addr::PageNo;
    use crate::addr::Pages;
    use crate::attr::{Attr, Location, Residency};
    use crate::history::Cause;
    use crate::instance::PendingOp;
    use crate::sys::PAGE_SHIFT;

    fn svm() -> crate::Svm {
        crate::Svm::builder().gpus(1).vram_bytes(64 << 20).build().unwrap()
    }

    #[test]
    fn a_queued_remove_forgets_the_vram_copy_and_the_pages_read_zero() {
        let svm = svm();
        let g = svm.gpu_ids()[0];
        let buf = svm.alloc(2 << 20).unwrap();
        buf.fill(0, buf.len(), 7);
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
        let first = PageNo::of_addr(buf.addr());
        // As the reader queues it after reading a REMOVE event for the first 16 pages.
        svm.inner().engine.out.lock().on_remove(Pages::new(first, first + 15));
        svm.inner().push_pending(PendingOp::Remove { start: first, last: first + 15 });
        assert_eq!(svm.range_count(), 1, "applied by the next lock holder; the range stays");
        let res = svm.residency(buf.addr(), 17);
        assert!(res[..16].iter().all(|r| *r == Residency::Unpopulated), "{res:?}");
        assert_eq!(res[16], Residency::Vram(g));
        let mut b = [1u8; 4];
        buf.read_at(0, &mut b);
        assert_eq!(b, [0; 4], "dropped data reads zero");
        buf.read_at(16 << PAGE_SHIFT, &mut b);
        assert_eq!(b, [7; 4], "the rest is intact");
        let h = svm.history(buf.addr(), 16 << PAGE_SHIFT);
        assert!(h.iter().any(|m| m.cause == Cause::DontNeed && m.npages == 16), "{h:#?}");
    }

    #[test]
    fn a_queued_unmap_cuts_the_range_and_drops_its_vram() {
        let svm = svm();
        let g = svm.gpu_ids()[0];
        let buf = svm.alloc(2 << 20).unwrap();
        buf.fill(0, buf.len(), 3);
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
        let first = PageNo::of_addr(buf.addr());
        // The last 256 pages: what an munmap of the buffer's second half queues.
        let (s, l) = (first + 256, first + 511);
        svm.inner().engine.out.lock().on_unmap(Pages::new(s, l));
        svm.inner().push_pending(PendingOp::Unmap { start: s, last: l });
        let ranges = svm.ranges();
        assert_eq!(ranges.len(), 1);
        assert_eq!(
            (ranges[0].start, ranges[0].size),
            (buf.addr(), 1 << 20),
            "the range lost its second half"
        );
        assert_eq!(ranges[0].vram_pages, 256);
        let h = svm.history(buf.addr() + (1 << 20), 1 << 20);
        assert!(h.iter().any(|m| m.cause == Cause::Munmap && m.npages == 256), "{h:#?}");
        // Put the first half back before the buffer goes (its second half still mapped by
        // the process: only the instance forgot it).
        svm.set_attr(buf.addr(), 1 << 20, &[Attr::PrefetchLoc(Location::Sysmem)]).unwrap();
    }
}
