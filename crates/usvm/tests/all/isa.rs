//! gfx90a machine code dispatched through `Queue::submit_isa` on SVM memory: kfdtest's
//! shaders between system memory and VRAM, XNACK retry faults served or fatal, queue
//! suspension pausing spinning waves, migration under running waves, and a queue dropped
//! while its waves spin.

use crate::util::*;
use std::time::{Duration, Instant};
use usvm::shaders::{self, COPY_DWORD, READ_MEMORY, kfdtest_launch};
use usvm::{Attr, Error, GpuId, Location, Svm, SvmBuffer};

fn bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn word(b: &SvmBuffer, off: usize) -> u32 {
    let mut w = [0; 4];
    b.read_at(off, &mut w);
    u32::from_le_bytes(w)
}

/// `code` in a buffer the GPU `g` maps.
fn code(svm: &Svm, g: GpuId, code: &[u32]) -> SvmBuffer {
    let b = svm.alloc(4096).unwrap();
    b.write_at(0, &bytes(code));
    svm.set_attr(b.addr(), b.len(), &[Attr::Access(g)]).unwrap();
    b
}

/// A buffer of `len` bytes the GPU `g` maps, in VRAM when `vram`.
fn data(svm: &Svm, g: GpuId, len: usize, vram: bool) -> SvmBuffer {
    let b = svm.alloc(len).unwrap();
    let loc = if vram { Location::Gpu(g) } else { Location::Sysmem };
    svm.set_attr(b.addr(), len, &[Attr::Access(g), Attr::PrefetchLoc(loc)]).unwrap();
    b
}

#[test]
fn copy_dword_between_system_memory_and_vram() {
    let svm = svm2(false);
    let g = svm.gpu_ids()[0];
    let c = code(&svm, g, &COPY_DWORD);
    let q = svm.create_queue(g).unwrap();
    for (src_vram, dst_vram) in [(false, false), (false, true), (true, false)] {
        let (src, dst) = (data(&svm, g, 4096, src_vram), data(&svm, g, 4096, dst_vram));
        src.write_at(0, &0x1234_abcdu32.to_le_bytes());
        let l = kfdtest_launch(c.addr() as u64, src.addr() as u64, dst.addr() as u64, 1);
        q.submit_isa(l).wait().unwrap();
        assert_eq!(word(&dst, 0), 0x1234_abcd, "src in VRAM {src_vram}, dst in VRAM {dst_vram}");
    }
}

#[test]
fn xnack_on_an_unmapped_source_is_served_and_the_copy_completes() {
    let svm = svm2(true);
    let g = svm.gpu_ids()[0];
    let c = code(&svm, g, &COPY_DWORD);
    let (src, dst) = (svm.alloc(4096).unwrap(), svm.alloc(4096).unwrap());
    src.write_at(0, &0x5eedu32.to_le_bytes());
    let faults = svm.counters(g).faults;
    let q = svm.create_queue(g).unwrap();
    q.submit_isa(kfdtest_launch(c.addr() as u64, src.addr() as u64, dst.addr() as u64, 1)).wait().unwrap();
    assert_eq!(word(&dst, 0), 0x5eed);
    assert!(svm.counters(g).faults > faults, "the retry faults were counted");
}

#[test]
fn xnack_off_an_unmapped_source_is_a_fatal_fault_and_nothing_is_stored() {
    let svm = svm2(false);
    let g = svm.gpu_ids()[0];
    let c = code(&svm, g, &COPY_DWORD);
    let (src, dst) = (svm.alloc(4096).unwrap(), data(&svm, g, 4096, false));
    dst.write_at(0, &7u32.to_le_bytes());
    let q = svm.create_queue(g).unwrap();
    let r = q.submit_isa(kfdtest_launch(c.addr() as u64, src.addr() as u64, dst.addr() as u64, 4)).wait();
    assert_eq!(r, Err(Error::GpuVmFault { gpu: g.0, addr: src.addr() as u64, write: false }));
    assert_eq!(word(&dst, 0), 7);
    // The queue still runs work after a failed dispatch.
    svm.set_attr(src.addr(), 4096, &[Attr::Access(g)]).unwrap();
    q.submit_isa(kfdtest_launch(c.addr() as u64, src.addr() as u64, dst.addr() as u64, 4)).wait().unwrap();
    assert_eq!(word(&dst, 0), 0);
}

