//! The instance: builder, SET_ATTR / GET_ATTR orchestration (`svm_range_set_attr`,
//! `svm_range_get_attr`), the XNACK switch and observation of ranges.
//!
//! Every call validates its input completely before it takes the state lock and changes
//! anything, in the kernel's order (see kfd-svm-semantics.md section 1.7):
//!
//! ```text
//!  entry:  start/size aligned, non-zero, no overflow ........ EINVAL
//!          op is SET_ATTR or GET_ATTR ........................ EINVAL
//!  SET:    every attribute type, GPU id, PREFETCH != UNDEF ... EINVAL
//!          interval covered by ordinary mappings ............. EFAULT
//!          ranges added / split / updated (under the lock)
//!  GET:    deferred work flushed
//!          interval covered by ordinary mappings ............. EFAULT
//!          query types (no IN_PLACE / NO_ACCESS) ............. EINVAL
//!          aggregate; ACCESS of an unknown GPU ............... EINVAL (earlier entries written)
//! ```

use crate::attr::{Attr, GpuId, Location, SvmFlags};
use crate::error::{Error, Result};
use crate::policy;
use crate::range::tree::{Aggregate, RangeTree};
use crate::range::{AttrOp, GpuMask, PageNo, RangeAttrs};
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE, vma};
use crate::uapi::{self, RawAttr};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

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
}

