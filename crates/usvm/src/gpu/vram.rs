//! The VRAM manager of one emulated GPU, in TTM's role.
//!
//! VRAM is host memory: one `MAP_NORESERVE` reservation per GPU, committed page by page on
//! first write, so a GPU with 1 GiB of VRAM costs nothing until it holds data.
//!
//! ```text
//!   alloc(n) --> buddy allocator over 4 KiB pages (orders 0..=MAX_ORDER)
//!                | enough free pages?  yes -> runs, largest blocks first (contiguous
//!                |                             where possible), page i of the BO at
//!                |                             BO offset i
//!                | no  -> ENOMEM; `choose_victims` names the least recently used
//!                |        live BOs, which their owner (the SVM layer) moves out of
//!                |        VRAM (TTM_EVICTION) before it tries again
//!   Bo (Arc)  --> refcounted; the last drop returns its pages (marked dirty)
//!   reserve() --> accounting reservation of bytes, ENOSPC beyond VRAM size
//! ```
//!
//! Freshly allocated VRAM reads as zero: pages that held data before are zeroed when a BO
//! is allocated with [`Clear::Yes`]. A caller that overwrites every page itself (the
//! migration copy) allocates with [`Clear::No`] and zeroes only what it does not copy.

use crate::error::{Error, Result};
use crate::gpu::GpuIdx;
use crate::sys::{self, PAGE_SIZE};
use parking_lot::Mutex;
use std::collections::HashMap;

use super::buddy::Buddy;
pub use super::buddy::Run;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Whether a new BO must read as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clear {
    /// Zero every page that held data before (KFD's `VRAM_CLEARED`).
    Yes,
    /// The caller writes every page it will ever read.
    No,
}

/// Shared state of one GPU's VRAM (held by the manager and by every BO).
struct Pool {
    gpu: GpuIdx,
    base: usize,
    npages: u64,
    buddy: Mutex<Buddy>,
    /// Bytes reserved through [`VramManager::reserve`].
    reserved: AtomicU64,
    /// Live BOs for LRU eviction, by id.
    live: Mutex<HashMap<u64, Weak<BoInner>>>,
    next_id: AtomicU64,
    clock: AtomicU64,
    /// Fault injection: allocations left until one fails (0: none armed).
    fail_in: AtomicU64,
    /// Device accesses per [`HEAT_CHUNK_PAGES`] of VRAM (halved whenever as many victim
    /// choices as there are live BOs were made: an aging pass per rotation of the VRAM),
    /// when the placement rules choose victims by use ([`VramManager::count_accesses`]).
    heat: std::sync::OnceLock<Box<[AtomicU32]>>,
    /// Victim choices since the last aging pass.
    choices: AtomicU64,
}

/// VRAM pages per access counter of the frequency-aware victim choice (256 KiB).
pub const HEAT_CHUNK_PAGES: u64 = 64;

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the pool's own mapping; every BO holds the pool, so none is left.
        let _ = unsafe { sys::mmap::unmap(self.base, self.npages as usize * PAGE_SIZE) };
    }
}

struct BoInner {
    id: u64,
    pool: Arc<Pool>,
    runs: Vec<Run>,
    npages: u64,
    last_use: AtomicU64,
    evicting: AtomicBool,
    /// Never chosen for eviction (a KFD buffer object: it does not migrate).
    pinned: AtomicBool,
}

impl Drop for BoInner {
    fn drop(&mut self) {
        self.pool.live.lock().remove(&self.id);
        let mut b = self.pool.buddy.lock();
        for r in &self.runs {
            b.set_dirty(r.page, r.npages);
            b.free_run(r.page, r.npages);
        }
    }
}

/// A VRAM buffer object: `npages` pages, page i at BO offset i. Cloning takes a reference;
/// the pages return to the allocator when the last reference is dropped.
#[derive(Clone)]
pub struct Bo {
    inner: Arc<BoInner>,
}

impl std::fmt::Debug for Bo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bo")
            .field("id", &self.inner.id)
            .field("gpu", &self.inner.pool.gpu)
            .field("runs", &self.inner.runs)
            .finish()
    }
}

