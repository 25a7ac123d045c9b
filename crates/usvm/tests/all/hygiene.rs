//! Isolation and hygiene: a fault outside every usvm range crashes the program as it would
//! without usvm; dropping an instance with migrations in flight returns every byte to RAM
//! and leaves no thread behind; bad pointers and sizes through the API are errors.
//!
//! Tests that look at the whole process (signals, thread counts) run in a process of their
//! own: this test binary, re-executed on that one test.

use crate::util::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use usvm::{Attr, Location, Svm};

const CHILD_ENV: &str = "USVM_ISOLATED_TEST";

/// Runs test `name` alone in a child process; returns its exit status and output.
fn isolated(name: &str) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

/// Whether this process is the child running test `name`.
fn in_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

/// In the parent, runs test `name` in a child process and checks that it passed; true
/// there. In the child, false: the caller goes on with the test's body.
fn child_passes(name: &str) -> bool {
    if in_child(name) {
        return false;
    }
    let (status, text) = isolated(name);
    assert!(
        status.success() && text.contains("1 passed"),
        "{status:?} (signal {:?}): {text}",
        signal_of(status)
    );
    true
}

fn signal_of(status: std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_fault_outside_usvm_memory_crashes_as_without_usvm() {
    const NAME: &str = "hygiene::a_fault_outside_usvm_memory_crashes_as_without_usvm";
    if !in_child(NAME) {
        let (status, text) = isolated(NAME);
        assert_eq!(signal_of(status), Some(libc::SIGSEGV), "{status:?}: {text}");
        return;
    }
    let svm = svm2(true);
    let buf = svm.alloc(4 * MIB).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(svm.gpu_ids()[0]))]).unwrap();
    // Memory that was mapped and is gone: usvm's userfaultfd never sees this fault.
    let gone = Mapping::anon(2 * MIB, 2 * MIB);
    let addr = gone.addr;
    drop(gone);
    // SAFETY: deliberately touching unmapped memory: the process must die of SIGSEGV.
    let v = unsafe { (addr as *const u64).read_volatile() };
    println!("read {v} from unmapped memory: not reached");
}

#[test]
fn a_write_to_read_only_svm_memory_crashes_as_without_usvm() {
    const NAME: &str = "hygiene::a_write_to_read_only_svm_memory_crashes_as_without_usvm";
    if !in_child(NAME) {
        let (status, text) = isolated(NAME);
        assert_eq!(signal_of(status), Some(libc::SIGSEGV), "{status:?}: {text}");
        return;
    }
    let svm = svm2(false);
    let m = Mapping::anon(2 * MIB, 2 * MIB);
    svm.set_attr(m.addr, m.len, &[Attr::PrefetchLoc(Location::Gpu(svm.gpu_ids()[0]))]).unwrap();
    mprotect(m.addr, m.len, libc::PROT_READ);
    // SAFETY: deliberately writing read-only memory: the process must die of SIGSEGV.
    unsafe { (m.addr as *mut u64).write_volatile(1) };
    println!("wrote read-only memory: not reached");
}

#[test]
fn dropping_an_instance_in_the_middle_of_migrations_returns_every_byte() {
    const NAME: &str = "hygiene::dropping_an_instance_in_the_middle_of_migrations_returns_every_byte";
    if child_passes(NAME) {
        return;
    }
    let before = threads();
    let m = Mapping::anon(16 * MIB, 2 * MIB);
    let data: Vec<u8> = (0..m.len).map(|i| (i * 7 + (i >> 12)) as u8).collect();
    // SAFETY: `m` is this test's own mapping of `m.len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), m.addr as *mut u8, m.len) };
    for round in 0..5 {
        let svm = Arc::new(Svm::builder().gpus(2).vram_bytes(8 << 20).xnack(round % 2 == 0).build().unwrap());
        let gpus = svm.gpu_ids();
        svm.set_attr(m.addr, m.len, &[Attr::Access(gpus[0]), Attr::Access(gpus[1])]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // Threads keep migrating (VRAM is half the data: evictions too) while the last
        // handle to the instance is dropped, by whichever thread lets go last.
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let (svm, stop, addr) = (svm.clone(), stop.clone(), m.addr);
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let off = ((i * 3 + t) % 8) * 2 * MIB;
                        let loc = Location::Gpu(svm.gpu_ids()[(i + t) % 2]);
                        let _ = svm.set_attr(addr + off, 2 * MIB, &[Attr::PrefetchLoc(loc)]);
                        let mut b = [0u8; 8];
                        let _ = svm.gpu_read(svm.gpu_ids()[t], addr + off + 4096, &mut b);
                        i += 1;
                    }
                    drop(svm);
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(30));
        drop(svm);
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        // SAFETY: reading this test's own mapping; no usvm instance is left.
        let now = unsafe { std::slice::from_raw_parts(m.addr as *const u8, m.len) };
        assert!(now == &data[..], "round {round}: every byte is back in RAM");
    }
    // Every thread of every instance has ended (worker threads joined above).
    assert_eq!(threads(), before, "no thread left behind");
    // The memory is plain memory again: usable without any usvm.
    // SAFETY: this test's own mapping.
    unsafe { (m.addr as *mut u64).write_volatile(42) };
}

