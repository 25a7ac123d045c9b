//! One SVM instance (KFD's per-process `struct svm_range_list`, `svms`): its state, its
//! lock and the calls every part of it uses. The work is split by concept:
//!
//! - [`ioctl`]: SET_ATTR and GET_ATTR (`svm_range_set_attr` / `svm_range_get_attr`),
//!   checked completely, in the kernel's order, before anything changes;
//! - [`notifier`]: the application's own page-table changes (munmap, MADV_DONTNEED, mremap)
//!   as the MMU notifier and its deferred work handle them, and the restore worker;
//! - [`gpu_fault`]: GPU retry faults (`svm_range_restore_pages`) and fatal VM faults;
//! - [`moves`]: migrations of one range at a time, with the VRAM eviction they may need;
//! - [`fork`]: what happens around `fork`.
//!
//! Every call validates its input completely before it takes the state lock and changes
//! anything, in the kernel's order (kfd-svm-semantics.md section 1.7):
//!
//! ```text
//!  entry:  start/size aligned, non-zero, no overflow ........ EINVAL
//!          op is SET_ATTR or GET_ATTR ........................ EINVAL
//!  SET:    every attribute type, GPU id, PREFETCH != UNDEF ... EINVAL
//!          deferred work flushed
//!          interval covered by ordinary mappings ............. EFAULT
//!          no KFD buffer in the interval ..................... EADDRINUSE
//!          ranges added / split / updated (under the lock), then mapped (section 7)
//!  GET:    deferred work flushed
//!          interval covered by ordinary mappings ............. EFAULT
//!          no KFD buffer in the interval ..................... EADDRINUSE
//!          query types (no IN_PLACE / NO_ACCESS) ............. EINVAL
//!          aggregate; ACCESS of an unknown GPU ............... EINVAL (earlier entries written)
//! ```

mod fork;
mod gpu_fault;
mod ioctl;
mod moves;
mod notifier;

pub(crate) use fork::track_for_fork;
pub(crate) use ioctl::check_interval;
pub(crate) use notifier::{PendingOp, RESTORE_DELAY, Work};

use crate::addr::Pages;
use crate::attr::Residency;
use crate::attr::{GpuId, Location};
use crate::error::{Error, Result};
use crate::events::{EventHub, MigrateTrigger};
use crate::gpu::Devices;
use crate::gpu::GpuIdx;
use crate::history::Cause;
use crate::migrate::Engine;
use crate::policy;
use crate::range::tree::RangeTree;
use crate::range::{GpuMask, PageNo, RangeAttrs};
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE};
use parking_lot::Mutex;
use std::sync::Arc;

/// One emulated GPU as the attribute layer sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuInfo {
    pub(crate) id: GpuId,
    pub(crate) vram_bytes: u64,
}

/// State protected by the instance lock (`svms->lock`).
#[derive(Debug)]
pub(crate) struct SvmState {
    pub(crate) tree: RangeTree,
    pub(crate) xnack: bool,
    /// Number of live user queues (switching XNACK needs none).
    pub(crate) queues: usize,
    /// XNACK-off invalidations waiting for the restore worker (`evicted_ranges`).
    evicted_ranges: u32,
    /// Bytes of ranges reserved against the system-memory limit (XNACK off).
    pub(crate) reserved_bytes: u64,
    /// The instance is going away (its data went back to RAM): nothing may move to VRAM
    /// any more (a read-ahead still queued for the worker is dropped).
    pub(crate) closing: bool,
}

impl SvmState {
    /// Reserves every range against `limit` (`on`; ENOMEM and nothing changed when they do
    /// not fit) or releases every reservation (`!on`): the XNACK switch's accounting.
    pub(crate) fn set_accounting(&mut self, on: bool, limit: u64) -> Result<()> {
        if on {
            let total: u64 = self.tree.iter().map(|r| r.npages() << PAGE_SHIFT).sum();
            if total > limit {
                return Err(Error::NoMemory { bytes: total });
            }
            self.reserved_bytes = total;
        } else {
            self.reserved_bytes = 0;
        }
        for k in self.tree.iter().map(|r| r.start).collect::<Vec<_>>() {
            self.tree.get_mut(k).expect("range").accounted = on;
        }
        Ok(())
    }

