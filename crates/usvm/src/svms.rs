//! The per-instance SVM state (KFD's `struct svm_range_list`, `svms`) and the ioctl paths
//! that work on it: `svm_range_set_attr`, `svm_range_get_attr`, the munmap notifier and
//! its deferred work, and GPU retry faults (`svm_range_restore_pages`).
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
//!          ranges added / split / updated (under the lock), then mapped (section 7)
//!  GET:    deferred work flushed
//!          interval covered by ordinary mappings ............. EFAULT
//!          query types (no IN_PLACE / NO_ACCESS) ............. EINVAL
//!          aggregate; ACCESS of an unknown GPU ............... EINVAL (earlier entries written)
//! ```

use crate::attr::{Attr, GpuId, Location, SvmFlags};
use crate::error::{Error, Result};
use crate::events::{Counter, EventHub, EventKind, MigrateTrigger, UnmapTrigger};
use crate::gpu::{Devices, GpuFaultHandler};
use crate::map;
use crate::migrate::{self, Engine};
use crate::policy::{self, RestoreLocation};
use crate::range::tree::{Aggregate, RangeTree};
use crate::range::{AttrOp, GpuMask, PageNo, RangeAttrs, SvmRange};
use crate::svm::Residency;
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE, vma};
use crate::uapi::{self, RawAttr};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// GPU faults on a range validated less than this long ago are ignored: the access retries
/// (`AMDGPU_SVM_RANGE_RETRY_FAULT_PENDING`, 2 ms).
pub const RETRY_FAULT_PENDING: Duration = Duration::from_millis(2);

/// One emulated GPU as the attribute layer sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuInfo {
    pub(crate) id: GpuId,
    pub(crate) vram_bytes: u64,
}

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
}