#[test]
fn bad_pointers_and_sizes_are_errors() {
    let svm = svm2(true);
    let g = svm.gpu_ids()[0];
    let mut b = [0u8; 16];
    for addr in [0usize, 8, usize::MAX - 7, 1 << 47, usize::MAX & !4095] {
        assert_ne!(errno(svm.gpu_read(g, addr, &mut b)), 0, "GPU read at {addr:#x}");
        assert_ne!(errno(svm.gpu_write(g, addr, &b)), 0, "GPU write at {addr:#x}");
    }
    // Lengths that overflow the address space.
    assert_eq!(errno(svm.gpu_read(g, usize::MAX - 4, &mut b)), libc::EINVAL);
    for (addr, size) in [(0usize, 4096usize), (4096, 0), (1, 4096), (4096, 1), (usize::MAX & !4095, 8192)] {
        assert_ne!(errno(svm.set_attr(addr, size, &[])), 0, "SET_ATTR {addr:#x}+{size:#x}");
        let mut q = [Attr::Granularity(0)];
        assert_ne!(errno(svm.get_attr(addr, size, &mut q)), 0, "GET_ATTR {addr:#x}+{size:#x}");
    }
    assert_eq!(errno(svm.svm_ioctl(7, 4096, 4096, &mut [])), libc::EINVAL, "unknown op");
    assert_eq!(errno(svm.alloc(0)), libc::EINVAL);
    assert_ne!(errno(svm.alloc(usize::MAX - 10)), 0);
    // A kernel with a bad pointer gets an error on its fence; the queue goes on.
    let q = svm.create_queue(g).unwrap();
    assert_ne!(errno(q.submit(|k| k.read_u64(usize::MAX - 3).map(|_| ())).wait()), 0);
    assert_ne!(errno(q.submit(|k| k.write_u64(16, 1)).wait()), 0);
    assert_eq!(errno(q.submit(|_| Ok(())).wait()), 0);
    // Nothing above created a range.
    assert_eq!(svm.range_count(), 0);
}

/// The `[stack]` or `[heap]` mapping of this process: (start, end).
fn special_mapping(name: &str) -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().find(|l| l.ends_with(name)).map(|l| {
        let range = l.split(' ').next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap())
    })
}

/// T20: XNACK on, GPU faults in the brk heap and in the initial stack create ranges with
/// PREFERRED_LOC = system memory; nothing migrates (PAGE_FAULT_END `U`), the GPU reads the
/// bytes the CPU sees.
#[test]
fn t20_heap_and_stack_faults_stay_in_system_memory() {
    const NAME: &str = "hygiene::t20_heap_and_stack_faults_stay_in_system_memory";
    if child_passes(NAME) {
        return;
    }
    // A heap of our own at the top of the brk area: 2 MiB more, filled with a pattern.
    // SAFETY: sbrk(0) only reads the current break.
    let old = unsafe { libc::sbrk(0) } as usize;
    // SAFETY: grows the break; the new 2 MiB belong to this test alone (malloc treats a
    // foreign sbrk as a gap in its heap and never hands out these bytes).
    let grown = unsafe { libc::sbrk(2 * MIB as libc::intptr_t) } as usize;
    assert_eq!(grown, old, "sbrk");
    let heap = old.next_multiple_of(PAGE);
    let len = MIB;
    let data: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
    // SAFETY: `[heap, heap + len)` lies in the 2 MiB just added to the break.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), heap as *mut u8, len) };
    let (hs, he) = special_mapping("[heap]").expect("a [heap] mapping");
    assert!(hs <= heap && heap + len <= he);
    let (ss, se) = special_mapping("[stack]").expect("a [stack] mapping");

    let svm = svm2(true);
    let g = svm.gpu_ids()[0];
    let events = svm.subscribe();
    let mut back = vec![0u8; len];
    svm.gpu_read(g, heap, &mut back).unwrap();
    assert!(back == data, "the GPU reads the heap in place");
    // The top page of the initial stack holds the environment strings: compare with the CPU.
    let top = se - PAGE;
    let mut on_gpu = vec![0u8; PAGE];
    svm.gpu_read(g, top, &mut on_gpu).unwrap();
    // SAFETY: the top page of the main thread's stack is mapped and readable.
    let on_cpu = unsafe { std::slice::from_raw_parts(top as *const u8, PAGE) };
    assert!(on_gpu == on_cpu, "the GPU reads the stack in place");

    let ranges = svm.ranges();
    for (what, addr) in [("heap", heap), ("stack", top)] {
        let r = ranges.iter().find(|r| r.start <= addr && addr < r.start + r.size).expect(what);
        assert_eq!(r.preferred_loc, Location::Sysmem, "{what}: {r:?}");
        assert_eq!(r.actual_loc, Location::Sysmem, "{what}");
        assert_eq!(r.vram_pages, 0, "{what}");
    }
    assert!(ranges.iter().all(|r| r.start + r.size <= se && (r.start >= ss || r.start + r.size <= he)));
    assert_eq!(svm.counters(g).page_in, 0, "nothing migrated");
    assert!(svm.counters(g).faults >= 2);
    let ends: Vec<String> =
        events.try_iter().map(|e| e.to_string()).filter(|l| l.starts_with("8 ")).collect();
    assert!(!ends.is_empty() && ends.iter().all(|l| l.ends_with(" U")), "{ends:?}");
    drop(svm);
    // SAFETY: the heap part is still ours and plain memory again.
    let still = unsafe { std::slice::from_raw_parts(heap as *const u8, len) };
    assert!(still == &data[..]);
}

