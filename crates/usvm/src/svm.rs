//! The public face of an instance: the builder, [`Svm`] with its API (api.md) and
//! [`crate::SvmBuffer`] (`buffer.rs`). The work is done in `instance/` (ranges, ioctls,
//! faults), `migrate/` and `gpu/`.

use crate::addr::PageNo;
use crate::addr::Pages;
use crate::attr::{Attr, GpuId, Location, Residency, SvmFlags};
use crate::buffer::SvmBuffer;
use crate::error::{Error, Result};
use crate::events::{Counters, EventHub, EventStream, EvictTrigger};
use crate::fault::cpu::CpuFaultHandler;
use crate::gpu::queue::Queue;
use crate::gpu::{Access, Devices, GpuFaultHandler, GpuIdx};
use crate::instance::{GpuInfo, SvmInner, SvmState, check_interval};
use crate::migrate::Engine;
use crate::policy;
use crate::policy::{AdaptiveTunables, Policy};
use crate::range::GpuMask;
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE};
use crate::uapi::{self, RawAttr};
use parking_lot::Mutex;
use std::sync::Arc;

/// Default number of emulated GPUs.
pub const DEFAULT_GPUS: usize = 1;
/// Default VRAM per emulated GPU (1 GiB).
pub const DEFAULT_VRAM_BYTES: u64 = 1 << 30;
/// Default migration granularity, log2 pages (`amdgpu.svm_default_granularity` = 9: 2 MiB).
pub const DEFAULT_GRANULARITY: u8 = 9;
/// Largest default granularity the kernel accepts for its module parameter.
pub const MAX_DEFAULT_GRANULARITY: u8 = 27;
/// Most GPUs an instance can have (KFD's `MAX_GPU_INSTANCE`).
pub const MAX_GPUS: usize = 64;
/// Alignment of [`Svm::alloc`] buffers (2 MiB, one default granule).
pub const ALLOC_ALIGN: usize = 2 << 20;

/// The id of the `idx`-th emulated GPU: 0x1111, 0x2222, ... as in the semantics document's
/// examples. Never 0 and never `0xffffffff`.
fn gpu_id_for(idx: usize) -> GpuId {
    GpuId(0x1111 * (idx as u32 + 1))
}

/// Configures and creates an [`Svm`] instance.
#[derive(Clone, Debug)]
pub struct SvmBuilder {
    gpus: usize,
    vram_bytes: u64,
    xnack: bool,
    default_granularity: u8,
    migrate_on_preferred_loc: bool,
    xgmi_hive: bool,
    system_memory_limit: Option<u64>,
    history: Option<bool>,
    policy: Policy,
    tunables: AdaptiveTunables,
}

impl Default for SvmBuilder {
    fn default() -> Self {
        SvmBuilder {
            gpus: DEFAULT_GPUS,
            vram_bytes: DEFAULT_VRAM_BYTES,
            xnack: false,
            default_granularity: DEFAULT_GRANULARITY,
            migrate_on_preferred_loc: true,
            xgmi_hive: false,
            system_memory_limit: None,
            history: None,
            policy: Policy::Kernel,
            tunables: AdaptiveTunables::default(),
        }
    }
}

impl SvmBuilder {
    /// Number of emulated GPUs, 1 to 64 (default 1).
    pub fn gpus(mut self, n: usize) -> Self {
        self.gpus = n;
        self
    }

    /// VRAM per GPU in bytes, at least one page (default 1 GiB). Rounded down to 4 KiB.
    pub fn vram_bytes(mut self, bytes: u64) -> Self {
        self.vram_bytes = bytes;
        self
    }

    /// GPU retry faults (XNACK) on or off (default off).
    pub fn xnack(mut self, on: bool) -> Self {
        self.xnack = on;
        self
    }

    /// Granularity of new ranges, log2 pages, 0 to 27 (default 9, i.e. 2 MiB), as the
    /// `amdgpu.svm_default_granularity` module parameter.
    pub fn default_granularity(mut self, g: u8) -> Self {
        self.default_granularity = g;
        self
    }