    /// A state with no range.
    pub(crate) fn new(xnack: bool) -> Self {
        SvmState {
            tree: RangeTree::new(),
            xnack,
            queues: 0,
            evicted_ranges: 0,
            reserved_bytes: 0,
            closing: false,
        }
    }
}

/// The shared core of an [`crate::Svm`]: GPUs, ranges, events.
#[derive(Debug)]
pub(crate) struct SvmInner {
    pub(crate) gpus: Vec<GpuInfo>,
    pub(crate) supported: GpuMask,
    pub(crate) max_range_pages: u64,
    pub(crate) default_granularity: u8,
    pub(crate) state: Mutex<SvmState>,
    pub(crate) devs: Arc<Devices>,
    pub(crate) events: Arc<EventHub>,
    pub(crate) engine: Engine,
    /// The seed's migration on a PREFERRED_LOC change (on by default).
    pub(crate) migrate_on_preferred_loc: bool,
    /// Bytes of SVM ranges the instance may create under XNACK off (KFD's system-memory
    /// limit for userptr / SVM memory).
    pub(crate) system_memory_limit: u64,
    /// Page-table changes reported by the userfaultfd, not applied yet (a leaf lock).
    pub(crate) pending: Mutex<Vec<PendingOp>>,
    /// Held by the reader thread from reading an event until the change is queued.
    pub(crate) event_gate: Mutex<()>,
    /// The worker thread's inbox (set once the thread runs).
    pub(crate) work: std::sync::OnceLock<std::sync::mpsc::Sender<Work>>,
    /// Pages of KFD buffer objects (`kfd::Kfd` memory: AllocMemory, RegisterMemory): not
    /// SVM memory. SET_ATTR and GET_ATTR over them fail with EADDRINUSE, and a GPU fault
    /// there creates no range (a leaf lock).
    pub(crate) kfd_bos: Mutex<crate::migrate::pageset::PageSet>,
    /// Why data moved: every movement of pages with its cause (`history.rs`).
    pub(crate) history: crate::history::History,
    /// Whether moves are recorded (`SvmBuilder::history`).
    pub(crate) record_history: bool,
    /// The placement policy.
    pub(crate) policy: crate::policy::Policy,
    /// Its rules (`policy/`).
    pub(crate) rules: Box<dyn crate::policy::Placement>,
    /// What the rules record: recent moves and pins (its own lock, taken after `state`
    /// when both are held, so that a throttled fault can consult it without `state`).
    pub(crate) thrash: Mutex<crate::policy::Thrashing>,
}

