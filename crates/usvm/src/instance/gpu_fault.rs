//! GPU retry faults under XNACK on (`svm_range_restore_pages`, section 5) and fatal GPU VM
//! faults: the instance is the devices' fault handler.

use super::{SvmInner, SvmState};
use crate::addr::Pages;
use crate::attr::{Location, SvmFlags};
use crate::error::{Error, Result};
use crate::events::{Counter, EventKind, MigrateTrigger};
use crate::gpu::GpuFaultHandler;
use crate::gpu::GpuIdx;
use crate::history::Cause;
use crate::map;
use crate::migrate;
use crate::policy::{self, Mitigation, RestoreLocation};
use crate::range::tree::RangeTree;
use crate::range::{GpuMask, PageNo, SvmRange};
use crate::sys::{self, vma};
use std::time::Duration;

/// GPU faults on a range validated less than this long ago are ignored: the access retries
/// (`AMDGPU_SVM_RANGE_RETRY_FAULT_PENDING`, 2 ms).
pub const RETRY_FAULT_PENDING: Duration = Duration::from_millis(2);

impl SvmInner {
    /// A fatal GPU VM fault: VMFAULT event and EFAULT.
    pub(super) fn fatal_fault(&self, gpu: GpuIdx, addr: usize, write: bool) -> Error {
        let id = self.gpus[gpu].id;
        tracing::warn!(gpu = %id, addr = format_args!("{addr:#x}"), write, "fatal GPU VM fault");
        self.events.emit(|| EventKind::VmFault { gpu: id, task: sys::process_name() });
        Error::GpuVmFault { gpu: id.0, addr: addr as u64, write }
    }