    /// Whether a SET_ATTR that changes PREFERRED_LOC between system memory (or undefined)
    /// and a GPU migrates the range, as the seed does (default true). `false` gives
    /// today's kernel, where only PREFETCH_LOC and faults migrate.
    pub fn migrate_on_preferred_loc(mut self, on: bool) -> Self {
        self.migrate_on_preferred_loc = on;
        self
    }

    /// Whether the GPUs are connected by XGMI in one hive (default false): GPUs of a hive
    /// map each other's VRAM, so data in one GPU's VRAM stays there when another hive GPU
    /// accesses it; GPUs outside a hive never map each other's VRAM (PCIe peers).
    pub fn xgmi_hive(mut self, on: bool) -> Self {
        self.xgmi_hive = on;
        self
    }

    /// The bytes of SVM ranges that may exist under XNACK off (KFD reserves every range
    /// made under XNACK off against its system-memory limit; beyond it SET_ATTR and
    /// switching XNACK off fail with ENOMEM). Default: 15/16 of the machine's memory.
    pub fn system_memory_limit(mut self, bytes: u64) -> Self {
        self.system_memory_limit = Some(bytes);
        self
    }

    /// Whether every movement of pages is recorded with its cause ([`Svm::history`],
    /// [`Svm::diagnose`]; on by default, bounded by `history::HISTORY_BUDGET`).
    pub fn history(mut self, on: bool) -> Self {
        self.history = Some(on);
        self
    }

    /// The placement policy (default [`Policy::Kernel`]: exactly the kernel's behaviour).
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }

    /// The tunables of [`Policy::Adaptive`] (default [`AdaptiveTunables::default`]).
    pub fn adaptive_tunables(mut self, t: AdaptiveTunables) -> Self {
        self.tunables = t;
        self
    }

    /// Creates the instance.
    pub fn build(self) -> Result<Svm> {
        if self.gpus == 0 || self.gpus > MAX_GPUS {
            return Err(Error::InvalidConfig(format!("gpus must be 1..={MAX_GPUS}, got {}", self.gpus)));
        }
        let vram = self.vram_bytes & !(PAGE_SIZE as u64 - 1);
        if vram == 0 {
            return Err(Error::InvalidConfig(format!(
                "vram_bytes must be at least one 4 KiB page, got {}",
                self.vram_bytes
            )));
        }
        if self.default_granularity > MAX_DEFAULT_GRANULARITY {
            return Err(Error::InvalidConfig(format!(
                "default granularity must be 0..={MAX_DEFAULT_GRANULARITY}, got {}",
                self.default_granularity
            )));
        }
        let gpus: Vec<GpuInfo> =
            (0..self.gpus).map(|i| GpuInfo { id: gpu_id_for(i), vram_bytes: vram }).collect();
        let max_range_pages = policy::max_range_pages(gpus.iter().map(|g| g.vram_bytes));
        let ids: Vec<GpuId> = gpus.iter().map(|g| g.id).collect();
        let events = Arc::new(EventHub::new(ids.clone()));
        let devs = Arc::new(Devices::new(&ids, vram, self.xgmi_hive, events.clone())?);
        let inner = Arc::new(SvmInner {
            supported: GpuMask::first(gpus.len()),
            gpus,
            max_range_pages,
            default_granularity: self.default_granularity,
            state: Mutex::new(SvmState::new(self.xnack)),
            devs,
            events,
            engine: Engine::new()?,
            migrate_on_preferred_loc: self.migrate_on_preferred_loc,
            system_memory_limit: self.system_memory_limit.unwrap_or(sys::physical_memory_bytes() / 16 * 15),
            pending: Mutex::new(Vec::new()),
            event_gate: Mutex::new(()),
            work: std::sync::OnceLock::new(),
            kfd_bos: Mutex::new(Default::default()),
            history: Default::default(),
            record_history: self.history.unwrap_or_else(crate::history::record_by_default),
            policy: self.policy,
            rules: crate::policy::rules(self.policy, self.tunables),
            thrash: Mutex::new(Default::default()),
        });
        if inner.rules.frequency_eviction() {
            for d in &inner.devs.gpus {
                d.vram.count_accesses();
            }
        }
        crate::instance::track_for_fork(&inner);
        let handler: Arc<dyn GpuFaultHandler> = inner.clone();
        inner.devs.set_fault_handler(Arc::downgrade(&handler));
        let cpu = CpuFaultHandler::start(&inner, inner.engine.uffd.clone())
            .map_err(|e| Error::Sys { call: "spawn", errno: e.raw_os_error().unwrap_or(libc::EAGAIN) })?;
        Ok(Svm { inner, cpu_faults: Some(cpu), generation: sys::fork_generation() })
    }
}