impl SvmInner {
    /// Takes the instance lock, then applies the pending page-table changes, so that
    /// every holder sees them done (as SET_ATTR and GET_ATTR flush KFD's deferred list).
    pub(crate) fn lock_state(&self) -> parking_lot::MutexGuard<'_, SvmState> {
        let mut st = self.state.lock();
        // An event the reader has read is queued before it leaves the gate.
        drop(self.event_gate.lock());
        self.apply_pending(&mut st);
        st
    }

    /// The instance lock for the reader thread, to serve a CPU fault on `page` right there:
    /// only when that cannot wait for a device access, since a device access may itself be
    /// waiting for the reader (a fault on a never-populated page, under the page-table read
    /// lock). So `None` when the lock is busy, when a page-table change is pending (applying
    /// it may evict queues or unmap from the GPUs), and when the range holding `page` is
    /// mapped on a GPU (moving it back evicts the queues or unmaps it, which waits for the
    /// accesses in flight) while a device access is in flight; with none in flight, every
    /// GPU's queues are held (no access can start) until the returned hold is dropped. The
    /// caller hands the fault to the worker on `None`.
    pub(crate) fn try_lock_for_reader(
        &self,
        page: PageNo,
    ) -> Option<(parking_lot::MutexGuard<'_, SvmState>, Option<crate::gpu::QueueHold>)> {
        let st = self.state.try_lock()?;
        if !self.pending.lock().is_empty() {
            return None;
        }
        if st.tree.find(page).is_none_or(|r| r.mapped_gpus == GpuMask::EMPTY) {
            return Some((st, None));
        }
        // Mapped on a GPU: bringing it back invalidates, which waits for in-flight device
        // accesses. Served here only when none is in flight (and then none can start).
        let hold = self.devs.try_hold_all()?;
        Some((st, Some(hold)))
    }

    /// Sends work to the worker thread.
    pub(crate) fn post(&self, w: Work) {
        if let Some(tx) = self.work.get() {
            let _ = tx.send(w);
        }
    }

    /// Queues a page-table change the userfaultfd reported, for the next lock holder.
    pub(crate) fn push_pending(&self, op: PendingOp) {
        let mut pending = self.pending.lock();
        pending.push(op);
        self.devs.changes_pending.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The index of a GPU id, if it belongs to this instance.
    pub(crate) fn gpu_idx(&self, id: u32) -> Option<GpuIdx> {
        self.gpus.iter().position(|g| g.id.0 == id).map(GpuIdx::new)
    }

    /// The index of a GPU, or EINVAL.
    pub(crate) fn gpu(&self, g: GpuId) -> Result<GpuIdx> {
        self.gpu_idx(g.0).filter(|&i| self.supported.contains(i)).ok_or(Error::UnknownGpu(g.0))
    }

    /// The GPU index of a location, if it is one of this instance's GPUs.
    pub(crate) fn gpu_of(&self, l: Location) -> Option<GpuIdx> {
        l.gpu().and_then(|g| self.gpu_idx(g.0))
    }

    /// Attributes of a range created now (`svm_range_set_default_attributes`).
    pub(crate) fn new_range_attrs(&self, xnack: bool) -> RangeAttrs {
        let access = if xnack { self.supported } else { GpuMask::EMPTY };
        RangeAttrs::new_default(self.default_granularity, access)
    }

    /// A CPU fault on `page`, whose data is out of RAM (`svm_migrate_to_ram`): bring the
    /// granule around it back to RAM; the move wakes the faulting threads. Called with the
    /// state lock held.
    pub(crate) fn cpu_fault(&self, st: &mut SvmState, page: PageNo, write: bool) -> Result<()> {
        let addr = page.addr();
        if !st.tree.find(page).is_some_and(|r| r.page_in_vram(page)) {
            // Not in VRAM: resolved by someone else meanwhile (the page is present), or
            // never ours to bring back. With the instance lock held no migration is under
            // way, and with no page-table change left to apply, a page still marked out of
            // RAM holds no data anywhere: a stale mark (it would make the thread fault
            // forever). Drop it and resolve the page as a first touch.
            if self.pending.lock().is_empty() {
                self.engine.forget_out(Pages::one(page));
            }
            if !self.engine.resolve_if_in_ram(page)? {
                self.engine.uffd.wake(addr, PAGE_SIZE)?;
            }
            return Ok(());
        }
        let r = st.tree.find(page).expect("checked above");
        let (first, last) = policy::granule_extent(page, r.attrs.granularity, r.start, r.last);
        // The placement rules may grow the granule (density prefetch), within the range and
        // the faulting mapping.
        // Looked up once, when the rules first ask (the kernel's never do).
        let vma_limit = std::cell::OnceCell::new();
        let limit = || {
            *vma_limit.get_or_init(|| {
                let vma = sys::vma::lookup(addr, false).ok().flatten();
                vma.and_then(|v| r.pages().intersect(Pages::of_bytes(v.start, v.end)))
                    .unwrap_or(Pages::one(page))
            })
        };
        let resident = |p: PageNo| {
            let holder = if r.pages().contains(p) { Some(r) } else { st.tree.find(p) };
            holder.is_some_and(|x| !x.page_in_vram(p))
        };
        let f =
            policy::FaultView { page, granule: Pages::new(first, last), limit: &limit, resident: &resident };
        let (key, pages) = (r.start, self.rules.fault_extent(&f));
        let ahead = self.rules.read_ahead(&f, pages);
        // The migration wakes the threads waiting in the granule once it is done.
        self.move_to_ram(st, key, pages, MigrateTrigger::PagefaultCpu, Cause::CpuFault { addr, write })?;
        if ahead > 0 {
            self.read_ahead(st, (pages.last, ahead), addr, None);
        }
        Ok(())
    }

    /// Moves up to `n` pages after page `after` that live in the following ranges of the
    /// VMA holding `addr` to RAM (`to` = `None`) or to the VRAM of GPU `to`, ahead of a
    /// stream's faults (the placement rules asked for it): what is already there stays, a
    /// failure just ends the read-ahead.
    pub(crate) fn read_ahead(
        &self,
        st: &mut SvmState,
        (after, n): (PageNo, u64),
        addr: usize,
        to: Option<GpuIdx>,
    ) {
        if st.closing {
            return;
        }
        let Some(v) = sys::vma::lookup(addr, false).ok().flatten() else { return };
        let Some(want) = Pages::starting_at(after + 1, n).intersect(Pages::of_bytes(v.start, v.end)) else {
            return;
        };
        let keys: Vec<(PageNo, Pages)> =
            st.tree.overlapping(want).filter_map(|r| Some((r.start, r.pages().intersect(want)?))).collect();
        let cause = Cause::Policy { rule: "stream-ahead" };
        for (key, pages) in keys {
            let moved = match to {
                None => self.move_to_ram(st, key, pages, MigrateTrigger::Prefetch, cause.clone()),
                Some(g) => self.move_to_vram(st, key, pages, g, (MigrateTrigger::Prefetch, cause.clone())),
            };
            if moved.is_err() {
                return;
            }
        }
    }

    /// Where each of `n` pages from `page` lives.
    pub(crate) fn residency(&self, page: PageNo, n: usize) -> Vec<Residency> {
        let st = self.lock_state();
        let addr = page.addr();
        let mut has = sys::pagemap::has_memory(addr, n).unwrap_or_else(|_| vec![false; n]);
        // A page of a file or shared mapping that this process has not mapped yet can hold
        // data all the same, in the page cache: mincore sees it (for private anonymous
        // memory it says nothing pagemap did not).
        if has.contains(&false) {
            for (h, cached) in has.iter_mut().zip(sys::pagemap::in_core(addr, n)) {
                *h |= cached;
            }
        }
        (0..n as u64)
            .map(|i| {
                let p = page + i;
                match st.tree.find(p) {
                    Some(r) if r.page_in_vram(p) => {
                        Residency::Vram(r.actual_loc.gpu().expect("VRAM pages have a GPU"))
                    }
                    _ if has[i as usize] => Residency::Sysmem,
                    _ => Residency::Unpopulated,
                }
            })
            .collect()
    }

    /// Moves every page of the instance back to RAM (the instance is going away).
    pub(crate) fn evacuate(&self) {
        let mut st = self.lock_state();
        st.closing = true;
        self.evacuate_locked(&mut st, Cause::InstanceDrop);
    }

    pub(super) fn evacuate_locked(&self, st: &mut SvmState, cause: Cause) {
        let keys: Vec<(PageNo, PageNo)> =
            st.tree.iter().filter(|r| r.vram_pages() > 0).map(|r| (r.start, r.last)).collect();
        for (s, l) in keys {
            let _ = self.move_to_ram(st, s, Pages::new(s, l), MigrateTrigger::Prefetch, cause.clone());
        }
    }
}
