//! The emulated GPUs of an instance, behind the device interface the SVM layer uses.
//!
//! Each [`Device`] has VRAM ([`vram`]), a copy engine ([`sdma`]), a page table
//! ([`pagetable`]) and a queue scheduler that can be evicted and restored (reference
//! counted, as KFD's `evict_process_queues` / `restore_process_queues`). Device accesses
//! ([`Devices::access`]) translate every page through the GPU's page table:
//!
//! ```text
//!  gpu_read / gpu_write / KernelCtx
//!     | wait while the GPU's queues are evicted
//!     | (write) copy the caller's bytes into a bounce buffer      <- no lock held
//!     | page-table read lock: translate every page of the chunk
//!     |    invalid / read-only -> drop the lock, GPU fault hook (XNACK on: restore,
//!     |                           XNACK off: fatal VM fault, EFAULT), retry the chunk
//!     |    copy between the bounce buffer and system / VRAM pages
//!     | (read) copy the bounce buffer to the caller               <- no lock held
//! ```
//!
//! The caller's own buffer is only touched with no lock held, so a CPU fault on it (its
//! data in VRAM) can migrate it, which needs the page-table write lock, without deadlock.

mod buddy;
pub mod fence;
pub mod isa;
pub mod pagetable;
pub mod queue;
pub mod sdma;
pub mod vram;

/// The index of a GPU in its instance: its place in [`Devices::gpus`] and in the per-range
/// GPU masks (not its KFD gpu id, [`crate::GpuId`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuIdx(usize);

impl GpuIdx {
    /// GPU number `i`.
    pub const fn new(i: usize) -> GpuIdx {
        GpuIdx(i)
    }

    /// The index as an integer.
    pub const fn get(self) -> usize {
        self.0
    }

    /// The first `n` GPUs, in order.
    pub fn all(n: usize) -> impl DoubleEndedIterator<Item = GpuIdx> + Clone {
        (0..n).map(GpuIdx)
    }
}

impl std::fmt::Display for GpuIdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> std::ops::Index<GpuIdx> for Vec<T> {
    type Output = T;
    fn index(&self, i: GpuIdx) -> &T {
        &self[i.0]
    }
}

impl<T> std::ops::IndexMut<GpuIdx> for Vec<T> {
    fn index_mut(&mut self, i: GpuIdx) -> &mut T {
        &mut self[i.0]
    }
}

impl<T> std::ops::Index<GpuIdx> for [T] {
    type Output = T;
    fn index(&self, i: GpuIdx) -> &T {
        &self[i.0]
    }
}

use crate::addr::{PageNo, Pages};
use crate::attr::GpuId;
use crate::error::{Error, Result};
use crate::events::{EventHub, EventKind, EvictTrigger};
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE};
use pagetable::{PageTable, Target};
use parking_lot::Mutex;
use std::sync::Arc;

/// Device accesses move at most this many bytes per page-table lock hold.
pub const ACCESS_CHUNK_BYTES: usize = 64 << 10;
/// Device-side copies between VRAM pages move at most this many bytes per lock hold.
pub const COPY_CHUNK_BYTES: usize = 8 << 20;
/// A chunk that still faults this long after its first fault, although every fault was
/// handled, is a fatal fault: an access never hangs.
pub const FAULT_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// After this many handled faults in a row, the access sleeps a little between retries
/// (a fault deduplicated by the 2 ms window resolves only once the window has passed).
pub const FAULT_RETRY_SPIN: u32 = 8;

/// What the SVM layer does when a device access finds no usable mapping: KFD's
/// `svm_range_restore_pages` under XNACK on, a fatal VM fault under XNACK off.
pub trait GpuFaultHandler: Send + Sync {
    /// Handles a fault of GPU `gpu` at byte address `addr`. `Ok` means "mapped now, retry
    /// the access"; `Err` is a fatal fault returned to the accessing code.
    fn gpu_fault(&self, gpu: GpuIdx, addr: usize, write: bool) -> Result<()>;