/// A user-space shared-virtual-memory instance: emulated GPUs plus the SVM ranges of the
/// process memory it was given, with KFD's SET_ATTR / GET_ATTR semantics.
///
/// Several instances can live in one process; each manages only the ranges it was given.
#[derive(Debug)]
pub struct Svm {
    inner: Arc<SvmInner>,
    /// Declared after `inner`, dropped after the evacuation in `Drop`.
    cpu_faults: Option<CpuFaultHandler>,
    /// The process's fork generation when the instance was built (see `Drop`).
    generation: u64,
}

impl Drop for Svm {
    /// Migrates everything the instance holds back to RAM and releases its VRAM; the fault
    /// threads stop afterwards.
    ///
    /// In a child process made by `fork`, the instance is left alone instead (its memory is
    /// leaked): the child has none of its threads to stop, and its userfaultfd descriptors
    /// still act on the parent's address space, where tearing the instance down would stop
    /// the parent's fault reader and unregister the parent's memory.
    fn drop(&mut self) {
        if sys::fork_generation() != self.generation {
            std::mem::forget(self.cpu_faults.take());
            std::mem::forget(self.inner.clone());
            return;
        }
        self.inner.evacuate();
    }
}

/// Which userfaultfd operation [`Svm::inject_uffd_error`] makes fail (tests).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectUffd {
    /// `UFFDIO_MOVE` collecting the application's pages for a migration to VRAM.
    Collect,
    /// `UFFDIO_MOVE` of data coming back from VRAM into the application.
    MoveIn,
    /// `UFFDIO_COPY` of data coming back from VRAM (small batches).
    Copy,
    /// `UFFDIO_ZEROPAGE` resolving a first touch.
    Zeropage,
}

/// What [`Svm::smi`] reports for one GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GpuSnapshot {
    /// The GPU.
    pub id: GpuId,
    /// VRAM size in bytes.
    pub vram_bytes: u64,
    /// VRAM held by buffer objects.
    pub vram_used: u64,
    /// VRAM free.
    pub vram_free: u64,
    /// The most VRAM ever held at once since the instance was built.
    pub vram_peak: u64,
    /// Pages of SVM ranges whose data is in this GPU's VRAM.
    pub resident_pages: u64,
    /// Live buffer objects.
    pub bos: usize,
    /// VRAM bytes held by accounting reservations (migrations in flight).
    pub vram_reserved: u64,
    /// Pages mapped in the GPU's page table.
    pub mapped_pages: u64,
    /// Whether the GPU's queues are evicted or suspended.
    pub queues_suspended: bool,
}

/// What [`Svm::ranges`] reports for one SVM range.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RangeInfo {
    /// First byte address.
    pub start: usize,
    /// Size in bytes.
    pub size: usize,
    /// PREFERRED_LOC.
    pub preferred_loc: Location,
    /// PREFETCH_LOC.
    pub prefetch_loc: Location,
    /// `Sysmem`, or the GPU whose VRAM holds (some of) the pages.
    pub actual_loc: Location,
    /// Pages currently in VRAM.
    pub vram_pages: usize,
    /// log2 of the granule in pages.
    pub granularity: u32,
    /// Flags.
    pub flags: SvmFlags,
    /// GPUs with ACCESS.
    pub access: Vec<GpuId>,
    /// GPUs with ACCESS_IN_PLACE.
    pub access_in_place: Vec<GpuId>,
    /// Whether the whole range is mapped on the GPUs it should be.
    pub mapped_to_gpu: bool,
}