    /// Creates a range for a GPU fault on an address no range covers
    /// (`svm_range_create_unregistered_range`): the default granule around the page,
    /// inside its mapping, clipped by the neighbouring ranges. The initial heap and stack
    /// get PREFERRED_LOC = system memory. `None` when no mapping holds the page.
    pub(super) fn create_unregistered(&self, st: &mut SvmState, page: PageNo) -> Option<PageNo> {
        let v = vma::lookup(page.addr(), false).ok().flatten()?;
        let vs = PageNo::of_addr(v.start);
        let vl = PageNo::of_addr(v.end) - 1;
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
        if bos.first_in(Pages::new(s, l)).is_some() {
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
        r.registered = migrate::register_interval(&self.engine, Pages::new(s, l)).is_ok();
        st.tree.insert(r);
        Some(s)
    }

    /// `svm_range_restore_pages`: a GPU retry fault under XNACK on (section 5).
    pub(super) fn restore_pages(&self, gpu: GpuIdx, addr: usize, write: bool) -> Result<()> {
        self.serve_gpu_fault(gpu, addr, write, true)
    }

    /// [`Self::restore_pages`]; `mitigate`: the placement rules may pin or throttle (a
    /// throttled fault naps without the lock, then comes back here with `mitigate` off).
    fn serve_gpu_fault(&self, gpu: GpuIdx, addr: usize, write: bool, mitigate: bool) -> Result<()> {
        let entry_ns = sys::boottime_ns();
        let page = PageNo::of_addr(addr);
        let mut st = self.lock_state();
        let Some(key) =
            st.tree.find(page).map(|r| r.start).or_else(|| self.create_unregistered(&mut st, page))
        else {
            // A failed range creation counts too (section 5.4 step 6).
            self.events.count(gpu, Counter::Faults, 1);
            return Err(self.fatal_fault(gpu, addr, write));
        };
        // From here on every outcome counts as a processed fault (section 5.4 step 6).
        self.events.count(gpu, Counter::Faults, 1);
        let r = st.tree.get(key).expect("range just found");
        let Some((best, vma)) = self.fault_target(r, gpu, addr, write)? else {
            return Ok(()); // a duplicate, or a racing munmap: the access retries
        };
        let has_preferred = r.attrs.preferred_loc != Location::Undefined;
        let mitigation = match mitigate {
            true => self.rules.gpu_fault(&mut self.thrash.lock(), page, entry_ns, has_preferred),
            false => Mitigation::None,
        };
        let plan = match mitigation {
            Mitigation::None => Some(best),
            Mitigation::Pin => self.pinned(r, page, gpu),
            Mitigation::Throttle(nap) => {
                drop(st);
                std::thread::sleep(nap);
                return self.serve_gpu_fault(gpu, addr, write, false);
            }
        };
        let id = self.gpus[gpu].id;
        if self.events.listening() {
            let kind = EventKind::PageFaultStart { addr: page.get(), gpu: id, write };
            self.events.emit_event(crate::events::Event { ns: entry_ns, pid: self.events.pid(), kind });
        }
        let (Pages { first, last }, ahead) = self.fault_extent((&st.tree, r), page, vma, plan);
        // Migrate the granule where it is best, or map the data in place (section 5.4).
        let cause = Cause::GpuFault { gpu: id, addr, write };
        let moved = plan.and_then(|best| self.fault_move(&mut st, key, Pages::new(first, last), best, cause));
        let migrated = matches!(moved, Some(Ok(())));
        if let (true, Some(RestoreLocation::Gpu(b))) = (migrated && ahead > 0, plan) {
            // On the worker: the faulting GPU maps its own pages and goes on meanwhile.
            self.post(super::notifier::Work::ReadAhead { after: last, n: ahead, addr, to: b });
        }
        let mut result = moved.unwrap_or(Ok(()));
        if result.is_ok() {
            let mut one = GpuMask::EMPTY;
            one.insert(gpu);
            let r = st.tree.get_mut(key).expect("range");
            result = map::validate_and_map(&self.devs, r, one, first, last);
        }
        self.events.emit(|| EventKind::PageFaultEnd { addr: page.get(), gpu: id, migrated });
        match result {
            // The address space changed under the fault: the GPU retries (section 5.4).
            Err(e) if e.errno() == libc::EAGAIN => Ok(()),
            r => r,
        }
    }

    /// Where a retry fault of GPU `gpu` at `addr` on range `r` puts the data (section 5.3),
    /// with the pages of the faulting mapping: `Ok(None)` when the fault is to be retried
    /// without doing anything (a duplicate of one just handled, or the memory is going
    /// away), an error for a fatal fault (no permission, no access).
    fn fault_target(
        &self,
        r: &SvmRange,
        gpu: GpuIdx,
        addr: usize,
        write: bool,
    ) -> Result<Option<(RestoreLocation, Pages)>> {
        let duplicate = if self.rules.exact_duplicates() {
            let pte = self.devs.gpus[gpu].pt.get(PageNo::of_addr(addr));
            pte.valid() && (!write || pte.writable())
        } else {
            r.validate_timestamp.is_some_and(|t| t.elapsed() < RETRY_FAULT_PENDING)
        };
        if duplicate {
            return Ok(None);
        }
        let Ok(Some(v)) = vma::lookup(addr, false) else {
            return Ok(None); // racing munmap: nothing to map, the access will fault again
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
        match policy::best_restore_location(&r.attrs, preferred, actual, gpu, |a, b| {
            self.devs.same_hive(a, b)
        }) {
            RestoreLocation::NoAccess => Err(self.fatal_fault(gpu, addr, write)), // EACCES in the kernel
            best => Ok(Some((best, Pages::of_bytes(v.start, v.end)))),
        }
    }

    /// Where a fault of GPU `gpu` on `page` of a pinned block of `r` puts the data: `None`
    /// (it stays, and is mapped where it is) when the page is in RAM or in VRAM the GPU
    /// reaches, as ACCESS_IN_PLACE would have it; else system memory.
    fn pinned(&self, r: &SvmRange, page: PageNo, gpu: GpuIdx) -> Option<RestoreLocation> {
        let reachable = |a: GpuIdx| a == gpu || self.devs.same_hive(a, gpu);
        if !r.page_in_vram(page) || self.gpu_of(r.actual_loc).is_some_and(reachable) {
            None
        } else {
            Some(RestoreLocation::Sysmem)
        }
    }

    /// The pages a fault on `page` of `r` moves to `best` (or, `None`, maps where they
    /// are: the granule): the placement rules' extent around the granule, within the range
    /// and the faulting mapping `vma`; and how many pages past it the rules read ahead.
    fn fault_extent(
        &self,
        (tree, r): (&RangeTree, &SvmRange),
        page: PageNo,
        vma: Pages,
        best: Option<RestoreLocation>,
    ) -> (Pages, u64) {
        let (first, last) = policy::granule_extent(page, r.attrs.granularity, r.start, r.last);
        let Some(best) = best else {
            return (Pages::new(first, last), 0);
        };
        let limit = r.pages().intersect(vma).unwrap_or(Pages::one(page));
        let dest = match best {
            RestoreLocation::Gpu(g) => Some(self.gpus[g].id),
            _ => None,
        };
        let resident = |p: PageNo| {
            let holder = if r.pages().contains(p) { Some(r) } else { tree.find(p) };
            holder.is_some_and(|x| match dest {
                Some(id) => x.actual_loc == Location::Gpu(id) && x.page_in_vram(p),
                None => !x.page_in_vram(p),
            })
        };
        let f = policy::FaultView {
            page,
            granule: Pages::new(first, last),
            limit: &|| limit,
            resident: &resident,
        };
        let extent = self.rules.fault_extent(&f);
        (extent, self.rules.read_ahead(&f, extent))
    }

    /// The migration of a retry fault's granule `[first, last]` of the range at `key` to
    /// `best`: `None` when the data stays where it is (mapped in place).
    fn fault_move(
        &self,
        st: &mut SvmState,
        key: PageNo,
        pages: Pages,
        best: RestoreLocation,
        cause: Cause,
    ) -> Option<Result<()>> {
        let trigger = MigrateTrigger::PagefaultGpu;
        let actual = st.tree.get(key)?.actual_loc;
        Some(match policy::retry_fault_move(actual, best) {
            policy::Move::Stay => return None,
            policy::Move::ToGpu(b) => {
                match self.move_to_vram(st, key, pages, b, (trigger, cause.clone())) {
                    Ok(_) => Ok(()),
                    // On another GPU and stuck there: bring the granule to RAM instead.
                    Err(_) if self.gpu_of(actual).is_some_and(|a| a != b) => {
                        self.move_to_ram(st, key, pages, trigger, cause.clone()).map(|_| ())
                    }
                    Err(_) => Ok(()), // map in place
                }
            }
            policy::Move::ToSysmem => self.move_to_ram(st, key, pages, trigger, cause.clone()).map(|_| ()),
        })
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

    fn gpu_fault(&self, gpu: GpuIdx, addr: usize, write: bool) -> Result<()> {
        let xnack = self.lock_state().xnack;
        if !xnack {
            return Err(self.fatal_fault(gpu, addr, write));
        }
        self.restore_pages(gpu, addr, write)
    }
}