impl Bo {
    /// A process-unique id (per GPU).
    pub fn id(&self) -> u64 {
        self.inner.id
    }
    /// The owning GPU's index.
    pub fn gpu(&self) -> GpuIdx {
        self.inner.pool.gpu
    }
    /// Size in pages.
    pub fn npages(&self) -> u64 {
        self.inner.npages
    }
    /// The physically contiguous runs, in BO order.
    pub fn runs(&self) -> &[Run] {
        &self.inner.runs
    }
    /// The VRAM page number of BO page `i`.
    pub fn vram_page(&self, mut i: u64) -> u64 {
        for r in &self.inner.runs {
            if i < r.npages {
                return r.page + i;
            }
            i -= r.npages;
        }
        panic!("BO page {i} out of range");
    }
    /// The host address backing BO page `i`.
    pub fn host_addr(&self, i: u64) -> usize {
        self.inner.pool.base + self.vram_page(i) as usize * PAGE_SIZE
    }
    /// Marks the BO as used now (LRU order for eviction).
    pub fn touch(&self) {
        let t = self.inner.pool.clock.fetch_add(1, Ordering::Relaxed);
        self.inner.last_use.store(t, Ordering::Relaxed);
    }
    /// Whether an eviction of this BO was requested.
    pub fn evicting(&self) -> bool {
        self.inner.evicting.load(Ordering::Acquire)
    }
    /// Pins the BO: eviction never chooses it (KFD buffer objects stay where they are).
    pub fn pin(&self) {
        self.inner.pinned.store(true, Ordering::Release);
    }
    /// Whether two handles name the same BO.
    pub fn same(&self, other: &Bo) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// An accounting reservation of VRAM bytes, released on drop.
#[derive(Debug)]
pub struct Reservation {
    pool: Weak<PoolRef>,
    bytes: u64,
}

/// Indirection so that a reservation does not keep the VRAM mapping alive.
struct PoolRef(Arc<Pool>);

impl std::fmt::Debug for PoolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool(gpu {})", self.0.gpu)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(p) = self.pool.upgrade() {
            p.0.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// The VRAM of one GPU.
pub struct VramManager {
    pool: Arc<PoolRef>,
}

impl std::fmt::Debug for VramManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VramManager")
            .field("gpu", &self.pool.0.gpu)
            .field("npages", &self.pool.0.npages)
            .finish()
    }
}

/// A snapshot of a VRAM manager's use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VramUsage {
    /// Total pages.
    pub total_pages: u64,
    /// Free pages.
    pub free_pages: u64,
    /// The most pages ever in use at once.
    pub peak_used_pages: u64,
    /// Live BOs.
    pub bos: usize,
    /// Bytes held by accounting reservations.
    pub reserved_bytes: u64,
}

impl VramManager {
    /// VRAM for GPU `gpu` of `bytes` (a multiple of the page size).
    pub fn new(gpu: GpuIdx, bytes: u64) -> Result<Self> {
        let npages = bytes / PAGE_SIZE as u64;
        let base = sys::mmap::reserve(npages as usize * PAGE_SIZE)?;
        // A forked child gets every byte in RAM (the fork handlers empty VRAM first) and runs
        // no GPU: it need not inherit the emulated VRAM, nor share its pages copy-on-write.
        sys::mmap::advise_dontfork(base, npages as usize * PAGE_SIZE);
        let pool = Pool {
            gpu,
            base,
            npages,
            buddy: Mutex::new(Buddy::new(npages)),
            reserved: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            clock: AtomicU64::new(1),
            fail_in: AtomicU64::new(0),
            heat: std::sync::OnceLock::new(),
            choices: AtomicU64::new(0),
        };
        Ok(VramManager { pool: Arc::new(PoolRef(Arc::new(pool))) })
    }

    fn p(&self) -> &Arc<Pool> {
        &self.pool.0
    }

    /// Host address of the first VRAM byte (VRAM page p is at `base + p * 4096`).
    pub fn base(&self) -> usize {
        self.p().base
    }