impl Svm {
    /// A builder with the defaults: 1 GPU, 1 GiB of VRAM, XNACK off.
    pub fn builder() -> SvmBuilder {
        SvmBuilder::default()
    }

    /// The shared core (for the KFD model).
    pub(crate) fn inner(&self) -> &Arc<SvmInner> {
        &self.inner
    }

    /// The GPU ids of this instance, in index order: distinct, never 0 or `0xffffffff`.
    pub fn gpu_ids(&self) -> Vec<GpuId> {
        self.inner.gpus.iter().map(|g| g.id).collect()
    }

    /// VRAM per GPU in bytes.
    pub fn vram_bytes(&self, gpu: GpuId) -> Option<u64> {
        self.inner.gpus.iter().find(|g| g.id == gpu).map(|g| g.vram_bytes)
    }

    /// The largest range SET_ATTR creates in a gap, in bytes (1/32 of the smallest VRAM,
    /// clamped to [2 MiB, 1 GiB], a power of two).
    pub fn max_range_bytes(&self) -> usize {
        (self.inner.max_range_pages as usize) << PAGE_SHIFT
    }

    /// Maps `len` bytes (rounded up to 4 KiB) of anonymous private memory, aligned to 2 MiB
    /// and to the maximum range size, so that a buffer up to that size is one SVM range.
    /// The memory is unmapped, and its ranges dropped, when the buffer is dropped.
    pub fn alloc(&self, len: usize) -> Result<SvmBuffer> {
        if len == 0 {
            return Err(Error::InvalidConfig("cannot allocate 0 bytes".into()));
        }
        let len = len
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(Error::Sys { call: "mmap", errno: libc::ENOMEM })?;
        // Aligned to the maximum range size too, so that a buffer no larger than that is
        // one SVM range (gap ranges are cut at its multiples).
        let align = ALLOC_ALIGN.max(self.max_range_bytes());
        let addr = sys::mmap::map_anon_aligned(len, align)?;
        // Huge pages let migrations move 2 MiB page-table entries at once.
        sys::mmap::advise_hugepages(addr, len);
        Ok(SvmBuffer { addr, len, owner: Arc::downgrade(&self.inner), generation: self.generation })
    }

    /// KFD SET_ATTR: applies `attrs`, in order, to every page of `[addr, addr + size)`.
    ///
    /// `addr` and `size` must be non-zero multiples of 4 KiB and every page must be mapped
    /// (any anonymous, file or shared mapping; not a device mapping). A rejected call
    /// changes nothing.
    pub fn set_attr(&self, addr: usize, size: usize, attrs: &[Attr]) -> Result<()> {
        let (start, last) = check_interval(addr as u64, size as u64)?;
        self.inner.set_attr(Pages::new(start, last), attrs)
    }

    /// KFD GET_ATTR: fills each entry of `attrs` in place with the aggregate over
    /// `[addr, addr + size)`. An `Access(g)` query comes back as `Access(g)`,
    /// `AccessInPlace(g)` or `NoAccess(g)`.
    pub fn get_attr(&self, addr: usize, size: usize, attrs: &mut [Attr]) -> Result<()> {
        let mut raw: Vec<RawAttr> = attrs.iter().map(|a| a.to_raw()).collect();
        let r = self.svm_ioctl(uapi::KFD_IOCTL_SVM_OP_GET_ATTR, addr as u64, size as u64, &mut raw);
        // As the kernel copies results out even on failure, entries already filled stay.
        for (a, r) in attrs.iter_mut().zip(&raw) {
            *a = Attr::from_raw(*r).expect("GET_ATTR writes only known types");
        }
        r
    }

