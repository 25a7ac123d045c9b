//! A bounded stress test (issue 5): CPU threads and GPU kernels on two GPUs increment their
//! own words of a shared working set twice the size of each GPU's VRAM, while another
//! thread prefetches, changes attributes, and unmaps and maps again a scratch buffer. At the
//! end every word must hold what its owner wrote, and nothing else may have changed.

use crate::util::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use usvm::{Attr, Location, Policy, Svm};

const BUFS: usize = 4;
const BUF: usize = 4 * MIB;
const CPU_THREADS: usize = 4;
const ACTORS: usize = CPU_THREADS + 2; // two GPU kernels
const STRIDE: usize = 509; // words between an actor's words: spreads them over pages

/// The words of actor `a` in buffer `b` (word indices).
fn words(a: usize) -> impl Iterator<Item = usize> {
    (a..BUF / 8).step_by(ACTORS * STRIDE)
}

#[test]
fn cpus_gpus_prefetch_and_munmap_lose_nothing() {
    stress(Policy::Kernel);
}

#[test]
fn cpus_gpus_prefetch_and_munmap_lose_nothing_under_the_adaptive_policy() {
    stress(Policy::Adaptive);
}

fn stress(policy: Policy) {
    let svm =
        Arc::new(Svm::builder().gpus(2).vram_bytes(8 << 20).xnack(true).policy(policy).build().unwrap());
    let gpus = svm.gpu_ids();
    let bufs: Vec<Mapping> = (0..BUFS).map(|_| Mapping::anon(BUF, 2 * MIB)).collect();
    for b in &bufs {
        svm.set_attr(b.addr, BUF, &[]).unwrap();
    }
    let addrs: Vec<usize> = bufs.iter().map(|b| b.addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let start = Arc::new(Barrier::new(CPU_THREADS + 2));
    let counts: Vec<Vec<u64>> = std::thread::scope(|s| {
        // CPU actors: increment their words, checking each value read.
        let mut handles = Vec::new();
        for a in 0..CPU_THREADS {
            let (addrs, stop, start) = (addrs.clone(), stop.clone(), start.clone());
            handles.push(s.spawn(move || {
                start.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for &base in &addrs {
                        for w in words(a) {
                            let p = (base + w * 8) as *mut u64;
                            // SAFETY: `p` is a word of a live mapping owned by this test, and
                            // only this thread touches it.
                            let v = unsafe { p.read_volatile() };
                            assert_eq!(v, n, "CPU actor {a} read a stale value");
                            // SAFETY: as above.
                            unsafe { p.write_volatile(n + 1) };
                        }
                    }
                    n += 1;
                }
                vec![n]
            }));
        }
        // GPU actors: a kernel per GPU does the same through its page table (XNACK on: the
        // words fault in, migrating granules between the GPUs and RAM).
        for (k, &g) in gpus.iter().enumerate() {
            let (addrs, stop, start, svm) = (addrs.clone(), stop.clone(), start.clone(), svm.clone());
            handles.push(s.spawn(move || {
                let q = svm.create_queue(g).unwrap();
                start.wait();
                let a = CPU_THREADS + k;
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let addrs = addrs.clone();
                    let n = rounds;
                    q.submit(move |ctx| {
                        for &base in &addrs {
                            for w in words(a) {
                                let v = ctx.read_u64(base + w * 8)?;
                                if v != n {
                                    return Err(usvm::Error::KernelPanic(format!(
                                        "GPU actor {a} read {v}, not {n}"
                                    )));
                                }
                                ctx.write_u64(base + w * 8, n + 1)?;
                            }
                        }
                        Ok(())
                    })
                    .wait()
                    .unwrap();
                    rounds += 1;
                }
                vec![rounds]
            }));
        }
        // Chaos: prefetches and attribute changes on the working set, and a scratch buffer
        // unmapped and mapped again, until the deadline.
        let mut i = 0usize;
        let scratch_len = 2 * MIB;
        while Instant::now() < deadline {
            let b = addrs[i % BUFS];
            let loc = match i % 3 {
                0 => Location::Gpu(gpus[0]),
                1 => Location::Gpu(gpus[1]),
                _ => Location::Sysmem,
            };
            let off = (i * 7 % 4) * MIB;
            let _ =
                svm.set_attr(b + off, MIB, &[Attr::Granularity([9, 0, 4][i % 3]), Attr::PrefetchLoc(loc)]);
            if i.is_multiple_of(5) {
                let scratch = Mapping::anon(scratch_len, 2 * MIB);
                svm.set_attr(scratch.addr, scratch_len, &[Attr::PrefetchLoc(Location::Gpu(gpus[i % 2]))])
                    .unwrap();
                let mut z = [1u8; 8];
                svm.gpu_read(gpus[i % 2], scratch.addr + MIB, &mut z).unwrap();
                assert_eq!(z, [0; 8], "fresh memory reads zero");
                drop(scratch); // munmap while everything else runs
            }
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every word holds its owner's count; every other word is still zero.
    for (bi, &base) in addrs.iter().enumerate() {
        let mut owner = vec![usize::MAX; BUF / 8];
        for (a, c) in counts.iter().enumerate() {
            for w in words(a) {
                owner[w] = a;
                let _ = c;
            }
        }
        for (w, &a) in owner.iter().enumerate() {
            // SAFETY: reading our own mapping; all writers have stopped.
            let v = unsafe { ((base + w * 8) as *const u64).read_volatile() };
            let want = if a == usize::MAX { 0 } else { counts[a][0] };
            assert_eq!(v, want, "buffer {bi} word {w} (actor {a})");
        }
    }
    assert!(counts.iter().all(|c| c[0] > 0), "every actor made progress: {counts:?}");
}