    /// Reserves `bytes` for accounting (KFD reserves a whole range before migrating it).
    /// `ENOSPC` when the reservations would exceed the VRAM size.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation> {
        let total = self.p().npages * PAGE_SIZE as u64;
        let r = &self.p().reserved;
        let mut cur = r.load(Ordering::Acquire);
        loop {
            if cur + bytes > total {
                return Err(Error::NoVramSpace { gpu: self.p().gpu.get(), bytes });
            }
            match r.compare_exchange_weak(cur, cur + bytes, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Ok(Reservation { pool: Arc::downgrade(&self.pool), bytes });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Allocates a BO of `npages` pages. `ENOMEM` when fewer pages are free: the owner of
    /// the VRAM then moves the BOs [`VramManager::choose_victims`] names out of VRAM and
    /// tries again (TTM_EVICTION).
    pub fn alloc(&self, npages: u64, clear: Clear) -> Result<Bo> {
        let pool = self.p();
        let fail = Error::NoVram { gpu: pool.gpu.get(), npages };
        if npages == 0 || npages > pool.npages {
            return Err(fail);
        }
        if pool.fail_in.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1)) == Ok(1) {
            return Err(fail);
        }
        let (runs, dirty) = {
            let mut b = pool.buddy.lock();
            let runs = b.alloc(npages).ok_or(fail)?;
            let mut dirty = Vec::new();
            for r in &runs {
                b.take_dirty(r.page, r.npages, &mut dirty);
            }
            (runs, dirty)
        };
        if clear == Clear::Yes {
            for d in dirty {
                // SAFETY: pages of the pool's mapping that were just allocated to this BO and
                // that nobody else can reach yet.
                unsafe {
                    sys::mmap::fill(pool.base + d.page as usize * PAGE_SIZE, d.npages as usize * PAGE_SIZE, 0)
                };
            }
        }
        let id = pool.next_id.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::new(BoInner {
            id,
            pool: pool.clone(),
            runs,
            npages,
            last_use: AtomicU64::new(pool.clock.fetch_add(1, Ordering::Relaxed)),
            evicting: AtomicBool::new(false),
            pinned: AtomicBool::new(false),
        });
        pool.live.lock().insert(id, Arc::downgrade(&inner));
        Ok(Bo { inner })
    }

    /// From now on, counts the device accesses to each [`HEAT_CHUNK_PAGES`] of VRAM, and
    /// [`Self::choose_victims`] takes the least used BOs first (the adaptive policy).
    pub fn count_accesses(&self) {
        let chunks = self.p().npages.div_ceil(HEAT_CHUNK_PAGES) as usize;
        let _ = self.p().heat.set((0..chunks).map(|_| AtomicU32::new(0)).collect());
    }