    /// The raw KFD entry point (`AMDKFD_IOC_SVM`), with the kernel's exact semantics:
    /// `op` is `uapi::KFD_IOCTL_SVM_OP_SET_ATTR` or `uapi::KFD_IOCTL_SVM_OP_GET_ATTR`.
    pub fn svm_ioctl(&self, op: u32, start: u64, size: u64, attrs: &mut [RawAttr]) -> Result<()> {
        let (first, last) = check_interval(start, size)?;
        match op {
            uapi::KFD_IOCTL_SVM_OP_SET_ATTR => {
                let decoded = attrs.iter().map(|r| Attr::from_raw(*r)).collect::<Result<Vec<_>>>()?;
                self.inner.set_attr(Pages::new(first, last), &decoded)
            }
            uapi::KFD_IOCTL_SVM_OP_GET_ATTR => self.inner.get_attr(Pages::new(first, last), attrs),
            op => Err(Error::UnknownOp(op)),
        }
    }

    /// The placement policy the instance follows.
    pub fn policy(&self) -> Policy {
        self.inner.policy
    }

    /// Whether GPU retry faults (XNACK) are on.
    pub fn xnack(&self) -> bool {
        self.inner.lock_state().xnack
    }

    /// Switches XNACK (`AMDKFD_IOC_SET_XNACK_MODE`): `EBUSY` while queues exist; the same
    /// mode is a no-op. Existing ranges keep their ACCESS bitmaps. Turning XNACK off
    /// reserves every range against the system-memory limit (`ENOMEM`, mode unchanged,
    /// when they do not fit); turning it on releases the reservations.
    pub fn set_xnack(&self, on: bool) -> Result<()> {
        let mut st = self.inner.lock_state();
        if st.queues > 0 {
            return Err(Error::Busy("XNACK mode cannot change while queues exist"));
        }
        if st.xnack == on {
            return Ok(());
        }
        st.set_accounting(!on, self.inner.system_memory_limit)?;
        st.xnack = on;
        Ok(())
    }

    /// Every SVM range, in address order.
    pub fn ranges(&self) -> Vec<RangeInfo> {
        let st = self.inner.lock_state();
        let ids = |m: GpuMask| m.iter().map(|i| self.inner.gpus[i].id).collect::<Vec<_>>();
        st.tree
            .iter()
            .map(|r| RangeInfo {
                start: r.start.addr(),
                size: (r.npages() << PAGE_SHIFT) as usize,
                preferred_loc: r.attrs.preferred_loc,
                prefetch_loc: r.attrs.prefetch_loc,
                actual_loc: r.actual_loc,
                vram_pages: r.vram_pages() as usize,
                granularity: u32::from(r.attrs.granularity),
                flags: r.attrs.flags,
                access: ids(r.attrs.access),
                access_in_place: ids(r.attrs.access_in_place),
                mapped_to_gpu: r.mapped_to_gpu,
            })
            .collect()
    }

    /// A device load: `buf.len()` bytes at `addr` through GPU `g`'s page table.
    ///
    /// XNACK on: a page not mapped on `g` is a GPU retry fault, handled as the kernel's
    /// `svm_range_restore_pages` does, then the access completes. XNACK off: it is a fatal
    /// GPU VM fault (`EFAULT`, VMFAULT event). While `g`'s queues are evicted, the access
    /// waits for the restore.
    pub fn gpu_read(&self, g: GpuId, addr: usize, buf: &mut [u8]) -> Result<()> {
        let idx = self.inner.gpu(g)?;
        self.inner.devs.access(idx, addr, Access::Read(buf))
    }

    /// A device store of `data` at `addr` through GPU `g`'s page table (rules as
    /// [`Svm::gpu_read`]; a write through a read-only mapping is a fatal fault).
    pub fn gpu_write(&self, g: GpuId, addr: usize, data: &[u8]) -> Result<()> {
        let idx = self.inner.gpu(g)?;
        self.inner.devs.access(idx, addr, Access::Write(data))
    }