/// The restore worker re-validates evicted ranges this long after the eviction.
pub const RESTORE_DELAY: Duration = Duration::from_millis(1);

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
        SvmState { tree: RangeTree::new(), xnack, queues: 0, evicted_ranges: 0, reserved_bytes: 0 }
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

    /// Applies the page-table changes the userfaultfd reported (section 6.1-6.4).
    fn apply_pending(&self, st: &mut SvmState) {
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
    fn apply_ops(&self, st: &mut SvmState, ops: Vec<PendingOp>) {
        let mut ops = ops.into_iter();
        while let Some(op) = ops.next() {
            match op {
                PendingOp::Unmap { start, last } => self.cpu_unmapped(st, start, last),
                PendingOp::Remove { start, last } => {
                    let xnack = st.xnack;
                    let keys: Vec<PageNo> = st.tree.overlapping(start, last).map(|r| r.start).collect();
                    for k in keys {
                        let r = st.tree.get_mut(k).expect("range");
                        drop_vram(r, start, last);
                        let mapped = r.mapped_gpus != GpuMask::EMPTY;
                        if mapped && (!xnack || r.attrs.flags.contains(SvmFlags::GPU_ALWAYS_MAPPED)) {
                            // XNACK off: evict the queues once; the restore worker remaps.
                            r.invalid += 1;
                            if st.evicted_ranges == 0 {
                                for g in 0..self.devs.gpus.len() {
                                    self.devs.evict_queues(g, crate::events::EvictTrigger::Svm);
                                }
                                self.post(Work::Restore);
                            }
                            st.evicted_ranges += 1;
                        } else {
                            map::unmap_from_gpus(&self.devs, r, start, last, UnmapTrigger::MmuNotify);
                        }
                    }
                }
                PendingOp::Remap { from, to, npages } => {
                    // The pages whose data is in VRAM did not move with the mapping: give
                    // their data to the new place (a page the application has there already
                    // keeps its data), then forget the old one.
                    let last = from + npages - 1;
                    let keys: Vec<PageNo> = st.tree.overlapping(from, last).map(|r| r.start).collect();
                    let mut copied = true;
                    for k in keys {
                        let r = st.tree.get_mut(k).expect("range");
                        let Some(b) = r.vram.clone() else { continue };
                        for p in from.max(r.start)..=last.min(r.last) {
                            if r.page_in_vram(p) {
                                let src = b.bo.host_addr(b.offset + (p - r.start));
                                let dst = to + (p - from);
                                let (_, err) = self.engine.commit_in(dst, 1, src, migrate::Fill::Copy);
                                match err {
                                    None => {}
                                    Some(libc::EAGAIN) => copied = false,
                                    // Anything else would fail again on every retry (the
                                    // worker would spin): say so and go on.
                                    Some(errno) => tracing::error!(
                                        page = format_args!("{:#x}", dst << PAGE_SHIFT),
                                        errno,
                                        "mremap: the data of a VRAM page could not follow it"
                                    ),
                                }
                                let _ = self.engine.uffd.wake((dst << PAGE_SHIFT) as usize, PAGE_SIZE);
                            }
                        }
                    }
                    if !copied {
                        // An event still waits to be read (EAGAIN, on the reader thread): keep
                        // this change and the later ones for the next lock holder, with the
                        // old data still in VRAM.
                        let mut pending = self.pending.lock();
                        let later = std::mem::take(&mut *pending);
                        pending.push(PendingOp::Remap { from, to, npages });
                        pending.extend(ops.by_ref());
                        pending.extend(later);
                        self.devs.changes_pending.store(true, std::sync::atomic::Ordering::SeqCst);
                        drop(pending);
                        self.post(Work::Flush);
                        break;
                    }
                    {
                        let _out = self.engine.out.lock();
                        self.engine.remapped.lock().remove(from, last);
                    }
                    self.cpu_unmapped(st, from, last);
                }
            }
        }
    }

    /// `[start, last]` is no longer mapped by the application: unmap it from the GPUs now
    /// (UNMAP_FROM_GPU, trigger 2), drop its VRAM copies and its range pieces.
    fn cpu_unmapped(&self, st: &mut SvmState, start: PageNo, last: PageNo) {
        let keys: Vec<PageNo> = st.tree.overlapping(start, last).map(|r| r.start).collect();
        for k in keys {
            let r = st.tree.get_mut(k).expect("range");
            map::unmap_from_gpus(&self.devs, r, start, last, UnmapTrigger::UnmapFromCpu);
            drop_vram(r, start, last);
        }
        self.engine.forget_out(start, last);
        {
            let _out = self.engine.out.lock();
            self.engine.gone.lock().remove(start, last);
        }
        for gone in st.tree.remove_interval(start, last) {
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
            for g in 0..self.devs.gpus.len() {
                self.devs.restore_queues(g, false);
            }
        } else {
            for g in 0..self.devs.gpus.len() {
                self.devs.restore_queues(g, true);
            }
            self.post(Work::Restore);
        }
    }

    /// The index of a GPU id, if it belongs to this instance.
    pub(crate) fn gpu_idx(&self, id: u32) -> Option<usize> {
        self.gpus.iter().position(|g| g.id.0 == id)
    }

    /// The index of a GPU, or EINVAL.
    pub(crate) fn gpu(&self, g: GpuId) -> Result<usize> {
        self.gpu_idx(g.0).filter(|&i| self.supported.contains(i)).ok_or(Error::UnknownGpu(g.0))
    }

    /// `svm_range_check_attr`: every attribute valid, GPU ids resolved to indices.
    fn check_attrs(&self, attrs: &[Attr]) -> Result<Vec<AttrOp>> {
        let loc = |l: Location| -> Result<Location> {
            match l {
                Location::Gpu(g) => self.gpu(g).map(|_| l),
                _ => Ok(l),
            }
        };
        attrs
            .iter()
            .map(|a| {
                Ok(match *a {
                    Attr::PreferredLoc(l) => AttrOp::Preferred(loc(l)?),
                    Attr::PrefetchLoc(Location::Undefined) => return Err(Error::UndefinedPrefetch),
                    Attr::PrefetchLoc(l) => AttrOp::Prefetch(loc(l)?),
                    Attr::Access(g) => AttrOp::Access(self.gpu(g)?),
                    Attr::AccessInPlace(g) => AttrOp::AccessInPlace(self.gpu(g)?),
                    Attr::NoAccess(g) => AttrOp::NoAccess(self.gpu(g)?),
                    Attr::SetFlags(f) => AttrOp::SetFlags(f),
                    Attr::ClrFlags(f) => AttrOp::ClrFlags(f),
                    Attr::Granularity(v) => AttrOp::Granularity(v),
                })
            })
            .collect()
    }

    /// Attributes of a range created now (`svm_range_set_default_attributes`).
    pub(crate) fn new_range_attrs(&self, xnack: bool) -> RangeAttrs {
        let access = if xnack { self.supported } else { GpuMask::EMPTY };
        RangeAttrs::new_default(self.default_granularity, access)
    }

    /// `svm_range_is_valid`'s second half: no page of `[start, last]` belongs to a KFD
    /// buffer object (EADDRINUSE).
    fn check_not_kfd(&self, start: PageNo, last: PageNo) -> Result<()> {
        match self.kfd_bos.lock().first_in(start, last) {
            Some(p) => Err(Error::AddressInUse { addr: p << PAGE_SHIFT }),
            None => Ok(()),
        }
    }

    /// `svm_range_set_attr` after the entry checks.
    pub(crate) fn set_attr(&self, start: PageNo, last: PageNo, attrs: &[Attr]) -> Result<()> {
        let ops = self.check_attrs(attrs)?;
        let mut st = self.lock_state();
        check_mapped(start, last)?;
        self.check_not_kfd(start, last)?;
        let xnack = st.xnack;
        // XNACK off: the new ranges reserve their size against the system-memory limit;
        // beyond it the whole call fails with ENOMEM and changes nothing (section 1.7).
        let gap_pages = st.tree.gap_pages(start, last);
        let new_bytes = if xnack { 0 } else { gap_pages << PAGE_SHIFT };
        if st.reserved_bytes + new_bytes > self.system_memory_limit {
            return Err(Error::NoMemory { bytes: new_bytes });
        }
        // Anonymous memory of every range is watched from now on: the application's munmap,
        // mremap and MADV_DONTNEED of it reach usvm as the MMU notifier's do. Done before
        // anything changes: memory another instance watches is refused (EADDRINUSE).
        // Only the parts no range of this instance watches yet: a refused call unregisters
        // what it registered, and must not unregister what the instance watched before.
        let mut unwatched: Vec<(PageNo, PageNo)> = Vec::new();
        let mut next = start;
        for r in st.tree.overlapping(start, last).filter(|r| r.registered) {
            if r.start > next {
                unwatched.push((next, r.start - 1));
            }
            next = r.last + 1;
        }
        if next <= last {
            unwatched.push((next, last));
        }
        for (i, &(s, l)) in unwatched.iter().enumerate() {
            if let Err(e) = migrate::register_interval(self, s, l) {
                for &(s, l) in &unwatched[..i] {
                    migrate::unregister_interval(self, s, l);
                }
                return Err(e);
            }
        }
        let defaults = self.new_range_attrs(xnack);
        let out = st.tree.add(start, last, &ops, &defaults, self.max_range_pages, !xnack);
        st.reserved_bytes += new_bytes;
        // The updated ranges lie inside the interval just registered.
        for s in &out.updated {
            if let Some(r) = st.tree.get_mut(*s) {
                r.registered = true;
            }
        }
        let update_mapping = policy::ops_update_mapping(&ops, xnack, !out.remap.is_empty());
        let asks_prefetch = ops.iter().any(|o| matches!(o, AttrOp::Prefetch(_)));
        // Per range, the last error wins and does not stop the others (section 1.7).
        let mut result = Ok(());
        for (&s, &old_pref) in out.updated.iter().zip(&out.old_preferred) {
            // Step 9a: the migration the range's (sticky) PREFETCH_LOC asks for, or the
            // seed's migration on a PREFERRED_LOC change.
            let migrated = match self.trigger_migration(&mut st, s, old_pref, asks_prefetch) {
                Ok(m) => m,
                Err(e) => {
                    // The kernel leaves a range whose migration failed unmapped by this call.
                    result = Err(e);
                    continue;
                }
            };
            let Some(r) = st.tree.get_mut(s) else { continue };
            let always = r.attrs.flags.contains(SvmFlags::GPU_ALWAYS_MAPPED);
            if migrated && (!xnack || always) && r.mapped_to_gpu {
                continue; // the migration's restore work remapped it
            }
            if !migrated && !update_mapping {
                continue;
            }
            if let Err(e) = self.map_range(&mut st, s, xnack) {
                result = Err(e);
            }
        }
        // Step 10: pieces split off at a boundary that is not granule aligned.
        for s in &out.remap {
            if let Err(e) = self.map_range(&mut st, *s, xnack) {
                result = Err(e);
            }
        }
        result
    }

    /// `svm_range_trigger_migration` for the range starting at `s`, plus the seed's rule:
    /// a PREFERRED_LOC change from system (or undefined) to a GPU migrates the range to
    /// that GPU (downgraded to system memory, as a prefetch is, when a GPU mapping the range
    /// is outside the target's hive), from a GPU to system migrates it back (unless the call
    /// prefetches, or the instance was built with `migrate_on_preferred_loc(false)`). Returns whether a
    /// migration ran; errors going to system memory are returned, failures to VRAM are not.
    fn trigger_migration(
        &self,
        st: &mut SvmState,
        s: PageNo,
        old_pref: Location,
        asks_prefetch: bool,
    ) -> Result<bool> {
        let xnack = st.xnack;
        let Some(r) = st.tree.get_mut(s) else { return Ok(false) };
        let (first, last) = (r.start, r.last);
        let best = match r.attrs.prefetch_loc {
            Location::Gpu(g) => {
                let target = self.gpu_idx(g.0).expect("checked GPU");
                policy::best_prefetch_location(&r.attrs, target, xnack, |a, b| self.devs.same_hive(a, b))
            }
            other => other,
        };
        let new_pref = r.attrs.preferred_loc;
        let seed = if self.migrate_on_preferred_loc && !asks_prefetch && new_pref != old_pref {
            match (old_pref, new_pref) {
                // Like a prefetch, never to a GPU that another mapping GPU cannot reach.
                (Location::Sysmem | Location::Undefined, Location::Gpu(g)) => {
                    let target = self.gpu_idx(g.0).expect("checked GPU");
                    let mut a = r.attrs;
                    a.prefetch_loc = new_pref;
                    Some(policy::best_prefetch_location(&a, target, xnack, |x, y| self.devs.same_hive(x, y)))
                }
                (Location::Gpu(_), Location::Sysmem) => Some(Location::Sysmem),
                _ => None,
            }
        } else {
            None
        };
        let actual = r.actual_loc;
        let target = match (best, seed) {
            (Location::Undefined, None) => return Ok(false),
            (Location::Undefined, Some(t)) => t,
            (b, _) => b,
        };
        match target {
            Location::Sysmem if actual == Location::Sysmem => Ok(false),
            Location::Sysmem => {
                migrate::to_ram(self, st, s, first, last, MigrateTrigger::Prefetch).map(|_| true)
            }
            Location::Gpu(g) => {
                let idx = self.gpu_idx(g.0).expect("checked GPU");
                // A failed migration to VRAM leaves the data in RAM, silently (section 4.2),
                // and does not count as migrated: the mapping step then runs as without it
                // (taken for done, it skipped the remap of a GPU_RO change, and under XNACK
                // on mapped every ACCESS GPU).
                Ok(migrate::to_vram(self, st, s, first, last, idx, MigrateTrigger::Prefetch).is_ok())
            }
            Location::Undefined => Ok(false),
        }
    }

    /// Validates and maps the whole range starting at `s` on its GPU set (section 7.1).
    fn map_range(&self, st: &mut SvmState, s: PageNo, xnack: bool) -> Result<()> {
        let Some(r) = st.tree.get_mut(s) else {
            return Ok(());
        };
        let actual = r.actual_loc.gpu().and_then(|g| self.gpus.iter().position(|x| x.id == g));
        let gpus = policy::gpus_to_map(&r.attrs, actual, r.mapped_to_gpu, xnack);
        let (first, last) = (r.start, r.last);
        map::validate_and_map(&self.devs, r, gpus, first, last)
    }

    /// `svm_range_get_attr` after the entry checks.
    pub(crate) fn get_attr(&self, start: PageNo, last: PageNo, attrs: &mut [RawAttr]) -> Result<()> {
        let st = self.lock_state();
        check_mapped(start, last)?;
        self.check_not_kfd(start, last)?;
        for a in attrs.iter() {
            match a.ty {
                uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC
                | uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC
                | uapi::KFD_IOCTL_SVM_ATTR_ACCESS
                | uapi::KFD_IOCTL_SVM_ATTR_SET_FLAGS
                | uapi::KFD_IOCTL_SVM_ATTR_CLR_FLAGS
                | uapi::KFD_IOCTL_SVM_ATTR_GRANULARITY => {}
                uapi::KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE | uapi::KFD_IOCTL_SVM_ATTR_NO_ACCESS => {
                    return Err(Error::BadQueryType(a.ty));
                }
                ty => return Err(Error::UnknownAttrType(ty)),
            }
        }
        let agg = st.tree.aggregate(start, last, self.supported).unwrap_or_else(|| {
            // Nothing overlaps: the attributes a new range would get.
            let d = self.new_range_attrs(st.xnack);
            Aggregate {
                preferred_loc: d.preferred_loc,
                prefetch_loc: d.prefetch_loc,
                flags_and: d.flags,
                flags_or: d.flags,
                granularity: d.granularity,
                access: d.access,
                access_in_place: GpuMask::EMPTY,
            }
        });
        drop(st);
        for a in attrs.iter_mut() {
            match a.ty {
                uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC => a.value = agg.preferred_loc.to_raw(),
                uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC => a.value = agg.prefetch_loc.to_raw(),
                uapi::KFD_IOCTL_SVM_ATTR_ACCESS => {
                    let idx = self.gpu_idx(a.value).ok_or(Error::UnknownGpu(a.value))?;
                    a.ty = if agg.access.contains(idx) {
                        uapi::KFD_IOCTL_SVM_ATTR_ACCESS
                    } else if agg.access_in_place.contains(idx) {
                        uapi::KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE
                    } else {
                        uapi::KFD_IOCTL_SVM_ATTR_NO_ACCESS
                    };
                }
                uapi::KFD_IOCTL_SVM_ATTR_SET_FLAGS => a.value = agg.flags_and.bits(),
                uapi::KFD_IOCTL_SVM_ATTR_CLR_FLAGS => a.value = !agg.flags_or.bits(),
                uapi::KFD_IOCTL_SVM_ATTR_GRANULARITY => a.value = u32::from(agg.granularity),
                _ => unreachable!("query types were checked"),
            }
        }
        Ok(())
    }

    /// The munmap notifier for `[addr, addr + len)` (`svm_range_unmap_from_cpu`), called
    /// before usvm unmaps a buffer of its own: clears the GPU mappings of the pages
    /// (UNMAP_FROM_GPU, trigger 2), their VRAM copies and their range pieces.
    pub(crate) fn notify_unmap(&self, addr: usize, len: usize) {
        let start = (addr >> PAGE_SHIFT) as PageNo;
        let last = ((addr + len) >> PAGE_SHIFT) as PageNo - 1;
        let mut st = self.lock_state();
        self.cpu_unmapped(&mut st, start, last);
    }

    /// A fatal GPU VM fault: VMFAULT event and EFAULT.
    fn fatal_fault(&self, gpu: usize, addr: usize, write: bool) -> Error {
        let id = self.gpus[gpu].id;
        tracing::warn!(gpu = %id, addr = format_args!("{addr:#x}"), write, "fatal GPU VM fault");
        self.events.emit(|| EventKind::VmFault { gpu: id, task: sys::process_name() });
        Error::GpuVmFault { gpu: id.0, addr: addr as u64, write }
    }

    /// Creates a range for a GPU fault on an address no range covers
    /// (`svm_range_create_unregistered_range`): the default granule around the page,
    /// inside its mapping, clipped by the neighbouring ranges. The initial heap and stack
    /// get PREFERRED_LOC = system memory. `None` when no mapping holds the page.
    fn create_unregistered(&self, st: &mut SvmState, page: PageNo) -> Option<PageNo> {
        let v = vma::lookup((page << PAGE_SHIFT) as usize, false).ok().flatten()?;
        let vs = (v.start >> PAGE_SHIFT) as PageNo;
        let vl = (v.end >> PAGE_SHIFT) as PageNo - 1;
        let (mut s, mut l) = policy::granule_extent(page, self.default_granularity, vs, vl);
        if let Some(prev) = st.tree.prev(page) {
            s = s.max(prev.last + 1);
        }
        if let Some(next) = st.tree.next(page) {
            l = l.min(next.start - 1);
        }
        // A KFD buffer in the window: a fault inside it fails, one beside it gets a range of
        // the faulting page alone (section 5.2).
        let bos = self.kfd_bos.lock();
        if bos.contains(page) {
            return None;
        }
        if bos.first_in(s, l).is_some() {
            (s, l) = (page, page);
        }
        drop(bos);
        let mut attrs = self.new_range_attrs(st.xnack);
        if matches!(v.kind, vma::VmaKind::Heap | vma::VmaKind::Stack) {
            attrs.preferred_loc = Location::Sysmem;
        }
        let mut r = SvmRange::new(s, l, attrs);
        // Watched from now on, as a SET_ATTR's range is: the application's munmap of it must
        // reach usvm even if its data never moves (an unwatched range outlived a munmap of
        // part of it, and a later fault's walk met the hole: the access failed). Memory
        // another instance watches stays unwatched here (that instance sees its changes).
        r.registered = migrate::register_interval(self, s, l).is_ok();
        st.tree.insert(r);
        Some(s)
    }

    /// `svm_range_restore_pages`: a GPU retry fault under XNACK on (section 5).
    fn restore_pages(&self, gpu: usize, addr: usize, write: bool) -> Result<()> {
        let entry_ns = sys::boottime_ns();
        let page = (addr >> PAGE_SHIFT) as PageNo;
        let mut st = self.lock_state();
        let key = match st.tree.find(page).map(|r| r.start) {
            Some(k) => k,
            None => match self.create_unregistered(&mut st, page) {
                Some(k) => k,
                None => {
                    // A failed range creation counts too (section 5.4 step 6).
                    self.events.count(gpu, Counter::Faults, 1);
                    return Err(self.fatal_fault(gpu, addr, write));
                }
            },
        };
        // From here on every outcome counts as a processed fault (section 5.4 step 6).
        self.events.count(gpu, Counter::Faults, 1);
        let r = st.tree.get_mut(key).expect("range just found");
        if r.validate_timestamp.is_some_and(|t| t.elapsed() < RETRY_FAULT_PENDING) {
            return Ok(()); // a duplicate of a fault just handled: let the access retry
        }
        let Ok(Some(v)) = vma::lookup(addr, false) else {
            return Ok(()); // racing munmap: nothing to map, the access will fault again
        };
        if !v.read || (write && !v.write) {
            return Err(self.fatal_fault(gpu, addr, write)); // EPERM in the kernel
        }
        if write && r.attrs.flags.contains(SvmFlags::GPU_RO) {
            // The range is mapped read-only on every GPU: a store is a permission fault,
            // which mapping again cannot resolve (retrying until FAULT_RETRY_TIMEOUT made
            // every such store take 2 s).
            return Err(self.fatal_fault(gpu, addr, write));
        }
        let preferred = match r.attrs.preferred_loc {
            Location::Undefined => None,
            Location::Sysmem => Some(None),
            Location::Gpu(g) => self.gpu_idx(g.0).map(Some),
        };
        let actual = self.gpu_of(r.actual_loc);
        let best =
            policy::best_restore_location(&r.attrs, preferred, actual, gpu, |a, b| self.devs.same_hive(a, b));
        if best == RestoreLocation::NoAccess {
            return Err(self.fatal_fault(gpu, addr, write)); // EACCES in the kernel
        }
        let id = self.gpus[gpu].id;
        if self.events.listening() {
            let ev = crate::events::Event {
                ns: entry_ns,
                pid: self.events.pid(),
                kind: EventKind::PageFaultStart { addr: page, gpu: id, write },
            };
            self.events.emit_event(ev);
        }
        let (first, last) = policy::granule_extent(page, r.attrs.granularity, r.start, r.last);
        let actual = r.actual_loc;
        // Migrate the granule where it is best, or map the data in place (section 5.4).
        let mut migrated = false;
        let mut result = Ok(());
        if actual != Location::Sysmem || best != RestoreLocation::Sysmem {
            let r2 = match best {
                RestoreLocation::Gpu(b) => {
                    match migrate::to_vram(self, &mut st, key, first, last, b, MigrateTrigger::PagefaultGpu) {
                        Ok(_) => Ok(()),
                        // On another GPU and stuck there: bring the granule to RAM instead.
                        Err(_) if self.gpu_of(actual).is_some_and(|a| a != b) => {
                            migrate::to_ram(self, &mut st, key, first, last, MigrateTrigger::PagefaultGpu)
                                .map(|_| ())
                        }
                        Err(_) => Ok(()), // map in place
                    }
                }
                _ => {
                    migrate::to_ram(self, &mut st, key, first, last, MigrateTrigger::PagefaultGpu).map(|_| ())
                }
            };
            match r2 {
                Ok(()) => migrated = true,
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() {
            let mut one = GpuMask::EMPTY;
            one.insert(gpu);
            let r = st.tree.get_mut(key).expect("range");
            result = map::validate_and_map(&self.devs, r, one, first, last);
        }
        self.events.emit(|| EventKind::PageFaultEnd { addr: page, gpu: id, migrated });
        match result {
            // The address space changed under the fault: the GPU retries (section 5.4).
            Err(e) if e.errno() == libc::EAGAIN => Ok(()),
            r => r,
        }
    }

    /// The GPU index of a location, if it is one of this instance's GPUs.
    pub(crate) fn gpu_of(&self, l: Location) -> Option<usize> {
        l.gpu().and_then(|g| self.gpu_idx(g.0))
    }

    /// A CPU fault on `page`, whose data is out of RAM (`svm_migrate_to_ram`): bring the
    /// granule around it back to RAM; the move wakes the faulting threads. Called with the
    /// state lock held.
    pub(crate) fn cpu_fault(&self, st: &mut SvmState, page: PageNo) -> Result<()> {
        let addr = (page << PAGE_SHIFT) as usize;
        if !st.tree.find(page).is_some_and(|r| r.page_in_vram(page)) {
            // Not in VRAM: resolved by someone else meanwhile (the page is present), or
            // never ours to bring back. With the instance lock held no migration is under
            // way, and with no page-table change left to apply, a page still marked out of
            // RAM holds no data anywhere: a stale mark (it would make the thread fault
            // forever). Drop it and resolve the page as a first touch.
            if self.pending.lock().is_empty() {
                self.engine.forget_out(page, page);
            }
            if !self.engine.resolve_if_in_ram(page)? {
                self.engine.uffd.wake(addr, PAGE_SIZE)?;
            }
            return Ok(());
        }
        let r = st.tree.find(page).expect("checked above");
        let (key, g) = (r.start, r.attrs.granularity);
        let (first, last) = policy::granule_extent(page, g, r.start, r.last);
        // The migration wakes the threads waiting in the granule once it is done.
        migrate::to_ram(self, st, key, first, last, MigrateTrigger::PagefaultCpu).map(|_| ())
    }

    /// Where each of `n` pages from `page` lives.
    pub(crate) fn residency(&self, page: PageNo, n: usize) -> Vec<Residency> {
        let st = self.lock_state();
        let has =
            sys::pagemap::has_memory((page << PAGE_SHIFT) as usize, n).unwrap_or_else(|_| vec![false; n]);
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
        self.evacuate_locked(&mut st);
    }

    fn evacuate_locked(&self, st: &mut SvmState) {
        let keys: Vec<(PageNo, PageNo)> =
            st.tree.iter().filter(|r| r.vram_pages() > 0).map(|r| (r.start, r.last)).collect();
        for (s, l) in keys {
            let _ = migrate::to_ram(self, st, s, s, l, MigrateTrigger::Prefetch);
        }
    }
}

/// Every live instance of the process, for fork.
static LIVE: Mutex<Vec<std::sync::Weak<SvmInner>>> = Mutex::new(Vec::new());
/// The instances whose lock the forking thread holds across the fork.
static HELD: Mutex<Vec<Arc<SvmInner>>> = Mutex::new(Vec::new());
static AT_FORK: std::sync::Once = std::sync::Once::new();

/// Makes `inner` known to the fork handlers (installed with the first instance).
///
/// fork: a child must read correct data for every page, but a child's copy of the address
/// space has no usvm threads and no userfaultfd registration (none is inherited without
/// EVENT_FORK), so data left in VRAM would read as zero there. Before the fork, every
/// instance moves its VRAM data back to RAM and keeps its lock until the fork is done, so
/// that nothing migrates in between: the child gets all the data, in plain RAM, and must
/// not use the instances it inherited. The parent goes on, with its data in RAM (later
/// prefetches and faults move it again).
pub(crate) fn track_for_fork(inner: &Arc<SvmInner>) {
    let mut live = LIVE.lock();
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(inner));
    drop(live);
    AT_FORK.call_once(|| sys::at_fork(before_fork, after_fork, after_fork));
}

extern "C" fn before_fork() {
    let live: Vec<Arc<SvmInner>> = LIVE.lock().iter().filter_map(|w| w.upgrade()).collect();
    let mut held = HELD.lock();
    for inner in live {
        let mut st = inner.lock_state();
        inner.evacuate_locked(&mut st);
        inner.engine.drain_pool();
        std::mem::forget(st); // held until after_fork
        held.push(inner);
    }
}

extern "C" fn after_fork() {
    for inner in HELD.lock().drain(..) {
        sys::unlock_held(&inner.state);
    }
}

impl GpuFaultHandler for SvmInner {
    fn settle(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.devs.reading_event.load(SeqCst) {
            // The reader is between reading an event and queueing its change.
            drop(self.event_gate.lock());
        }
        if self.devs.changes_pending.load(SeqCst) {
            drop(self.lock_state());
        }
    }

    fn gpu_fault(&self, gpu: usize, addr: usize, write: bool) -> Result<()> {
        let xnack = self.lock_state().xnack;
        if !xnack {
            return Err(self.fatal_fault(gpu, addr, write));
        }
        self.restore_pages(gpu, addr, write)
    }
}

/// `svm_range_is_valid`: every page of `[start, last]` must lie in an ordinary mapping of
/// the process, with no hole and no device (I/O, PFN) mapping, else EFAULT.
fn check_mapped(start: PageNo, last: PageNo) -> Result<()> {
    for piece in vma::pieces(start, last) {
        let v = piece?.vma;
        if v.kind == vma::VmaKind::Device {
            return Err(Error::DeviceMapping { addr: v.start as u64, name: "I/O or PFN mapping".into() });
        }
    }
    Ok(())
}

/// Entry checks of the SVM ioctl: start and size non-zero, 4 KiB aligned, and
/// `start + size` without overflow. Returns the inclusive page interval.
pub(crate) fn check_interval(start: u64, size: u64) -> Result<(PageNo, PageNo)> {
    let page = PAGE_SIZE as u64 - 1;
    let bad = Error::BadInterval { start, size };
    if start & page != 0 || size & page != 0 || start == 0 || size == 0 {
        return Err(bad);
    }
    let end = start.checked_add(size).filter(|&e| e <= usize::MAX as u64).ok_or(bad)?;
    Ok((start >> PAGE_SHIFT, (end >> PAGE_SHIFT) - 1))
}

/// Forgets the VRAM copies of the pages `[start, last]` of `r` (their data is gone).
fn drop_vram(r: &mut SvmRange, start: PageNo, last: PageNo) {
    if r.vram.is_none() {
        return;
    }
    for p in start.max(r.start)..=last.min(r.last) {
        r.in_vram.set(p - r.start, false);
    }
    if r.vram_pages() == 0 {
        r.actual_loc = Location::Sysmem;
        r.vram = None;
    }
}