    /// A device access to VRAM page `page` (counted when [`Self::count_accesses`] is on).
    #[inline]
    pub fn note_access(&self, page: u64) {
        if let Some(h) = self.p().heat.get()
            && let Some(c) = h.get((page / HEAT_CHUNK_PAGES) as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Accesses per 1,000 pages of `b`, recent ones weighing most (0 when not counted).
    fn heat_of(&self, b: &Bo) -> u64 {
        let Some(h) = self.p().heat.get() else { return 0 };
        let mut sum = 0u64;
        for r in b.runs() {
            for c in r.page / HEAT_CHUNK_PAGES..=(r.page + r.npages - 1) / HEAT_CHUNK_PAGES {
                sum += u64::from(h.get(c as usize).map_or(0, |a| a.load(Ordering::Relaxed)));
            }
        }
        sum * 1000 / b.npages().max(1)
    }

    /// After a victim choice among `live` BOs: once as many choices as BOs were made,
    /// halves every access count (what counts is recent use, over a rotation of the VRAM:
    /// halving at every choice would let a BO just faulted in, with the one access that
    /// brought it, outweigh one used all along).
    fn age_heat(&self, live: usize) {
        if self.p().choices.fetch_add(1, Ordering::Relaxed) + 1 < live as u64 {
            return;
        }
        self.p().choices.store(0, Ordering::Relaxed);
        if let Some(h) = self.p().heat.get() {
            for c in h.iter() {
                let v = c.load(Ordering::Relaxed);
                c.store(v / 2, Ordering::Relaxed);
            }
        }
    }

    /// The live BOs, not already being evicted, whose pages cover the shortage
    /// `npages - free`, least recently used first (or, with [`Self::count_accesses`] on,
    /// least used first, then least recently used); they are marked as being evicted.
    pub fn choose_victims(&self, npages: u64) -> Vec<Bo> {
        let pool = self.p();
        let free = pool.buddy.lock().free_pages;
        let mut need = npages.saturating_sub(free);
        // Upgrade under the lock, filter after it: dropping a handle may free a BO, and
        // freeing takes the `live` lock.
        let all: Vec<Bo> =
            pool.live.lock().values().filter_map(Weak::upgrade).map(|inner| Bo { inner }).collect();
        let mut live: Vec<Bo> =
            all.into_iter().filter(|b| !b.evicting() && !b.inner.pinned.load(Ordering::Acquire)).collect();
        live.sort_by_cached_key(|b| (self.heat_of(b), b.inner.last_use.load(Ordering::Relaxed)));
        self.age_heat(live.len());
        let mut out = Vec::new();
        for b in live {
            if need == 0 {
                break;
            }
            need = need.saturating_sub(b.npages());
            b.inner.evicting.store(true, Ordering::Release);
            out.push(b);
        }
        out
    }

    /// Ends the eviction of the BOs `ids` (from [`Self::choose_victims`]): those still
    /// alive (their eviction failed, or a holder kept them) may be chosen again later; a
    /// mark left set pinned them in VRAM for good.
    pub fn end_eviction(&self, ids: &[u64]) {
        // Upgrade under the lock, drop after it (the last handle frees the BO, which takes
        // the `live` lock).
        let alive: Vec<Arc<BoInner>> = {
            let live = self.p().live.lock();
            ids.iter().filter_map(|id| live.get(id).and_then(Weak::upgrade)).collect()
        };
        for b in &alive {
            b.evicting.store(false, Ordering::Release);
        }
    }

    /// Fault injection (tests): the `nth` allocation from now (1 = the next) fails as if
    /// nothing could be found or evicted.
    pub fn fail_alloc_in(&self, nth: u64) {
        self.p().fail_in.store(nth, Ordering::Release);
    }

    /// Current use.
    pub fn usage(&self) -> VramUsage {
        let pool = self.p();
        let buddy = pool.buddy.lock();
        VramUsage {
            total_pages: pool.npages,
            free_pages: buddy.free_pages,
            peak_used_pages: pool.npages - buddy.min_free,
            bos: pool.live.lock().len(),
            reserved_bytes: pool.reserved.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_page(bo: &Bo, i: u64) -> Vec<u8> {
        let mut v = vec![1u8; PAGE_SIZE];
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_from(bo.host_addr(i), &mut v) };
        v
    }

    #[test]
    fn fresh_vram_reads_zero_even_after_reuse() {
        let m = VramManager::new(GpuIdx::new(0), 64 * PAGE_SIZE as u64).unwrap();
        let a = m.alloc(64, Clear::Yes).unwrap();
        for i in 0..64 {
            assert!(read_page(&a, i).iter().all(|&b| b == 0));
            // SAFETY: memory this test mapped and owns, live until its unmap.
            unsafe { sys::mmap::fill(a.host_addr(i), PAGE_SIZE, 0xee) };
        }
        drop(a);
        let b = m.alloc(64, Clear::Yes).unwrap();
        for i in 0..64 {
            assert!(read_page(&b, i).iter().all(|&x| x == 0), "page {i} not cleared");
        }
    }

    #[test]
    fn contiguous_when_possible_and_bo_offsets() {
        let m = VramManager::new(GpuIdx::new(0), 1024 * PAGE_SIZE as u64).unwrap();
        let a = m.alloc(512, Clear::No).unwrap();
        assert_eq!(a.runs(), &[Run { page: 0, npages: 512 }]);
        let b = m.alloc(300, Clear::No).unwrap();
        assert_eq!(b.runs().len(), 1, "{:?}", b.runs());
        assert_eq!(b.vram_page(0), 512);
        assert_eq!(b.vram_page(299), 811);
        assert_eq!(b.host_addr(1), m.base() + 513 * PAGE_SIZE);
        assert_eq!(m.usage().free_pages, 1024 - 812);
    }

    #[test]
    fn reservation_is_enospc_beyond_size() {
        let m = VramManager::new(GpuIdx::new(0), 16 * PAGE_SIZE as u64).unwrap();
        let r1 = m.reserve(12 * PAGE_SIZE as u64).unwrap();
        assert_eq!(m.reserve(8 * PAGE_SIZE as u64).unwrap_err().errno(), libc::ENOSPC);
        drop(r1);
        let _r2 = m.reserve(16 * PAGE_SIZE as u64).unwrap();
        assert_eq!(m.usage().reserved_bytes, 16 * PAGE_SIZE as u64);
    }

    #[test]
    fn victims_are_least_recently_used_first() {
        let m = VramManager::new(GpuIdx::new(0), 8 * PAGE_SIZE as u64).unwrap();
        let mut bos: Vec<Bo> = (0..4).map(|_| m.alloc(2, Clear::No).unwrap()).collect();
        let ids: Vec<u64> = bos.iter().map(Bo::id).collect();
        bos[0].touch(); // now 1 is the least recently used, then 2, 3, 0
        assert_eq!(m.alloc(3, Clear::Yes).unwrap_err().errno(), libc::ENOMEM);
        let victims = m.choose_victims(3);
        assert_eq!(victims.iter().map(Bo::id).collect::<Vec<_>>(), vec![ids[1], ids[2]]);
        assert!(victims.iter().all(Bo::evicting));
        // Victims being evicted are not chosen again.
        assert_eq!(m.choose_victims(2).iter().map(Bo::id).collect::<Vec<_>>(), vec![ids[3]]);
        // The owner moves them out (drops its references): the allocation now fits.
        bos.retain(|b| !victims.iter().any(|v| v.same(b)));
        drop(victims);
        let c = m.alloc(3, Clear::Yes).unwrap();
        assert_eq!(c.npages(), 3);
        assert_eq!(m.alloc(0, Clear::No).unwrap_err().errno(), libc::ENOMEM);
    }

    /// Operations of the allocator property test.
    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u64),
        Free(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Against a model (a set of owned pages): no page is handed out twice, exhaustion
        /// happens exactly when fewer pages are free, freed pages are reused, and the free
        /// count always matches.
        #[test]
        fn buddy_matches_model(total in 1u64..600, ops in prop::collection::vec(
            prop_oneof![3 => (1u64..200).prop_map(Op::Alloc), 2 => (0usize..64).prop_map(Op::Free)], 1..80)) {
            let mut b = Buddy::new(total);
            let mut owned: Vec<Vec<Run>> = Vec::new();
            let mut used = vec![false; total as usize];
            let mut free = total;
            for op in ops {
                match op {
                    Op::Alloc(n) => match b.alloc(n) {
                        Some(runs) => {
                            prop_assert!(n <= free);
                            prop_assert_eq!(runs.iter().map(|r| r.npages).sum::<u64>(), n);
                            for r in &runs {
                                for p in r.page..r.page + r.npages {
                                    prop_assert!(p < total);
                                    prop_assert!(!used[p as usize], "page {} handed out twice", p);
                                    used[p as usize] = true;
                                }
                            }
                            free -= n;
                            owned.push(runs);
                        }
                        None => prop_assert!(n > free, "refused {} with {} free", n, free),
                    },
                    Op::Free(i) if !owned.is_empty() => {
                        let runs = owned.swap_remove(i % owned.len());
                        for r in runs {
                            for p in r.page..r.page + r.npages {
                                used[p as usize] = false;
                            }
                            free += r.npages;
                            b.free_run(r.page, r.npages);
                        }
                    }
                    Op::Free(_) => {}
                }
                prop_assert_eq!(b.free_pages, free);
                let listed: u64 = b.free.iter().enumerate().map(|(o, s)| s.len() as u64 * (1 << o)).sum();
                prop_assert_eq!(listed, free);
            }
            // Everything freed: the whole VRAM is one allocation again.
            for runs in owned.drain(..) {
                for r in runs {
                    b.free_run(r.page, r.npages);
                }
            }
            prop_assert_eq!(b.alloc(total).map(|r| r.iter().map(|x| x.npages).sum::<u64>()), Some(total));
        }
    }

    #[test]
    fn power_of_two_vram_coalesces_back_to_one_block() {
        let mut b = Buddy::new(1 << 10);
        let runs: Vec<Vec<Run>> = (0..1024).map(|_| b.alloc(1).unwrap()).collect();
        assert_eq!(b.free_pages, 0);
        for r in runs {
            b.free_run(r[0].page, 1);
        }
        assert_eq!(b.free[10].len(), 1);
        assert_eq!(b.alloc(1024).unwrap(), vec![Run { page: 0, npages: 1024 }]);
    }
}
