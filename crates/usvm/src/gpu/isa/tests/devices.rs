//! Dispatches through `Devices`: page-table translation of code and data, fatal faults,
//! queue eviction pausing the waves, the stop flag.

use super::super::mem::{GpuMem, Memory};
use super::super::shaders::{self, COPY_DWORD, kfdtest_launch};
use super::super::{IsaError, run_dispatch, run_on};
use crate::addr::{PageNo, Pages};
use crate::attr::GpuId;
use crate::events::{EventHub, EvictTrigger};
use crate::gpu::Devices;
use crate::gpu::GpuIdx;
use crate::gpu::pagetable::{Pte, PteFlags};
use crate::sys::{self, PAGE_SIZE};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

const RW: PteFlags = PteFlags { writable: true, exec: true, coherent: true };

/// One GPU and `pages` pages of system memory mapped on it (left mapped in the process:
/// the tests are short, and unmapping is the unsafe business of `sys`).
fn setup(pages: usize) -> (Devices, usize) {
    let ids = [GpuId(0x1111)];
    let d = Devices::new(&ids, 16 << 20, false, Arc::new(EventHub::new(ids.to_vec()))).unwrap();
    let m = sys::mmap::map_anon_aligned(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
    d.gpus[0].pt.map(PageNo::of_addr(m), pages as u64, |_| Pte::system(RW));
    (d, m)
}

/// A host (CPU) store, whatever the GPU's queues are doing.
fn put(addr: usize, words: &[u32]) {
    let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(sys::mmap::copy_checked(addr, &mut b, true), b.len());
}

/// A host (CPU) load.
fn get(addr: usize) -> u32 {
    let mut b = [0; 4];
    assert_eq!(sys::mmap::copy_checked(addr, &mut b, false), 4);
    u32::from_le_bytes(b)
}

#[test]
fn copy_dword_through_the_page_table_and_a_fatal_fault() {
    let (d, m) = setup(4);
    put(m, &COPY_DWORD);
    let (src, dst) = (m + PAGE_SIZE, m + 2 * PAGE_SIZE);
    put(src, &[0xabcd_0123]);
    let stop = AtomicBool::new(false);
    let l = kfdtest_launch(m as u64, src as u64, dst as u64, 1);
    run_dispatch(&d, GpuIdx::new(0), &l, &stop).unwrap();
    assert_eq!(get(dst), 0xabcd_0123);
    // The source's page unmapped on the GPU, no fault handler: a fatal fault, nothing stored.
    put(dst, &[0]);
    d.gpus[0].pt.unmap(Pages::one(PageNo::of_addr(src)));
    let e = run_dispatch(&d, GpuIdx::new(0), &l, &stop).unwrap_err();
    assert!(
        matches!(e, IsaError::Fault(crate::Error::GpuVmFault { addr, write: false, .. }) if addr == src as u64),
        "{e:?}"
    );
    assert_eq!(get(dst), 0);
    // Code the GPU cannot reach faults at its fetch.
    d.gpus[0].pt.unmap(Pages::one(PageNo::of_addr(m)));
    let e = run_dispatch(&d, GpuIdx::new(0), &l, &stop).unwrap_err();
    assert!(matches!(e, IsaError::Fault(crate::Error::GpuVmFault { addr, .. }) if addr == m as u64), "{e:?}");
}

#[test]
fn evicted_queues_pause_the_waves_between_instructions() {
    let (d, m) = setup(3);
    put(m, &shaders::COUNT_UNTIL_FLAG);
    let (counters, flag) = (m + PAGE_SIZE, m + 2 * PAGE_SIZE);
    let waves = 64;
    let l = kfdtest_launch(m as u64, counters as u64, flag as u64, waves);
    let stop = AtomicBool::new(false);
    let sum = || (0..waves as usize).map(|k| u64::from(get(counters + 4 * k))).sum::<u64>();
    std::thread::scope(|s| {
        let t = s.spawn(|| run_dispatch(&d, GpuIdx::new(0), &l, &stop));
        let deadline = Instant::now() + Duration::from_secs(10);
        while (0..waves as usize).any(|k| get(counters + 4 * k) == 0) {
            assert!(Instant::now() < deadline, "some wave never ran");
            std::thread::yield_now();
        }
        d.evict_queues(GpuIdx::new(0), EvictTrigger::Svm);
        let before = sum();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(sum(), before, "a wave ran while its queues were evicted");
        d.restore_queues(GpuIdx::new(0), false);
        while sum() == before {
            assert!(Instant::now() < deadline, "the waves did not resume");
            std::thread::yield_now();
        }
        put(flag, &[0x5678]);
        assert_eq!(t.join().unwrap().unwrap().waves, u64::from(waves));
    });
}

/// The GPU's memory, counting the pause points passed (each is followed by a time slice).
struct Counting<'a> {
    inner: GpuMem<'a>,
    passed: AtomicU64,
}

impl Memory for Counting<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> crate::Result<()> {
        self.inner.read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> crate::Result<()> {
        self.inner.write(addr, data)
    }
    fn pause_point(&self) {
        self.inner.pause_point();
        self.passed.fetch_add(1, Relaxed);
    }
}

#[test]
fn an_alu_loop_pauses_while_evicted_and_stops_promptly() {
    let (d, m) = setup(1);
    put(m, &[0x80068106, 0xbf82fffe]); // L: s_add_u32 s6, s6, 1; s_branch L
    let l = kfdtest_launch(m as u64, 0, 0, 8);
    let stop = AtomicBool::new(false);
    let mem = Counting { inner: GpuMem { devs: &d, gpu: GpuIdx::new(0) }, passed: AtomicU64::new(0) };
    std::thread::scope(|s| {
        let t = s.spawn(|| run_on(&mem, &l, &stop, 2));
        while mem.passed.load(Relaxed) < 100 {
            std::thread::yield_now();
        }
        d.evict_queues(GpuIdx::new(0), EvictTrigger::Svm);
        // A worker that left its pause point just before the eviction counts it once more,
        // runs one slice, and then waits at the next one.
        let n = mem.passed.load(Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        let ran = mem.passed.load(Relaxed) - n;
        assert!(ran <= 2, "{ran} slices ran while the queues were evicted (2 workers)");
        stop.store(true, Relaxed);
        d.restore_queues(GpuIdx::new(0), false);
        let at = Instant::now();
        assert!(matches!(t.join().unwrap(), Err(IsaError::Stopped)));
        assert!(at.elapsed() < Duration::from_secs(1));
    });
}
