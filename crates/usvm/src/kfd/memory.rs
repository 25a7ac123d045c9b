//! KFD memory: buffer objects (`hsaKmtAllocMemory`) and registered user memory
//! (`hsaKmtRegisterMemory`, the kernel's userptr BOs). Unlike SVM ranges they never
//! migrate: system memory stays in RAM, VRAM stays in VRAM (its BO is pinned, never
//! evicted). A GPU sees them only once mapped (`hsaKmtMapMemoryToGPU*`), through entries
//! of its page table written here. Their pages are marked in the SVM instance so that
//! SET_ATTR / GET_ATTR over them fail with EADDRINUSE and a GPU fault on them creates no
//! SVM range, as in the kernel.

use super::{KfdError, KfdResult};
use crate::addr::PageNo;
use crate::addr::Pages;
use crate::gpu::GpuIdx;
use crate::gpu::pagetable::{Pte, PteFlags};
use crate::gpu::vram::{Bo, Clear, Reservation};
use crate::range::GpuMask;
use crate::svm::Svm;
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE};
use parking_lot::Mutex;
use std::collections::BTreeMap;

bitflags::bitflags! {
    /// `HsaMemFlags` (the bits usvm looks at; any others are kept and ignored).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MemFlags: u32 {
        /// VRAM when the node is a GPU (pinned, not pageable).
        const NON_PAGED = 1 << 0;
        /// GPUs map it read-only.
        const READ_ONLY = 1 << 3;
        /// The CPU may access it.
        const HOST_ACCESS = 1 << 6;
        /// GPUs may execute it.
        const EXECUTE_ACCESS = 1 << 12;
        /// Coarse grained: coherent only at dispatch boundaries.
        const COARSE_GRAIN = 1 << 13;
        /// Memory of an AQL queue.
        const AQL_QUEUE_MEMORY = 1 << 14;
        /// At the address the caller passes in.
        const FIXED_ADDRESS = 1 << 15;
        /// No NUMA binding.
        const NO_NUMA_BIND = 1 << 16;
        /// Uncached on the GPU.
        const UNCACHED = 1 << 17;
        /// Memory without a GPU virtual address.
        const NO_ADDRESS = 1 << 18;
        /// A virtual address reservation only, no memory.
        const ONLY_ADDRESS = 1 << 19;
        /// Physically contiguous.
        const CONTIGUOUS = 1 << 22;
    }
}

/// What backs a KFD buffer.
#[derive(Debug)]
enum Backing {
    /// Anonymous memory usvm mapped for it (unmapped on free).
    System,
    /// A pinned VRAM BO of one GPU; the CPU sees its pages at the buffer's address (the
    /// emulated VRAM is host memory: a large BAR).
    Vram { bo: Bo, _reservation: Reservation },
    /// The application's own memory (registered; left alone on deregister).
    User,
    /// usvm's own memory every GPU maps (the event page); the application cannot free it.
    Internal,
}

/// One KFD buffer.
#[derive(Debug)]
struct Buffer {
    len: usize,
    flags: MemFlags,
    backing: Backing,
    /// The GPUs (by index) whose page tables map it.
    mapped: GpuMask,
}

/// What a pointer belongs to ([`Memory::lookup`], for `hsaKmtQueryPointerInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    /// The buffer's first byte.
    pub addr: usize,
    /// Its length.
    pub len: usize,
    /// Its flags.
    pub flags: MemFlags,
    /// The GPU index whose VRAM holds it, if any.
    pub vram_gpu: Option<usize>,
    /// Registered user memory.
    pub user: bool,
    /// GPUs (by index) that map it.
    pub mapped: Vec<usize>,
}

/// The KFD buffers of the process, by start address.
#[derive(Debug, Default)]
pub struct Memory {
    bufs: Mutex<BTreeMap<usize, Buffer>>,
}

fn pages(addr: usize, len: usize) -> (PageNo, PageNo) {
    let s = PageNo::of_addr(addr);
    (s, s + (len >> PAGE_SHIFT) as u64 - 1)
}

impl Memory {
    /// Marks `[addr, addr + len)` as KFD memory in the SVM instance; `EADDRINUSE` (nothing
    /// marked) when an SVM range covers some of it.
    fn claim(svm: &Svm, addr: usize, len: usize) -> KfdResult<()> {
        let inner = svm.inner();
        let (s, l) = pages(addr, len);
        let st = inner.lock_state();
        if let Some(r) = st.tree.overlapping(Pages::new(s, l)).next() {
            let at = r.start.max(s).addr() as u64;
            return Err(crate::Error::AddressInUse { addr: at }.into());
        }
        inner.kfd_bos.lock().insert(Pages::new(s, l));
        Ok(())
    }

    fn unclaim(svm: &Svm, addr: usize, len: usize) {
        let (s, l) = pages(addr, len);
        svm.inner().kfd_bos.lock().remove(Pages::new(s, l));
    }