/// munmap of one page of a VRAM-resident granule while another thread reads another page
/// of it: the reader of the mapped page gets its data, never SIGBUS (the fault reader reads
/// faults before events, so the granule's walk met the hole before usvm knew of it, and the
/// migration back failed). In a child process: a SIGBUS kills it.
#[test]
fn munmap_racing_a_cpu_fault_in_the_same_granule() {
    const NAME: &str = "hygiene::munmap_racing_a_cpu_fault_in_the_same_granule";
    if child_passes(NAME) {
        return;
    }
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    for round in 0..100u8 {
        let a = Mapping::anon(2 * MIB, 2 * MIB);
        let data = pattern(2 * MIB, round);
        // SAFETY: our own mapping, 2 MiB long.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.addr as *mut u8, data.len()) };
        svm.set_attr(a.addr, a.len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
        let bar = std::sync::Barrier::new(2);
        let probe = MIB + 64 * PAGE;
        let got = std::thread::scope(|s| {
            s.spawn(|| {
                bar.wait();
                unmap(a.addr + MIB, PAGE);
            });
            bar.wait();
            // SAFETY: a page of our own mapping that stays mapped.
            unsafe { std::ptr::read_volatile((a.addr + probe) as *const u8) }
        });
        assert_eq!(got, data[probe], "round {round}");
        unmap(a.addr, MIB);
        unmap(a.addr + MIB + PAGE, MIB - PAGE);
        std::mem::forget(a);
    }
}

/// A queue may outlive its instance: dropping the instance while a kernel on it walks
/// never-touched memory ends with the kernel finished (done or failed with an error),
/// never with a thread waiting for a fault reader that has stopped.
#[test]
fn dropping_an_instance_while_a_kernel_runs_leaves_nothing_waiting() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let m = Mapping::anon(64 * MIB, 2 * MIB);
    svm.set_attr(m.addr, m.len, &[Attr::Access(g1)]).unwrap();
    let q = svm.create_queue(g1).unwrap();
    let base = m.addr;
    let started = Arc::new(AtomicBool::new(false));
    let s2 = started.clone();
    let fence = q.submit(move |ctx| {
        for round in 0..4u64 {
            for i in 0..(64 * MIB / PAGE) {
                ctx.write_u64(base + i * PAGE, round)?;
                s2.store(true, Ordering::Release);
            }
        }
        Ok(())
    });
    while !started.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    drop(svm);
    // Done or failed (the instance is gone: its mappings with it), but finished.
    let _ = fence.wait_timeout(std::time::Duration::from_secs(30));
    assert!(fence.is_signaled(), "the kernel never finished");
    drop(q);
}

/// The application mprotects memory (PROT_READ, PROT_NONE, back) while GPU accesses to its
/// system pages run: an access that meets the new protection is a GPU fault (an error),
/// never a crash of the process (the emulated GPU checked the mapping, then copied with the
/// CPU: SIGSEGV, 3 runs of 3). In a child process.
#[test]
fn mprotect_racing_gpu_accesses_to_system_pages_never_crashes() {
    const NAME: &str = "hygiene::mprotect_racing_gpu_accesses_to_system_pages_never_crashes";
    if child_passes(NAME) {
        return;
    }
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let m = Mapping::anon(2 * MIB, 2 * MIB);
    svm.set_attr(m.addr, m.len, &[Attr::AccessInPlace(g1)]).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (svm, m, stop) = (&svm, &m, &stop);
        s.spawn(move || {
            let data = vec![7u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let _ = svm.gpu_write(g1, m.addr, &data);
            }
        });
        s.spawn(move || {
            let mut data = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let _ = svm.gpu_read(g1, m.addr + MIB, &mut data);
            }
        });
        let t0 = std::time::Instant::now();
        let mut i = 0;
        while t0.elapsed() < std::time::Duration::from_millis(1000) {
            mprotect(
                m.addr,
                m.len,
                [libc::PROT_READ, libc::PROT_NONE, libc::PROT_READ | libc::PROT_WRITE][i % 3],
            );
            i += 1;
        }
        mprotect(m.addr, m.len, libc::PROT_READ | libc::PROT_WRITE);
        stop.store(true, Ordering::Relaxed);
    });
    // Usable afterwards.
    svm.gpu_write(g1, m.addr, &[3; 8]).unwrap();
}