#[test]
fn suspended_queues_pause_spinning_waves() {
    let svm = svm2(false);
    let g = svm.gpu_ids()[0];
    let c = code(&svm, g, &shaders::COUNT_UNTIL_FLAG);
    let waves = 64;
    let (counters, flag) = (data(&svm, g, 4096, false), data(&svm, g, 4096, false));
    let sum = || (0..waves).map(|k| u64::from(word(&counters, 4 * k))).sum::<u64>();
    let q = svm.create_queue(g).unwrap();
    let f = q.submit_isa(kfdtest_launch(
        c.addr() as u64,
        counters.addr() as u64,
        flag.addr() as u64,
        waves as u32,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while (0..waves).any(|k| word(&counters, 4 * k) == 0) {
        assert!(Instant::now() < deadline, "some wave never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    svm.suspend_queues(g).unwrap();
    let before = sum();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(sum(), before, "a wave stored while its queues were suspended");
    svm.resume_queues(g).unwrap();
    while sum() == before {
        assert!(Instant::now() < deadline, "the waves did not resume");
        std::thread::sleep(Duration::from_millis(1));
    }
    flag.write_at(0, &0x5678u32.to_le_bytes());
    f.wait().unwrap();
}

#[test]
fn read_memory_waves_survive_migrations_of_what_they_read() {
    let svm = svm2(false);
    let g = svm.gpu_ids()[0];
    let c = code(&svm, g, &READ_MEMORY);
    let (waves, pages) = (16usize, 4usize);
    let bufs = data(&svm, g, waves * pages * 4096, false);
    let (addrs, results) = (data(&svm, g, 4096, false), data(&svm, g, 4096, false));
    for k in 0..waves {
        addrs.write_at(8 * k, &((bufs.addr() + k * pages * 4096) as u64).to_le_bytes());
        results.write_at(4 * k, &((pages * 4096) as u32).to_le_bytes());
    }
    let q = svm.create_queue(g).unwrap();
    let f = q.submit_isa(kfdtest_launch(
        c.addr() as u64,
        addrs.addr() as u64,
        results.addr() as u64,
        waves as u32,
    ));
    // Back and forth between system memory and VRAM while the waves read.
    for round in 0..6 {
        let loc = if round % 2 == 0 { Location::Gpu(g) } else { Location::Sysmem };
        for b in [&bufs, &addrs] {
            svm.set_attr(b.addr(), b.len(), &[Attr::PrefetchLoc(loc)]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!f.is_signaled(), "the waves wait for the flag");
    addrs.write_at(0, &bytes(&vec![0x5678; 1024]));
    f.wait_timeout(Duration::from_secs(20)).unwrap();
    for k in 0..waves {
        assert_eq!(word(&results, 4 * k), 0x5678, "wave {k}");
    }
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with(prefix))
        .count()
}

#[test]
fn dropping_a_queue_stops_its_spinning_waves_promptly() {
    // In a process of its own: other tests' dispatches have wave workers too.
    if !in_own_process("isa::dropping_a_queue_stops_its_spinning_waves_promptly") {
        return;
    }
    let svm = svm2(false);
    let g = svm.gpu_ids()[0];
    let c = code(&svm, g, &shaders::COUNT_UNTIL_FLAG);
    let (counters, flag) = (data(&svm, g, 4096, false), data(&svm, g, 4096, false));
    let q = svm.create_queue(g).unwrap();
    let f = q.submit_isa(kfdtest_launch(c.addr() as u64, counters.addr() as u64, flag.addr() as u64, 512));
    let deadline = Instant::now() + Duration::from_secs(20);
    while word(&counters, 0) == 0 {
        assert!(Instant::now() < deadline, "the waves never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    drop(q);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    assert_eq!(f.wait(), Err(Error::QueueGone));
    assert_eq!(threads_named("usvm-wave"), 0, "a wave worker outlived its queue");
}