    /// Applies the application's page-table changes (munmap, MADV_DONTNEED, mremap) whose
    /// events were read but not applied yet: a device access that starts after the
    /// application's call returned must not use the mappings that call invalidated.
    /// Called only when [`Devices::app_changes_pending`] says so.
    fn settle(&self);
}

/// The queue scheduler's core (`Sched`), shared with the shuttle models of
/// `tests/protocols`, which include the same file with model-checked primitives.
mod sched {
    use parking_lot::{Condvar, Mutex};
    use std::sync::atomic::{AtomicU32, Ordering};
    include!("sched_core.rs");
}
use sched::Sched;

/// Queues held by [`Devices::try_hold_all`]; released (silently) on drop.
#[derive(Debug)]
pub struct QueueHold {
    devs: Arc<Devices>,
    held: usize,
}

impl Drop for QueueHold {
    fn drop(&mut self) {
        for d in &self.devs.gpus[..self.held] {
            d.sched.restore();
        }
    }
}

/// One emulated GPU.
#[derive(Debug)]
pub struct Device {
    /// The KFD gpu_id user space sees.
    pub id: GpuId,
    /// Its VRAM.
    pub vram: vram::VramManager,
    /// Its copy engine.
    pub sdma: sdma::CopyEngine,
    /// Its page table.
    pub pt: PageTable,
    sched: Sched,
    /// Suspensions asked for through the API (`Svm::suspend_queues`) not yet undone: only
    /// these may be undone through the API, never an eviction of usvm's own.
    pub(crate) user_suspends: std::sync::atomic::AtomicU32,
}

/// All GPUs of one instance, plus the hooks they report to.
pub struct Devices {
    /// The GPUs, by index.
    pub gpus: Vec<Device>,
    /// Host address of each GPU's VRAM, by index (for peer-VRAM entries).
    vram_base: Vec<usize>,
    /// Events and counters.
    pub events: Arc<EventHub>,
    /// All GPUs are connected by XGMI (one hive): they map each other's VRAM.
    hive: bool,
    fault: Mutex<Option<std::sync::Weak<dyn GpuFaultHandler>>>,
    /// Set by the SVM layer while its fault reader is reading an event (the application's
    /// call may return as soon as the kernel hands the event over) ...
    pub(crate) reading_event: std::sync::atomic::AtomicBool,
    /// ... and while changes read from events wait to be applied: a device access then
    /// asks the fault handler to [`GpuFaultHandler::settle`] first. Two loads on the
    /// common path, nothing more.
    pub(crate) changes_pending: std::sync::atomic::AtomicBool,
    /// When each GPU made device accesses, in milliseconds (for the diagnosis of wasted
    /// prefetches).
    access_log: Vec<AccessLog>,
}

/// Where and when a GPU made device accesses: (millisecond of `clock_ns`, 2 MiB block of
/// the address) pairs, the newest [`ACCESS_LOG_ENTRIES`], a pair noted once however many
/// accesses repeat it (one clock read per access).
#[derive(Debug, Default)]
struct AccessLog {
    last: std::sync::atomic::AtomicU64,
    seen: Mutex<std::collections::VecDeque<(u64, u64)>>,
}

/// (millisecond, block) pairs kept per GPU.
pub const ACCESS_LOG_ENTRIES: usize = 1 << 15;
/// log2 of the blocks the access log notes addresses in (2 MiB).
pub const ACCESS_LOG_BLOCK_SHIFT: u32 = 21;

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices").field("gpus", &self.gpus).finish()
    }
}