impl Default for SvmBuilder {
    fn default() -> Self {
        SvmBuilder {
            gpus: DEFAULT_GPUS,
            vram_bytes: DEFAULT_VRAM_BYTES,
            xnack: false,
            default_granularity: DEFAULT_GRANULARITY,
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

    /// Creates the instance.
    pub fn build(self) -> Result<Svm> {
        if self.gpus == 0 || self.gpus > MAX_GPUS {
            return Err(Error::InvalidConfig(format!(
                "gpus must be 1..={MAX_GPUS}, got {}",
                self.gpus
            )));
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
        let gpus: Vec<GpuInfo> = (0..self.gpus)
            .map(|i| GpuInfo {
                id: gpu_id_for(i),
                vram_bytes: vram,
            })
            .collect();
        let max_range_pages = policy::max_range_pages(gpus.iter().map(|g| g.vram_bytes));
        let inner = Arc::new(SvmInner {
            supported: GpuMask::first(gpus.len()),
            gpus,
            max_range_pages,
            default_granularity: self.default_granularity,
            state: Mutex::new(SvmState {
                tree: RangeTree::new(),
                xnack: self.xnack,
                deferred: Vec::new(),
                queues: 0,
            }),
        });
        Ok(Svm { inner })
    }
}

/// One emulated GPU as the attribute layer sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuInfo {
    pub(crate) id: GpuId,
    pub(crate) vram_bytes: u64,
}

/// Work queued by CPU page-table changes and done before the next SET_ATTR / GET_ATTR
/// (KFD's deferred range list, section 6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeferredOp {
    /// The pages `[start, last]` were unmapped: drop them from every range.
    Unmap { start: PageNo, last: PageNo },
}

/// State protected by the instance lock (`svms->lock`).
#[derive(Debug)]
struct SvmState {
    tree: RangeTree,
    xnack: bool,
    deferred: Vec<DeferredOp>,
    /// Number of live user queues (switching XNACK needs none).
    queues: usize,
}

impl SvmState {
    /// Runs the queued deferred work (`svm_range_deferred_list_work`).
    fn flush_deferred(&mut self) {
        for op in std::mem::take(&mut self.deferred) {
            match op {
                DeferredOp::Unmap { start, last } => {
                    self.tree.remove_interval(start, last);
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct SvmInner {
    gpus: Vec<GpuInfo>,
    supported: GpuMask,
    max_range_pages: u64,
    default_granularity: u8,
    state: Mutex<SvmState>,
}

impl SvmInner {
    /// The index of a GPU id, if it belongs to this instance.
    fn gpu_idx(&self, id: u32) -> Option<usize> {
        self.gpus.iter().position(|g| g.id.0 == id)
    }

    /// `svm_range_check_attr`: every attribute valid, GPU ids resolved to indices.
    fn check_attrs(&self, attrs: &[Attr]) -> Result<Vec<AttrOp>> {
        let gpu = |g: GpuId| -> Result<usize> {
            self.gpu_idx(g.0)
                .filter(|&i| self.supported.contains(i))
                .ok_or(Error::UnknownGpu(g.0))
        };
        let loc = |l: Location| -> Result<Location> {
            match l {
                Location::Gpu(g) => gpu(g).map(|_| l),
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
                    Attr::Access(g) => AttrOp::Access(gpu(g)?),
                    Attr::AccessInPlace(g) => AttrOp::AccessInPlace(gpu(g)?),
                    Attr::NoAccess(g) => AttrOp::NoAccess(gpu(g)?),
                    Attr::SetFlags(f) => AttrOp::SetFlags(f),
                    Attr::ClrFlags(f) => AttrOp::ClrFlags(f),
                    Attr::Granularity(v) => AttrOp::Granularity(v),
                })
            })
            .collect()
    }

    /// Attributes of a range created now (`svm_range_set_default_attributes`).
    fn new_range_attrs(&self, xnack: bool) -> RangeAttrs {
        let access = if xnack {
            self.supported
        } else {
            GpuMask::EMPTY
        };
        RangeAttrs::new_default(self.default_granularity, access)
    }

    fn set_attr(&self, start: PageNo, last: PageNo, attrs: &[Attr]) -> Result<()> {
        let ops = self.check_attrs(attrs)?;
        let mut st = self.state.lock();
        st.flush_deferred();
        check_mapped(start, last)?;
        let defaults = self.new_range_attrs(st.xnack);
        st.tree
            .add(start, last, &ops, &defaults, self.max_range_pages);
        Ok(())
    }

    fn get_attr(&self, start: PageNo, last: PageNo, attrs: &mut [RawAttr]) -> Result<()> {
        let mut st = self.state.lock();
        st.flush_deferred();
        check_mapped(start, last)?;
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
        let agg = st
            .tree
            .aggregate(start, last, self.supported)
            .unwrap_or_else(|| {
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

    /// Queues the removal of `[addr, addr + len)` from the ranges (the munmap notifier).
    fn defer_unmap(&self, addr: usize, len: usize) {
        let start = (addr >> PAGE_SHIFT) as PageNo;
        let last = ((addr + len) >> PAGE_SHIFT) as PageNo - 1;
        self.state
            .lock()
            .deferred
            .push(DeferredOp::Unmap { start, last });
    }
}

/// `svm_range_is_valid`: every page of `[start, last]` must lie in an ordinary mapping of
/// the process, with no hole and no device (I/O, PFN) mapping → else EFAULT.
fn check_mapped(start: PageNo, last: PageNo) -> Result<()> {
    let mut addr = (start << PAGE_SHIFT) as usize;
    let end = ((last + 1) << PAGE_SHIFT) as usize;
    while addr < end {
        let v = vma::lookup(addr, false)
            .map_err(|errno| Error::Sys {
                call: "PROCMAP_QUERY",
                errno,
            })?
            .ok_or(Error::NotMapped { addr: addr as u64 })?;
        if v.kind == vma::VmaKind::Device {
            return Err(Error::DeviceMapping {
                addr: v.start as u64,
                name: "I/O or PFN mapping".into(),
            });
        }
        addr = v.end;
    }
    Ok(())
}

/// Entry checks of the SVM ioctl: start and size non-zero, 4 KiB aligned, and
/// `start + size` without overflow. Returns the inclusive page interval.
fn check_interval(start: u64, size: u64) -> Result<(PageNo, PageNo)> {
    let page = PAGE_SIZE as u64 - 1;
    let bad = Error::BadInterval { start, size };
    if start & page != 0 || size & page != 0 || start == 0 || size == 0 {
        return Err(bad);
    }
    let end = start
        .checked_add(size)
        .filter(|&e| e <= usize::MAX as u64)
        .ok_or(bad)?;
    Ok((start >> PAGE_SHIFT, (end >> PAGE_SHIFT) - 1))
}

/// A user-space shared-virtual-memory instance: emulated GPUs plus the SVM ranges of the
/// process memory it was given, with KFD's SET_ATTR / GET_ATTR semantics.
///
/// Several instances can live in one process; each manages only the ranges it was given.
#[derive(Debug)]
pub struct Svm {
    inner: Arc<SvmInner>,
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

    /// The GPU ids of this instance, in index order: distinct, never 0 or `0xffffffff`.
    pub fn gpu_ids(&self) -> Vec<GpuId> {
        self.inner.gpus.iter().map(|g| g.id).collect()
    }

    /// VRAM per GPU in bytes.
    pub fn vram_bytes(&self, gpu: GpuId) -> Option<u64> {
        self.inner
            .gpus
            .iter()
            .find(|g| g.id == gpu)
            .map(|g| g.vram_bytes)
    }

    /// The largest range SET_ATTR creates in a gap, in bytes (1/32 of the smallest VRAM,
    /// clamped to [2 MiB, 1 GiB], a power of two).
    pub fn max_range_bytes(&self) -> usize {
        (self.inner.max_range_pages as usize) << PAGE_SHIFT
    }

    /// Maps `len` bytes (rounded up to 4 KiB) of anonymous private memory, 2 MiB aligned.
    /// The memory is unmapped, and its ranges dropped, when the buffer is dropped.
    pub fn alloc(&self, len: usize) -> Result<SvmBuffer> {
        if len == 0 {
            return Err(Error::InvalidConfig("cannot allocate 0 bytes".into()));
        }
        let len = len.checked_next_multiple_of(PAGE_SIZE).ok_or(Error::Sys {
            call: "mmap",
            errno: libc::ENOMEM,
        })?;
        let addr = sys::mmap::map_anon_aligned(len, ALLOC_ALIGN)?;
        Ok(SvmBuffer {
            addr,
            len,
            owner: Arc::downgrade(&self.inner),
        })
    }

    /// KFD SET_ATTR: applies `attrs`, in order, to every page of `[addr, addr + size)`.
    ///
    /// `addr` and `size` must be non-zero multiples of 4 KiB and every page must be mapped
    /// (any anonymous, file or shared mapping; not a device mapping). A rejected call
    /// changes nothing.
    pub fn set_attr(&self, addr: usize, size: usize, attrs: &[Attr]) -> Result<()> {
        let (start, last) = check_interval(addr as u64, size as u64)?;
        self.inner.set_attr(start, last, attrs)
    }

    /// KFD GET_ATTR: fills each entry of `attrs` in place with the aggregate over
    /// `[addr, addr + size)`. An `Access(g)` query comes back as `Access(g)`,
    /// `AccessInPlace(g)` or `NoAccess(g)`.
    pub fn get_attr(&self, addr: usize, size: usize, attrs: &mut [Attr]) -> Result<()> {
        let mut raw: Vec<RawAttr> = attrs.iter().map(|a| a.to_raw()).collect();
        let r = self.svm_ioctl(
            uapi::KFD_IOCTL_SVM_OP_GET_ATTR,
            addr as u64,
            size as u64,
            &mut raw,
        );
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
                let decoded = attrs
                    .iter()
                    .map(|r| Attr::from_raw(*r))
                    .collect::<Result<Vec<_>>>()?;
                self.inner.set_attr(first, last, &decoded)
            }
            uapi::KFD_IOCTL_SVM_OP_GET_ATTR => self.inner.get_attr(first, last, attrs),
            op => Err(Error::UnknownOp(op)),
        }
    }

    /// Whether GPU retry faults (XNACK) are on.
    pub fn xnack(&self) -> bool {
        self.inner.state.lock().xnack
    }

    /// Switches XNACK (`AMDKFD_IOC_SET_XNACK_MODE`): `EBUSY` while queues exist; the same
    /// mode is a no-op. Existing ranges keep their ACCESS bitmaps.
    pub fn set_xnack(&self, on: bool) -> Result<()> {
        let mut st = self.inner.state.lock();
        if st.queues > 0 {
            return Err(Error::Busy("XNACK mode cannot change while queues exist"));
        }
        st.xnack = on;
        Ok(())
    }

    /// Every SVM range, in address order.
    pub fn ranges(&self) -> Vec<RangeInfo> {
        let mut st = self.inner.state.lock();
        st.flush_deferred();
        let ids = |m: GpuMask| m.iter().map(|i| self.inner.gpus[i].id).collect::<Vec<_>>();
        st.tree
            .iter()
            .map(|r| RangeInfo {
                start: (r.start << PAGE_SHIFT) as usize,
                size: (r.npages() << PAGE_SHIFT) as usize,
                preferred_loc: r.attrs.preferred_loc,
                prefetch_loc: r.attrs.prefetch_loc,
                actual_loc: r.actual_loc,
                vram_pages: r.vram_pages as usize,
                granularity: u32::from(r.attrs.granularity),
                flags: r.attrs.flags,
                access: ids(r.attrs.access),
                access_in_place: ids(r.attrs.access_in_place),
                mapped_to_gpu: r.mapped_to_gpu,
            })
            .collect()
    }

    /// Number of SVM ranges (cheaper than `ranges().len()`).
    pub fn range_count(&self) -> usize {
        let mut st = self.inner.state.lock();
        st.flush_deferred();
        st.tree.len()
    }
}

/// Anonymous private memory from [`Svm::alloc`]: 2 MiB aligned, a whole number of pages,
/// unmapped on drop. The CPU uses it through ordinary loads and stores.
#[derive(Debug)]
pub struct SvmBuffer {
    addr: usize,
    len: usize,
    owner: Weak<SvmInner>,
}

impl SvmBuffer {
    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// The first byte's address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes (a multiple of 4 KiB).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a buffer holds at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check_bounds(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "access [{offset:#x}, +{len:#x}) outside a buffer of {:#x} bytes",
            self.len
        );
    }

    /// CPU store of `data` at byte `offset` (a plain memcpy; faults like any CPU access).
    /// Panics when the bytes fall outside the buffer.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        self.check_bounds(offset, data.len());
        sys::mmap::copy_to(self.addr + offset, data);
    }

    /// CPU load of `out.len()` bytes at byte `offset`. Panics outside the buffer.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.check_bounds(offset, out.len());
        sys::mmap::copy_from(self.addr + offset, out);
    }

    /// CPU store of `byte` over `[offset, offset + len)`. Panics outside the buffer.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check_bounds(offset, len);
        sys::mmap::fill(self.addr + offset, len, byte);
    }
}

impl Drop for SvmBuffer {
    fn drop(&mut self) {
        // As the MMU notifier does for munmap: queue the range bookkeeping first, so that
        // no later SET_ATTR / GET_ATTR can see ranges of memory that is gone.
        if let Some(owner) = self.owner.upgrade() {
            owner.defer_unmap(self.addr, self.len);
        }
        if let Err(e) = sys::mmap::unmap(self.addr, self.len) {
            debug_assert!(false, "munmap of an SvmBuffer failed: {e}");
        }
    }
}