    /// Creates a compute queue on GPU `g`. While any queue exists, XNACK cannot change.
    pub fn create_queue(&self, g: GpuId) -> Result<Queue> {
        let idx = self.inner.gpu(g)?;
        let mut st = self.inner.lock_state();
        let weak = Arc::downgrade(&self.inner);
        let q = Queue::new(
            self.inner.devs.clone(),
            idx,
            Box::new(move || {
                if let Some(i) = weak.upgrade() {
                    i.lock_state().queues -= 1;
                }
            }),
        )?;
        st.queues += 1;
        Ok(q)
    }

    /// Suspends GPU `g`'s queues (reference counted, as a debugger or KFD's own queue
    /// eviction does): kernels pause before their next memory access and device accesses
    /// wait until as many [`Svm::resume_queues`] calls have been made. Emits
    /// QUEUE_EVICTION with trigger SUSPEND (3).
    pub fn suspend_queues(&self, g: GpuId) -> Result<()> {
        let idx = self.inner.gpu(g)?;
        self.inner.devs.gpus[idx].user_suspends.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.devs.evict_queues(idx, EvictTrigger::Suspend);
        Ok(())
    }

    /// Undoes one [`Svm::suspend_queues`]; emits QUEUE_RESTORE. `EINVAL` when the queues
    /// are not suspended through this call (an eviction of usvm's own, for a migration or
    /// an invalidation, is never undone from here: accesses would run on stale mappings).
    pub fn resume_queues(&self, g: GpuId) -> Result<()> {
        let idx = self.inner.gpu(g)?;
        let suspends = &self.inner.devs.gpus[idx].user_suspends;
        let taken = suspends.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |n| n.checked_sub(1),
        );
        if taken.is_err() {
            return Err(Error::InvalidConfig(format!("GPU {g}: queues are not suspended")));
        }
        self.inner.devs.restore_queues(idx, false);
        Ok(())
    }

    /// A per-GPU snapshot, as `amd-smi` shows it: VRAM total, used and free, BOs, mapped
    /// pages and queue state.
    pub fn smi(&self) -> Vec<GpuSnapshot> {
        let mut resident = vec![0u64; self.inner.gpus.len()];
        for r in self.inner.lock_state().tree.iter() {
            if let Some(g) = self.inner.gpu_of(r.actual_loc) {
                resident[g] += r.vram_pages();
            }
        }
        self.inner
            .devs
            .gpus
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let u = d.vram.usage();
                GpuSnapshot {
                    id: d.id,
                    vram_bytes: u.total_pages * PAGE_SIZE as u64,
                    vram_used: (u.total_pages - u.free_pages) * PAGE_SIZE as u64,
                    vram_free: u.free_pages * PAGE_SIZE as u64,
                    vram_peak: u.peak_used_pages * PAGE_SIZE as u64,
                    resident_pages: resident[i],
                    bos: u.bos,
                    vram_reserved: u.reserved_bytes,
                    mapped_pages: d.pt.mapped_pages(),
                    queues_suspended: self.inner.devs.queues_evicted(GpuIdx::new(i)),
                }
            })
            .collect()
    }

    /// A stream of every event emitted after this call.
    pub fn subscribe(&self) -> EventStream {
        self.inner.events.subscribe()
    }

    /// The counters of GPU `g` (KFD's sysfs `faults`, `page_in`, `page_out`); zeros for a
    /// GPU that is not this instance's.
    pub fn counters(&self, g: GpuId) -> Counters {
        self.inner.gpu(g).map(|i| self.inner.events.counters(i)).unwrap_or_default()
    }

    /// CPU page faults usvm has resolved on this instance's memory: data brought back from
    /// VRAM, and first touches of pages that held no data yet.
    pub fn cpu_faults(&self) -> u64 {
        self.inner.events.cpu_faults()
    }

    /// Where each of `npages` pages from `addr` (rounded down to a page) lives.
    pub fn residency(&self, addr: usize, npages: usize) -> Vec<Residency> {
        self.inner.residency(PageNo::of_addr(addr), npages)
    }

    /// Fault injection for tests: the next `n` page collections of migrations to VRAM fail
    /// as if the pages were busy (pinned or shared), exercising retries and partial
    /// migration.
    #[doc(hidden)]
    pub fn inject_busy_pages(&self, n: u64) {
        self.inner.engine.inject_busy.store(n, std::sync::atomic::Ordering::Release);
    }

    /// Fault injection for tests: the `n`-th copy chunk from now on GPU `g` fails.
    #[doc(hidden)]
    pub fn inject_copy_failure(&self, g: GpuId, n: u64) -> Result<()> {
        let idx = self.inner.gpu(g)?;
        self.inner.devs.gpus[idx].sdma.fail_chunk_in(n);
        Ok(())
    }

    /// Fault injection for tests: the `nth` (1 = next) VRAM allocation on GPU `g` fails as
    /// if the VRAM were full and nothing could be evicted.
    #[doc(hidden)]
    pub fn inject_vram_alloc_failure(&self, g: GpuId, nth: u64) -> Result<()> {
        let idx = self.inner.gpu(g)?;
        self.inner.devs.gpus[idx].vram.fail_alloc_in(nth);
        Ok(())
    }

    /// Fault injection for tests: the `nth` (1 = next) userfaultfd operation of kind `op`
    /// fails with `errno` without doing anything, as if the kernel had refused it.
    #[doc(hidden)]
    pub fn inject_uffd_error(&self, op: InjectUffd, errno: i32, nth: u64) {
        use crate::sys::uffd::UffdOp;
        let e = &self.inner.engine;
        match op {
            InjectUffd::Collect => e.own.inject_error(UffdOp::Move, errno, nth),
            InjectUffd::MoveIn => e.uffd.inject_error(UffdOp::Move, errno, nth),
            InjectUffd::Copy => e.uffd.inject_error(UffdOp::Copy, errno, nth),
            InjectUffd::Zeropage => e.uffd.inject_error(UffdOp::Zeropage, errno, nth),
        }
    }

    /// Every movement of pages of `[addr, addr + len)` with its cause, oldest first (the
    /// newest `history::HISTORY_BUDGET` moves of the instance are kept).
    pub fn history(&self, addr: usize, len: usize) -> Vec<crate::history::Move> {
        self.settle();
        self.inner.history.query(addr, len)
    }

    /// Waits for the move under way, if any: a migration wakes the threads that faulted
    /// on its pages before it records itself, so a thread that has just been served must
    /// not read the record before the lock holder is done.
    fn settle(&self) {
        drop(self.inner.lock_state());
    }

    /// The patterns found in the record so far, worst first, each with one concrete change.
    pub fn diagnose(&self) -> Vec<crate::history::Finding> {
        self.settle();
        let (moves, totals) = self.inner.history.snapshot();
        let facts = Facts(&self.inner);
        let devs = &self.inner.devs;
        let accessed = |g: GpuId, when: (u64, u64), span: (usize, usize)| {
            self.inner.gpu_idx(g.0).is_none_or(|i| devs.accessed_between(i, when, span))
        };
        crate::history::diagnose(&moves, &totals, &facts, &accessed)
    }

    /// Number of SVM ranges (cheaper than `ranges().len()`).
    pub fn range_count(&self) -> usize {
        let st = self.inner.lock_state();
        st.tree.len()
    }
}

/// What the diagnosis looks up in the live ranges.
struct Facts<'a>(&'a SvmInner);

impl crate::history::RangeFacts for Facts<'_> {
    fn granularity(&self, addr: usize) -> Option<u8> {
        let st = self.0.lock_state();
        st.tree.find(PageNo::of_addr(addr)).map(|r| r.attrs.granularity)
    }
}