/// The direction and buffer of a device access.
pub enum Access<'a> {
    /// Device load into this buffer.
    Read(&'a mut [u8]),
    /// Device store of these bytes.
    Write(&'a [u8]),
}

impl Devices {
    /// `ids.len()` GPUs with `vram_bytes` of VRAM each.
    pub fn new(ids: &[GpuId], vram_bytes: u64, hive: bool, events: Arc<EventHub>) -> Result<Self> {
        let mut gpus = Vec::with_capacity(ids.len());
        for (idx, &id) in ids.iter().enumerate() {
            gpus.push(Device {
                id,
                vram: vram::VramManager::new(GpuIdx::new(idx), vram_bytes)?,
                sdma: sdma::CopyEngine::new(GpuIdx::new(idx))?,
                pt: PageTable::new(),
                sched: Sched::default(),
                user_suspends: std::sync::atomic::AtomicU32::new(0),
            });
        }
        let vram_base = gpus.iter().map(|g| g.vram.base()).collect();
        Ok(Devices {
            gpus,
            vram_base,
            events,
            hive,
            fault: Mutex::new(None),
            reading_event: std::sync::atomic::AtomicBool::new(false),
            changes_pending: std::sync::atomic::AtomicBool::new(false),
            access_log: ids.iter().map(|_| AccessLog::default()).collect(),
        })
    }

    /// Installs the GPU fault handler (the SVM layer).
    pub fn set_fault_handler(&self, h: std::sync::Weak<dyn GpuFaultHandler>) {
        *self.fault.lock() = Some(h);
    }

    /// Whether the application's page-table changes may not all be applied yet.
    pub fn app_changes_pending(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.reading_event.load(SeqCst) || self.changes_pending.load(SeqCst)
    }

    /// Whether GPU `b` can map GPU `a`'s VRAM: the same GPU, or both in the XGMI hive.
    pub fn same_hive(&self, a: GpuIdx, b: GpuIdx) -> bool {
        a == b || self.hive
    }

    /// Host address of VRAM page `page` of GPU `gpu`.
    pub fn vram_addr(&self, gpu: GpuIdx, page: u64) -> usize {
        self.vram_base[gpu] + page as usize * PAGE_SIZE
    }

    /// Evicts the queues of GPU `gpu` (reference counted): kernels pause before their next
    /// memory access, device accesses wait, and this call returns once no access of the
    /// GPU is in flight. Emits QUEUE_EVICTION.
    pub fn evict_queues(&self, gpu: GpuIdx, trigger: EvictTrigger) {
        let d = &self.gpus[gpu];
        self.events.emit(|| EventKind::QueueEviction { gpu: d.id, trigger });
        d.sched.evict();
    }

    /// Restores the queues of GPU `gpu` once as many times as they were evicted; emits
    /// QUEUE_RESTORE (`R` when `rescheduled`: the queues stay evicted, a retry is coming).
    pub fn restore_queues(&self, gpu: GpuIdx, rescheduled: bool) {
        let d = &self.gpus[gpu];
        self.events.emit(|| EventKind::QueueRestore { gpu: d.id, rescheduled });
        if rescheduled {
            return;
        }
        d.sched.restore();
    }

    /// Holds every GPU's queues without waiting and without events: `None` when a device
    /// access is in flight on one of them (nothing is held then). While the hold lives, no
    /// device access runs, so its holder can invalidate (evict queues, write page tables)
    /// without waiting for one. For the fault reader, which must never wait for a device
    /// access: one may be waiting for it.
    pub fn try_hold_all(self: &Arc<Self>) -> Option<QueueHold> {
        let mut held = 0;
        for d in &self.gpus {
            if !d.sched.try_evict() {
                break;
            }
            held += 1;
        }
        let hold = QueueHold { devs: self.clone(), held };
        (held == self.gpus.len()).then_some(hold)
    }

    /// Whether GPU `gpu`'s queues are evicted.
    pub fn queues_evicted(&self, gpu: GpuIdx) -> bool {
        self.gpus[gpu].sched.is_evicted()
    }

    /// Marks a device access of GPU `gpu` in flight, first waiting while its queues are
    /// evicted.
    fn enter(&self, gpu: GpuIdx) {
        self.gpus[gpu].sched.enter();
    }

    /// Ends a device access of GPU `gpu`; wakes an eviction waiting for it.
    fn leave(&self, gpu: GpuIdx) {
        self.gpus[gpu].sched.leave();
    }

    /// Notes that GPU `gpu` accesses `[addr, addr + len)` now.
    fn note_access(&self, gpu: GpuIdx, addr: usize, len: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let log = &self.access_log[gpu];
        let ms = crate::events::clock_ns() / 1_000_000;
        let (first, last) =
            (addr >> ACCESS_LOG_BLOCK_SHIFT, addr.saturating_add(len.max(1) - 1) >> ACCESS_LOG_BLOCK_SHIFT);
        let key = ms << 32 ^ (first as u64) ^ ((last as u64) << 16);
        if log.last.swap(key, Relaxed) == key {
            return;
        }
        let mut q = log.seen.lock();
        for block in first..=last.min(first + 64) {
            let e = (ms, block as u64);
            if !q.iter().rev().take(8).any(|&x| x == e) {
                if q.len() == ACCESS_LOG_ENTRIES {
                    q.pop_front();
                }
                q.push_back(e);
            }
        }
    }

    /// Whether GPU `gpu` accessed some of `[start, end)` between `clock_ns` times `a` and `b`
    /// (2 MiB blocks, milliseconds; true when the log no longer reaches back that far:
    /// nothing is claimed unseen).
    pub fn accessed_between(&self, gpu: GpuIdx, (a, b): (u64, u64), (start, end): (usize, usize)) -> bool {
        let (a, b) = (a / 1_000_000, b / 1_000_000);
        let (first, last) = (
            (start >> ACCESS_LOG_BLOCK_SHIFT) as u64,
            ((end.max(start + 1) - 1) >> ACCESS_LOG_BLOCK_SHIFT) as u64,
        );
        let q = self.access_log[gpu].seen.lock();
        if q.len() == ACCESS_LOG_ENTRIES && q.front().is_some_and(|&(m, _)| m > a) {
            return true;
        }
        let i = q.partition_point(|&(m, _)| m < a);
        q.range(i..).take_while(|&&(m, _)| m <= b).any(|&(_, blk)| blk >= first && blk <= last)
    }

    /// A device load or store of GPU `gpu` at byte address `addr` (see the module docs).
    pub fn access(&self, gpu: GpuIdx, addr: usize, mut buf: Access<'_>) -> Result<()> {
        let len = match &buf {
            Access::Read(b) => b.len(),
            Access::Write(b) => b.len(),
        };
        self.note_access(gpu, addr, len);
        addr.checked_add(len).ok_or(Error::BadInterval { start: addr as u64, size: len as u64 })?;
        if self.app_changes_pending() {
            let handler = self.fault.lock().as_ref().and_then(|w| w.upgrade());
            if let Some(h) = handler {
                h.settle();
            }
        }
        // One bounce buffer per thread, kept: allocating and zeroing 64 KiB per access
        // would cost as much as the copy itself.
        thread_local! {
            static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut bounce = BOUNCE.with(|b| std::mem::take(&mut *b.borrow_mut()));
        if bounce.len() < len.min(ACCESS_CHUNK_BYTES) {
            bounce.resize(len.min(ACCESS_CHUNK_BYTES), 0);
        }
        let r = self.access_with(gpu, addr, &mut buf, len, &mut bounce);
        BOUNCE.with(|b| *b.borrow_mut() = bounce);
        r
    }

    fn access_with(
        &self,
        gpu: GpuIdx,
        addr: usize,
        buf: &mut Access<'_>,
        len: usize,
        bounce: &mut [u8],
    ) -> Result<()> {
        let write = matches!(buf, Access::Write(_));
        let mut off = 0;
        let mut retries = 0;
        let mut first_fault = None;
        while off < len {
            let n = (len - off).min(ACCESS_CHUNK_BYTES);
            let b = &mut bounce[..n];
            if let Access::Write(src) = &buf {
                b.copy_from_slice(&src[off..off + n]);
            }
            self.enter(gpu);
            let copied = self.copy_chunk(gpu, addr + off, b, write);
            self.leave(gpu);
            // The pages before a faulting one are done, as on a GPU, which accesses memory
            // page by page: the access makes progress even when the pages of one chunk
            // cannot all be mapped at once (two granules that do not both fit in VRAM
            // would otherwise evict each other forever).
            let done = match copied {
                Ok(()) => n,
                Err((done, _)) => done,
            };
            if let Access::Read(dst) = buf {
                dst[off..off + done].copy_from_slice(&b[..done]);
            }
            off += done;
            if done > 0 {
                retries = 0;
                first_fault = None;
            }
            if let Err((_, fault_addr)) = copied {
                let since = *first_fault.get_or_insert_with(std::time::Instant::now);
                let handler = self.fault.lock().as_ref().and_then(|w| w.upgrade());
                match handler {
                    Some(h) if since.elapsed() < FAULT_RETRY_TIMEOUT => {
                        h.gpu_fault(gpu, fault_addr, write)?
                    }
                    _ => {
                        let id = self.gpus[gpu].id.0;
                        return Err(Error::GpuVmFault { gpu: id, addr: fault_addr as u64, write });
                    }
                }
                retries += 1;
                if retries > FAULT_RETRY_SPIN {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            }
        }
        Ok(())
    }

    /// A device-side copy of `len` bytes from `src` to `dst` through GPU `gpu`'s page table
    /// (an SDMA COPY_LINEAR). Where both sides of a chunk are VRAM (this GPU's or a peer's),
    /// the bytes go straight from page to page under one page-table read lock; anything
    /// else (system pages, a missing or read-only entry) goes through [`Self::access`],
    /// which faults as any device access does. The intervals must not overlap.
    pub fn copy(&self, gpu: GpuIdx, dst: usize, src: usize, len: usize) -> Result<()> {
        self.note_access(gpu, src, len);
        self.note_access(gpu, dst, len);
        dst.checked_add(len).ok_or(Error::BadInterval { start: dst as u64, size: len as u64 })?;
        src.checked_add(len).ok_or(Error::BadInterval { start: src as u64, size: len as u64 })?;
        let mut bounce = Vec::new();
        let mut off = 0;
        while off < len {
            let n = (len - off).min(COPY_CHUNK_BYTES);
            if self.app_changes_pending() || !self.copy_vram_chunk(gpu, dst + off, src + off, n) {
                bounce.resize(n.min(ACCESS_CHUNK_BYTES), 0);
                let m = bounce.len();
                self.access(gpu, src + off, Access::Read(&mut bounce[..m]))?;
                self.access(gpu, dst + off, Access::Write(&bounce[..m]))?;
                off += m;
                continue;
            }
            off += n;
        }
        Ok(())
    }

    /// Copies `n` bytes VRAM to VRAM when every page of both sides is a valid VRAM entry
    /// (the destination writable); false, having copied nothing, otherwise.
    fn copy_vram_chunk(&self, gpu: GpuIdx, dst: usize, src: usize, n: usize) -> bool {
        self.enter(gpu);
        let t = self.gpus[gpu].pt.read();
        let host = |a: usize, write: bool| {
            let pte = t.get(PageNo::of_addr(a));
            match pte.target() {
                Some(Target::Vram { gpu: owner, page }) if !write || pte.writable() => {
                    Some(self.vram_addr(owner, page) + (a & (PAGE_SIZE - 1)))
                }
                _ => None,
            }
        };
        let pages = |a: usize| (a >> PAGE_SHIFT)..=((a + n - 1) >> PAGE_SHIFT);
        let all = pages(src).all(|p| host(p << PAGE_SHIFT, false).is_some())
            && pages(dst).all(|p| host(p << PAGE_SHIFT, true).is_some());
        if all {
            // Runs that are contiguous on both sides; whole pages go through the GPU's copy
            // engine (two threads, streaming stores), anything else is copied here.
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            let mut off = 0;
            while off < n {
                let (s, d) = (src + off, dst + off);
                let k =
                    (PAGE_SIZE - (s & (PAGE_SIZE - 1))).min(PAGE_SIZE - (d & (PAGE_SIZE - 1))).min(n - off);
                let (hs, hd) = (host(s, false).expect("checked"), host(d, true).expect("checked"));
                match runs.last_mut() {
                    Some((rs, rd, len)) if *rs + *len == hs && *rd + *len == hd => *len += k,
                    _ => runs.push((hs, hd, k)),
                }
                off += k;
            }
            let paged = runs.iter().all(|&(s, d, l)| (s | d | l) & (PAGE_SIZE - 1) == 0);
            let ops: Vec<sdma::CopyOp> = runs
                .iter()
                .map(|&(s, d, l)| sdma::CopyOp { src: s, dst: d, npages: (l / PAGE_SIZE) as u64 })
                .collect();
            if !paged || self.gpus[gpu].sdma.copy_sync(&ops).1.is_err() {
                for &(s, d, l) in &runs {
                    // SAFETY: translated through the page table, whose read guard is held:
                    // VRAM pages of live BOs (freeing one clears its entries first, under
                    // the write lock), distinct source and destination pages.
                    unsafe { sys::mmap::copy(d, s, l) };
                }
            }
        }
        drop(t);
        self.leave(gpu);
        all
    }

    /// Translates and copies one chunk under the page-table read lock. On a missing or
    /// read-only mapping, copies the bytes before the faulting page only and returns how
    /// many they are with the faulting byte address.
    fn copy_chunk(
        &self,
        gpu: GpuIdx,
        addr: usize,
        b: &mut [u8],
        write: bool,
    ) -> std::result::Result<(), (usize, usize)> {
        let t = self.gpus[gpu].pt.read();
        let mut end = addr + b.len();
        let mut fault = None;
        for p in Pages::of_bytes(addr, end).iter() {
            let pte = t.get(p);
            if !pte.valid() || (write && !pte.writable()) {
                end = p.addr().max(addr);
                fault = Some(end);
                break;
            }
        }
        let mut off = 0;
        while off < end - addr {
            let a = addr + off;
            let p = PageNo::of_addr(a);
            let in_page = a & (PAGE_SIZE - 1);
            let mut n = (PAGE_SIZE - in_page).min(end - a);
            match t.get(p).target().expect("checked above") {
                Target::System => {
                    // The run of system pages from here, copied by the kernel, which checks
                    // the mapping and its permission: userfaultfd reports no mprotect, and
                    // the application may unmap or mprotect them at any moment, which must
                    // fault the GPU, not crash the process (a plain copy did).
                    while a + n < end && t.get(PageNo::of_addr(a + n)).target() == Some(Target::System) {
                        n += (PAGE_SIZE).min(end - a - n);
                    }
                    let done = sys::mmap::copy_checked(a, &mut b[off..off + n], write);
                    if done < n {
                        end = a + done;
                        fault = Some(end);
                        break;
                    }
                }
                Target::Vram { gpu: owner, page } => {
                    self.gpus[owner].vram.note_access(page);
                    let host = self.vram_addr(owner, page) + in_page;
                    let piece = &mut b[off..off + n];
                    // SAFETY: a VRAM page translated under the page table's read guard, so its
                    // BO stays allocated for the copy; `piece` is the caller's buffer.
                    unsafe {
                        if write {
                            sys::mmap::copy_to(host, piece);
                        } else {
                            sys::mmap::copy_from(host, piece);
                        }
                    }
                }
            }
            off += n;
        }
        match fault {
            Some(f) => Err((end - addr, f)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pagetable::{Pte, PteFlags};
    use super::*;

    const RW: PteFlags = PteFlags { writable: true, exec: false, coherent: true };

    fn devices(n: usize) -> Devices {
        let ids: Vec<GpuId> = (0..n).map(|i| GpuId(0x1111 * (i as u32 + 1))).collect();
        Devices::new(&ids, 16 << 20, false, Arc::new(EventHub::new(ids.clone()))).unwrap()
    }

    #[test]
    fn reads_and_writes_system_and_vram_pages() {
        let d = devices(2);
        let sys_mem = sys::mmap::map_anon_aligned(4 * PAGE_SIZE, PAGE_SIZE).unwrap();
        let base = PageNo::of_addr(sys_mem);
        // Pages 0, 1: system; page 2: VRAM of GPU 0; page 3: VRAM of GPU 1 (a peer).
        let bo0 = d.gpus[0].vram.alloc(1, vram::Clear::Yes).unwrap();
        let bo1 = d.gpus[1].vram.alloc(1, vram::Clear::Yes).unwrap();
        d.gpus[0].pt.map(base, 4, |i| match i {
            2 => Pte::vram(GpuIdx::new(0), bo0.vram_page(0), RW),
            3 => Pte::vram(GpuIdx::new(1), bo1.vram_page(0), RW),
            _ => Pte::system(RW),
        });
        let data: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        d.access(GpuIdx::new(0), sys_mem + 100, Access::Write(&data[100..])).unwrap();
        let mut back = vec![0u8; 4 * PAGE_SIZE - 200];
        d.access(GpuIdx::new(0), sys_mem + 150, Access::Read(&mut back)).unwrap();
        assert_eq!(back[..], data[150..4 * PAGE_SIZE - 50]);
        // The system pages are the process's own memory; the VRAM pages are not.
        let mut cpu = vec![0u8; 2 * PAGE_SIZE];
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_from(sys_mem, &mut cpu) };
        assert_eq!(cpu[100..], data[100..2 * PAGE_SIZE]);
        let mut v = vec![0u8; PAGE_SIZE];
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_from(bo1.host_addr(0), &mut v) };
        assert_eq!(v[..], data[3 * PAGE_SIZE..]);
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { sys::mmap::unmap(sys_mem, 4 * PAGE_SIZE).unwrap() };
    }

    #[test]
    fn unmapped_and_read_only_pages_are_fatal_without_a_handler() {
        let d = devices(1);
        let m = sys::mmap::map_anon_aligned(2 * PAGE_SIZE, PAGE_SIZE).unwrap();
        let base = PageNo::of_addr(m);
        d.gpus[0].pt.map(base, 1, |_| Pte::system(PteFlags { writable: false, ..RW }));
        let mut b = [0u8; 8];
        d.access(GpuIdx::new(0), m, Access::Read(&mut b)).unwrap();
        let e = d.access(GpuIdx::new(0), m, Access::Write(&b)).unwrap_err();
        assert_eq!(e.errno(), libc::EFAULT);
        let e = d.access(GpuIdx::new(0), m + PAGE_SIZE - 4, Access::Read(&mut b)).unwrap_err();
        assert_eq!(e, Error::GpuVmFault { gpu: 0x1111, addr: (m + PAGE_SIZE) as u64, write: false });
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { sys::mmap::unmap(m, 2 * PAGE_SIZE).unwrap() };
    }

    #[test]
    fn accesses_wait_while_queues_are_evicted() {
        let d = Arc::new(devices(1));
        let m = sys::mmap::map_anon_aligned(PAGE_SIZE, PAGE_SIZE).unwrap();
        d.gpus[0].pt.map(PageNo::of_addr(m), 1, |_| Pte::system(RW));
        d.evict_queues(GpuIdx::new(0), EvictTrigger::Svm);
        d.evict_queues(GpuIdx::new(0), EvictTrigger::Svm);
        let d2 = d.clone();
        let t = std::thread::spawn(move || d2.access(GpuIdx::new(0), m, Access::Write(&[1, 2, 3])));
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!t.is_finished(), "access ran while evicted");
        d.restore_queues(GpuIdx::new(0), false);
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert!(!t.is_finished(), "one restore of two evictions resumed the queues");
        d.restore_queues(GpuIdx::new(0), false);
        t.join().unwrap().unwrap();
        let mut b = [0u8; 3];
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_from(m, &mut b) };
        assert_eq!(b, [1, 2, 3]);
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { sys::mmap::unmap(m, PAGE_SIZE).unwrap() };
    }
}