    fn overlaps(bufs: &BTreeMap<usize, Buffer>, addr: usize, len: usize) -> Option<usize> {
        let end = addr + len;
        if let Some((&a, b)) = bufs.range(..end).next_back()
            && a + b.len > addr
        {
            return Some(a);
        }
        None
    }

    /// `hsaKmtAllocMemory`: `size` bytes (rounded up to pages) on `node` (0: system memory;
    /// a GPU node: system memory the GPU uses, or its VRAM with `NON_PAGED`). `gpu` is the
    /// node's GPU index (None for the CPU node). VRAM counts against the GPU's VRAM: when
    /// it is exhausted the call fails with `NoMemory`.
    pub fn alloc(&self, svm: &Svm, gpu: Option<usize>, size: u64, flags: MemFlags) -> KfdResult<usize> {
        if size == 0 {
            return Err(KfdError::InvalidParameter("size 0"));
        }
        if flags.intersects(MemFlags::NO_ADDRESS | MemFlags::ONLY_ADDRESS | MemFlags::FIXED_ADDRESS) {
            return Err(KfdError::NotSupported("NoAddress, OnlyAddress and FixedAddress allocations"));
        }
        let len = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_next_multiple_of(PAGE_SIZE))
            .ok_or(KfdError::NoMemory)?;
        let (addr, backing) = match gpu {
            Some(g) if flags.contains(MemFlags::NON_PAGED) => {
                let dev = &svm.inner().devs.gpus[g];
                let reservation = dev.vram.reserve(len as u64).map_err(|_| KfdError::NoMemory)?;
                let bo =
                    dev.vram.alloc((len / PAGE_SIZE) as u64, Clear::Yes).map_err(|_| KfdError::NoMemory)?;
                // The CPU and every GPU see the buffer at one address: the first page of a
                // contiguous BO. A fragmented VRAM cannot give one.
                if bo.runs().len() != 1 {
                    return Err(KfdError::NoMemory);
                }
                bo.pin();
                (bo.host_addr(0), Backing::Vram { bo, _reservation: reservation })
            }
            _ => {
                let a = sys::mmap::map_anon_aligned(len, PAGE_SIZE).map_err(|_| KfdError::NoMemory)?;
                (a, Backing::System)
            }
        };
        if let Err(e) = Self::claim(svm, addr, len) {
            if matches!(backing, Backing::System) {
                // SAFETY: the system memory mapped above for this call, not handed out.
                let _ = unsafe { sys::mmap::unmap(addr, len) };
            }
            return Err(e);
        }
        self.bufs.lock().insert(addr, Buffer { len, flags, backing, mapped: GpuMask::EMPTY });
        Ok(addr)
    }

    /// `hsaKmtFreeMemory`: unmaps the buffer at `addr` from every GPU and frees it.
    pub fn free(&self, svm: &Svm, addr: usize) -> KfdResult<()> {
        let mut bufs = self.bufs.lock();
        match bufs.get(&addr) {
            Some(b) if matches!(b.backing, Backing::System | Backing::Vram { .. }) => {}
            _ => return Err(KfdError::NotRegistered(addr)),
        }
        let b = bufs.remove(&addr).expect("checked");
        drop(bufs);
        Self::release(svm, addr, b);
        Ok(())
    }

    fn release(svm: &Svm, addr: usize, b: Buffer) {
        Self::unmap_from(svm, addr, b.len, b.mapped);
        Self::unclaim(svm, addr, b.len);
        if matches!(b.backing, Backing::System) {
            // SAFETY: memory this KFD allocated, unmapped from every GPU above; the
            // application freed it (`hsaKmtFreeMemory`) and may not use it again.
            let _ = unsafe { sys::mmap::unmap(addr, b.len) };
        }
        // A VRAM BO goes back to the allocator when `b` drops, after the unmap.
    }

    /// `hsaKmtRegisterMemory`: the application's memory `[addr, addr + size)` becomes a KFD
    /// buffer (a userptr BO) that GPUs can map. It must be mapped, and no SVM range may cover
    /// it (`EADDRINUSE`).
    pub fn register(&self, svm: &Svm, addr: usize, size: u64) -> KfdResult<()> {
        if addr == 0 || size == 0 {
            return Err(KfdError::InvalidParameter("null address or zero size"));
        }
        let end = (addr as u64).checked_add(size).ok_or(KfdError::InvalidParameter("interval overflows"))?;
        let start = addr & !(PAGE_SIZE - 1);
        let len = (end as usize).next_multiple_of(PAGE_SIZE) - start;
        let mut bufs = self.bufs.lock();
        if let Some(a) = Self::overlaps(&bufs, start, len) {
            return Err(KfdError::AlreadyRegistered(a));
        }
        let (s, l) = pages(start, len);
        for p in sys::vma::pieces(Pages::new(s, l)) {
            p.map_err(KfdError::Sys)?;
        }
        Self::claim(svm, start, len)?;
        bufs.insert(
            start,
            Buffer { len, flags: MemFlags::HOST_ACCESS, backing: Backing::User, mapped: GpuMask::EMPTY },
        );
        Ok(())
    }

    /// `hsaKmtDeregisterMemory`: forgets a registered (or allocated) buffer's registration;
    /// registered user memory is unmapped from the GPUs and left to the application.
    pub fn deregister(&self, svm: &Svm, addr: usize) -> KfdResult<()> {
        let mut bufs = self.bufs.lock();
        let start = addr & !(PAGE_SIZE - 1);
        match bufs.get(&start) {
            Some(b) if matches!(b.backing, Backing::User) => {
                let b = bufs.remove(&start).expect("checked");
                drop(bufs);
                Self::release(svm, start, b);
                Ok(())
            }
            // Memory from AllocMemory is registered by nature: nothing to undo.
            Some(b) if !matches!(b.backing, Backing::Internal) => Ok(()),
            _ => Err(KfdError::NotRegistered(addr)),
        }
    }

    /// usvm's own memory `[addr, addr + len)` that every GPU maps (read-write).
    pub(crate) fn adopt_system(&self, svm: &Svm, addr: usize, len: usize) -> KfdResult<()> {
        Self::claim(svm, addr, len)?;
        let mut b =
            Buffer { len, flags: MemFlags::HOST_ACCESS, backing: Backing::Internal, mapped: GpuMask::EMPTY };
        let all: Vec<usize> = (0..svm.inner().devs.gpus.len()).collect();
        Self::map_on(svm, addr, &mut b, &all);
        self.bufs.lock().insert(addr, b);
        Ok(())
    }

    /// `hsaKmtMapMemoryToGPU(Nodes)`: maps the buffer that starts at `addr` on the GPUs
    /// `gpus` (by index).
    pub fn map(&self, svm: &Svm, addr: usize, gpus: &[usize]) -> KfdResult<()> {
        let mut bufs = self.bufs.lock();
        let b = bufs.get_mut(&(addr & !(PAGE_SIZE - 1))).ok_or(KfdError::NotRegistered(addr))?;
        Self::map_on(svm, addr & !(PAGE_SIZE - 1), b, gpus);
        Ok(())
    }

    fn map_on(svm: &Svm, addr: usize, b: &mut Buffer, gpus: &[usize]) {
        let f = PteFlags {
            writable: !b.flags.contains(MemFlags::READ_ONLY),
            exec: b.flags.contains(MemFlags::EXECUTE_ACCESS),
            coherent: b.flags.contains(MemFlags::UNCACHED) || !b.flags.contains(MemFlags::COARSE_GRAIN),
        };
        let (s, _) = pages(addr, b.len);
        let n = (b.len / PAGE_SIZE) as u64;
        for &g in gpus {
            let pt = &svm.inner().devs.gpus[g].pt;
            match &b.backing {
                Backing::Vram { bo, .. } => pt.map(s, n, |i| Pte::vram(bo.gpu(), bo.vram_page(i), f)),
                _ => pt.map(s, n, |_| Pte::system(f)),
            }
            b.mapped.insert(GpuIdx::new(g));
        }
    }

    /// `hsaKmtUnmapMemoryToGPU`: unmaps the buffer that starts at `addr` from every GPU.
    pub fn unmap(&self, svm: &Svm, addr: usize) -> KfdResult<()> {
        let mut bufs = self.bufs.lock();
        let start = addr & !(PAGE_SIZE - 1);
        let b = bufs.get_mut(&start).ok_or(KfdError::NotRegistered(addr))?;
        if matches!(b.backing, Backing::Internal) {
            return Err(KfdError::NotRegistered(addr));
        }
        Self::unmap_from(svm, start, b.len, b.mapped);
        b.mapped = GpuMask::EMPTY;
        Ok(())
    }

    fn unmap_from(svm: &Svm, addr: usize, len: usize, gpus: GpuMask) {
        let (s, l) = pages(addr, len);
        for g in gpus.iter() {
            svm.inner().devs.gpus[g].pt.unmap(Pages::new(s, l));
        }
    }

    /// The buffer that holds `addr`, if any.
    pub fn lookup(&self, addr: usize) -> Option<BufferInfo> {
        let bufs = self.bufs.lock();
        let (&a, b) = bufs.range(..=addr).next_back()?;
        (addr < a + b.len).then(|| BufferInfo {
            addr: a,
            len: b.len,
            flags: b.flags,
            vram_gpu: match &b.backing {
                Backing::Vram { bo, .. } => Some(bo.gpu().get()),
                _ => None,
            },
            user: matches!(b.backing, Backing::User),
            mapped: b.mapped.iter().map(GpuIdx::get).collect(),
        })
    }

    /// Frees every buffer (closing the KFD).
    pub(crate) fn release_all(&self, svm: &Svm) {
        let all = std::mem::take(&mut *self.bufs.lock());
        for (a, b) in all {
            Self::release(svm, a, b);
        }
    }
}
