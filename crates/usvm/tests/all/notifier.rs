//! The application's own page-table changes reach usvm as the kernel's MMU notifier does
//! (kfd-svm-semantics.md section 6, test ideas T25, T26, T28, T29).

use crate::util::*;
use std::time::Duration;
use usvm::{Attr, Location, Residency, Svm};

fn fields(t: &str) -> String {
    let mut it = t.splitn(4, ' ');
    let id = it.next().unwrap();
    let _ = (it.next(), it.next());
    format!("{id} {}", it.next().unwrap_or(""))
}

fn drain(ev: &usvm::EventStream) -> Vec<String> {
    ev.try_iter().map(|e| fields(&e.to_string())).collect()
}

/// T28: a partial munmap unmaps the hole from the GPUs at once; the survivors keep their
/// attributes; GET on the hole is EFAULT; one range becomes two.
#[test]
fn t28_partial_munmap() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(6 * MIB, 32 * MIB);
    svm.set_attr(a.addr, 6 * MIB, &[Attr::Access(g1), Attr::Granularity(4)]).unwrap();
    assert_eq!(svm.range_count(), 1);
    let ev = svm.subscribe();
    unmap(a.addr + 2 * MIB, 2 * MIB);
    assert_eq!(svm.range_count(), 2, "SET/GET and ranges() see the munmap done");
    let page = (a.addr + 2 * MIB) >> 12;
    assert!(drain(&ev).contains(&format!("b @{page:x}(200) {:x} 2", g1.0)));
    let mut q = [Attr::Granularity(0), Attr::Access(g1)];
    svm.get_attr(a.addr, 2 * MIB, &mut q).unwrap();
    assert_eq!(q, [Attr::Granularity(4), Attr::Access(g1)]);
    svm.get_attr(a.addr + 4 * MIB, 2 * MIB, &mut q).unwrap();
    assert_eq!(q, [Attr::Granularity(4), Attr::Access(g1)]);
    assert_eq!(errno(svm.get_attr(a.addr + 2 * MIB, 2 * MIB, &mut q)), libc::EFAULT);
    // A GPU access to the hole is a fatal fault, not a crash of the process.
    let mut b = [0u8; 8];
    assert_eq!(errno(svm.gpu_read(g1, a.addr + 3 * MIB, &mut b)), libc::EFAULT);
    svm.gpu_read(g1, a.addr + 5 * MIB, &mut b).unwrap();
    assert_eq!(svm.smi()[0].mapped_pages, 1024);
}

/// T29 with the application's own munmap: the whole range disappears, memory mapped again
/// at the same place has default attributes.
#[test]
fn t29_whole_munmap_then_mmap() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(2 * MIB, 2 * MIB);
    svm.set_attr(
        a.addr,
        2 * MIB,
        &[Attr::PreferredLoc(Location::Sysmem), Attr::PrefetchLoc(Location::Gpu(g1))],
    )
    .unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 512);
    let addr = a.addr;
    drop(a);
    assert_eq!(svm.range_count(), 0);
    assert_eq!(svm.smi()[0].vram_used, 0, "the VRAM of unmapped memory is released");
    let Some(again) = Mapping::at(addr, 2 * MIB) else {
        return; // the address was taken by another thread meanwhile
    };
    let mut q = [Attr::PreferredLoc(Location::Gpu(g1))];
    svm.get_attr(addr, 2 * MIB, &mut q).unwrap();
    assert_eq!(q, [Attr::PreferredLoc(Location::Undefined)]);
    // The new memory is plain memory: it reads zero, not the old data.
    let mut b = [1u8; 1];
    // SAFETY: reading the mapping just made.
    b[0] = unsafe { std::ptr::read_volatile(addr as *const u8) };
    assert_eq!(b[0], 0);
    drop(again);
}

/// T25: XNACK off, MADV_DONTNEED of a page of a mapped range evicts the queues once and
/// the restore worker remaps; the GPU reads zeros there afterwards, and the VRAM copy of
/// the page is gone.
#[test]
fn t25_dontneed_xnack_off_evicts_and_restores() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let a = Mapping::anon(4 * MIB, 2 * MIB);
    // SAFETY: our own mapping.
    unsafe { std::ptr::write_bytes(a.addr as *mut u8, 7, 4 * MIB) };
    svm.set_attr(a.addr, 4 * MIB, &[Attr::Access(g1)]).unwrap();
    let ev = svm.subscribe();
    for i in 0..3 {
        // SAFETY: dropping pages of our own private mapping; they read as zero after.
        assert_eq!(unsafe { libc::madvise((a.addr + i * PAGE) as *mut _, PAGE, libc::MADV_DONTNEED) }, 0);
    }
    let mut b = [9u8; 8];
    svm.gpu_read(g1, a.addr + PAGE, &mut b).unwrap(); // waits for the restore
    assert_eq!(b, [0; 8]);
    svm.gpu_read(g1, a.addr + 3 * PAGE, &mut b).unwrap();
    assert_eq!(b, [7; 8]);
    std::thread::sleep(Duration::from_millis(20));
    let t = drain(&ev);
    // Invalidations before the restore share one eviction per GPU; a slow machine may run
    // the restore between two of the madvise calls, so count pairs, not calls.
    let evictions = t.iter().filter(|x| x.starts_with("9 ")).count();
    let restores = t.iter().filter(|x| x.starts_with("a ")).count();
    assert!((2..=6).contains(&evictions) && evictions % 2 == 0, "one eviction per GPU at a time: {t:?}");
    assert!(t.contains(&format!("9 {:x} 0", g1.0)) && t.contains(&format!("9 {:x} 0", g2.0)));
    assert_eq!(restores, evictions, "every eviction is restored: {t:?}");
    // Data in VRAM that the application drops is gone too.
    svm.set_attr(a.addr, 4 * MIB, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 1024);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::madvise((a.addr + 2 * MIB) as *mut _, 2 * MIB, libc::MADV_DONTNEED) }, 0);
    assert_eq!(svm.ranges()[0].vram_pages, 512);
    // SAFETY: reading our own mapping.
    assert_eq!(unsafe { std::ptr::read_volatile((a.addr + 3 * MIB) as *const u8) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { std::ptr::read_volatile((a.addr + MIB) as *const u8) }, 7);
}

/// T26: XNACK on, MADV_DONTNEED unmaps the page's extent from the GPUs (trigger 0), with
/// no queue events; the next GPU access faults and reads zero.
#[test]
fn t26_dontneed_xnack_on_unmaps() {
    let svm = svm2(true);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(2 * MIB, 2 * MIB);
    // SAFETY: our own mapping.
    unsafe { std::ptr::write_bytes(a.addr as *mut u8, 5, 2 * MIB) };
    svm.set_attr(a.addr, 2 * MIB, &[Attr::AccessInPlace(g1)]).unwrap(); // the data stays in RAM
    let mut b = [9u8; 4];
    svm.gpu_read(g1, a.addr, &mut b).unwrap(); // a retry fault maps the granule in place
    assert_eq!(b, [5; 4]);
    assert!(svm.ranges()[0].mapped_to_gpu);
    std::thread::sleep(Duration::from_millis(3)); // past the fault dedup window
    let ev = svm.subscribe();
    // SAFETY: dropping a page of our own private mapping.
    assert_eq!(unsafe { libc::madvise((a.addr + PAGE) as *mut _, PAGE, libc::MADV_DONTNEED) }, 0);
    // The notifier's work runs on usvm's worker right after the madvise returns (any SET /
    // GET / ranges() call waits for it); wait for its event here.
    let mut t = Vec::new();
    for _ in 0..1000 {
        t.extend(drain(&ev));
        if t.iter().any(|x| x.starts_with("b ")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    svm.gpu_read(g1, a.addr + PAGE, &mut b).unwrap(); // faults again, maps the zero page
    assert_eq!(b, [0; 4]);
    t.extend(drain(&ev));
    let page = (a.addr >> 12) + 1;
    assert!(t.contains(&format!("b @{page:x}(1) {:x} 0", g1.0)), "{t:?}");
    assert!(!t.iter().any(|x| x.starts_with("9 ")), "no queue eviction with XNACK on: {t:?}");
}

/// mremap moves a range: the data that was in VRAM arrives at the new place, the old place
/// is no SVM range any more.
#[test]
fn mremap_keeps_the_data() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(2 * MIB, 2 * MIB);
    let data: Vec<u8> = (0..2 * MIB).map(|i| (i % 241) as u8).collect();
    // SAFETY: our own mapping, 2 MiB long.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.addr as *mut u8, data.len()) };
    svm.set_attr(a.addr, 2 * MIB, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.residency(a.addr, 1)[0], Residency::Vram(g1));
    let dst = Mapping::anon(2 * MIB, 2 * MIB);
    // SAFETY: moving our own mapping over our own destination mapping.
    let p = unsafe {
        libc::mremap(
            a.addr as *mut _,
            2 * MIB,
            2 * MIB,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dst.addr as *mut libc::c_void,
        )
    };
    assert_eq!(p as usize, dst.addr);
    std::mem::forget(a); // moved away
    let mut back = vec![0u8; 2 * MIB];
    // SAFETY: reading the moved mapping.
    unsafe { std::ptr::copy_nonoverlapping(dst.addr as *const u8, back.as_mut_ptr(), back.len()) };
    assert!(back == data, "data lost in mremap");
    assert_eq!(svm.range_count(), 0);
    assert_eq!(svm.smi()[0].vram_used, 0);
    let _ = Svm::builder; // keep the import used
}

/// MADV_DONTNEED while another thread keeps migrating the same memory back and forth: a
/// page the application dropped reads zero right after, never the data that was on its
/// way back from VRAM when the application dropped it (the race the stress workload found:
/// a migration putting VRAM data back after the zap).
#[test]
fn dontneed_racing_migrations_never_resurrects_data() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let m = Mapping::anon(4 * MIB, 2 * MIB);
    svm.set_attr(m.addr, m.len, &[Attr::Access(g1), Attr::Granularity(0)]).unwrap();
    let stop = AtomicBool::new(false);
    let bad = std::thread::scope(|s| {
        let mover = s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let loc = if i % 2 == 0 { Location::Gpu(g1) } else { Location::Sysmem };
                let _ = svm.set_attr(m.addr, m.len, &[Attr::PrefetchLoc(loc)]);
                i += 1;
            }
        });
        let mut bad = 0;
        for round in 0..400u64 {
            let page = m.addr + ((round * 37) % 1024) as usize * PAGE;
            let p = page as *mut u64;
            // SAFETY: a word of this test's own mapping; only this thread stores to it.
            unsafe { p.write_volatile(round + 1) };
            std::thread::yield_now();
            // SAFETY: dropping the contents of one page of our own mapping.
            let r = unsafe { libc::madvise(page as *mut libc::c_void, PAGE, libc::MADV_DONTNEED) };
            assert_eq!(r, 0);
            // SAFETY: as above.
            let v = unsafe { p.read_volatile() };
            if v != 0 {
                if bad < 5 {
                    eprintln!("round {round}: page {:#x} read {v} after MADV_DONTNEED", page);
                }
                bad += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        mover.join().unwrap();
        bad
    });
    assert_eq!(bad, 0, "pages read old data after MADV_DONTNEED");
}

/// mremap while a migration of the same memory is under way, both directions, at varying
/// moments: every byte arrives at the new place. (The move took the old place's pages out
/// of the `out` set, and the migration took them for dropped: whole ranges read zero, in
/// 12 rounds of 24 of the review's test.)
#[test]
fn mremap_racing_a_migration_keeps_the_data() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let mut failures = Vec::new();
    for round in 0..16u64 {
        let a = Mapping::anon(len, 2 * MIB);
        let data = pattern(len, round as u8);
        // SAFETY: our own mapping, `len` bytes long.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.addr as *mut u8, len) };
        let to_ram = round % 2 == 0;
        let first = if to_ram { Attr::PrefetchLoc(Location::Gpu(g1)) } else { Attr::Access(g1) };
        svm.set_attr(a.addr, len, &[first]).unwrap();
        let dst = Mapping::anon(len, 2 * MIB);
        let (src, to) = (a.addr, dst.addr);
        std::mem::forget(a); // moved away below
        std::thread::scope(|s| {
            let svm = &svm;
            s.spawn(move || {
                let loc = if to_ram { Location::Sysmem } else { Location::Gpu(g1) };
                let _ = svm.set_attr(src, len, &[Attr::PrefetchLoc(loc)]);
            });
            std::thread::sleep(Duration::from_micros(150 * (round / 2)));
            mremap_to(src, len, to);
        });
        let mut back = vec![0u8; len];
        // SAFETY: reading the moved mapping.
        unsafe { std::ptr::copy_nonoverlapping(to as *const u8, back.as_mut_ptr(), len) };
        let bad = bad_pages(&back, &data);
        if bad > 0 {
            failures.push((round, to_ram, bad));
        }
        drop(dst);
        let _ = svm.range_count();
    }
    assert!(failures.is_empty(), "rounds with lost pages (round, to RAM, pages): {failures:?}");
    assert_eq!(svm.smi()[0].vram_used, 0, "VRAM left behind");
}

/// XNACK on: a range that a GPU fault created (and whose data stayed in RAM: no VRAM for
/// it) sees the application's munmap of part of it like any other; a later fault in the
/// same granule maps its page (the range was not watched until its first migration, kept
/// covering the hole, and the fault's walk met it: the access failed).
#[test]
fn range_made_by_a_gpu_fault_follows_munmap() {
    let svm = svm2(true);
    let g1 = svm.gpu_ids()[0];
    let m = Mapping::anon(2 * MIB, 2 * MIB);
    svm.inject_vram_alloc_failure(g1, 1).unwrap();
    let mut b = [0u8; 16];
    svm.gpu_read(g1, m.addr, &mut b).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 0, "mapped in place");
    unmap(m.addr + MIB, PAGE);
    std::thread::sleep(Duration::from_millis(3)); // past the retry-fault dedup window
    svm.gpu_write(g1, m.addr + MIB + 8 * PAGE, &[5; 16]).unwrap();
    svm.gpu_read(g1, m.addr + MIB + 8 * PAGE, &mut b).unwrap();
    assert_eq!(b, [5; 16]);
    assert!(svm.ranges().iter().all(|r| {
        let (s, e) = (r.start, r.start + r.size);
        e <= m.addr + MIB || s >= m.addr + MIB + PAGE
    }));
    unmap(m.addr, MIB);
    unmap(m.addr + MIB + PAGE, MIB - PAGE);
    std::mem::forget(m);
}

/// XNACK on, three threads first-touch 2 MiB blocks (dropping them again with
/// MADV_DONTNEED) while another drops one page over and over: a first touch that meets
/// EAGAIN (a MADV_DONTNEED event not read yet) waits for the reader to read that event
/// instead of faulting again at once. The kernel hands out faults before events, so the
/// refault came back first, again and again: 300 000 fault messages read for a few hundred
/// touches, the event starved, each MADV_DONTNEED up to 400 ms.
#[test]
fn refaults_do_not_starve_the_events_they_wait_for() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let svm = svm2(true);
    let region = Mapping::anon(128 * MIB, 2 * MIB);
    svm.set_attr(region.addr, region.len, &[Attr::Granularity(9)]).unwrap();
    let stop = AtomicBool::new(false);
    let touches = AtomicU64::new(0);
    let drops = AtomicU64::new(0);
    let before = svm.cpu_faults();
    std::thread::scope(|s| {
        for t in 0..3usize {
            let (stop, touches, region) = (&stop, &touches, &region);
            s.spawn(move || {
                let part = region.len / 4;
                let base = region.addr + t * part;
                while !stop.load(Ordering::Relaxed) {
                    let mut off = 0;
                    while off < part && !stop.load(Ordering::Relaxed) {
                        // SAFETY: first touches of this test's own mapping.
                        let _ = unsafe { std::ptr::read_volatile((base + off) as *const u8) };
                        touches.fetch_add(1, Ordering::Relaxed);
                        off += 2 * MIB;
                    }
                    // SAFETY: dropping the contents of this test's own memory.
                    unsafe { libc::madvise(base as *mut _, part, libc::MADV_DONTNEED) };
                }
            });
        }
        let page = region.addr + 3 * (region.len / 4);
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(1500) {
            // SAFETY: dropping the contents of one page of this test's own memory.
            unsafe { libc::madvise(page as *mut _, PAGE, libc::MADV_DONTNEED) };
            drops.fetch_add(1, Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (faults, touches) = (svm.cpu_faults() - before, touches.load(Ordering::Relaxed));
    eprintln!(
        "{touches} first touches, {faults} fault messages read, {} madvise",
        drops.load(Ordering::Relaxed)
    );
    assert!(touches > 0);
    assert!(faults < 8 * touches + 100, "{faults} fault messages for {touches} first touches: refaults spin");
}

/// `madvise(advice)` on this test's own memory.
fn madvise(addr: usize, len: usize, advice: i32) {
    // SAFETY: advice on memory this test owns.
    assert_eq!(unsafe { libc::madvise(addr as *mut _, len, advice) }, 0);
}

/// A device access that starts after MADV_DONTNEED returned sees the page dropped: a read
/// gets zeros, a store lands and stays, XNACK off and on, data in VRAM or in RAM. The
/// change used to wait for the next holder of the instance lock, so the GPU still used the
/// old VRAM entry: a read got the old bytes, a store went into VRAM that was then thrown
/// away (up to 15 stores of 16 lost).
#[test]
fn device_access_after_dontneed_sees_it_done() {
    for xnack in [false, true] {
        for prefetch in [false, true] {
            let svm = svm2(xnack);
            let g1 = svm.gpu_ids()[0];
            let m = Mapping::anon(2 * MIB, 2 * MIB);
            // SAFETY: filling this test's own mapping.
            unsafe { std::ptr::write_bytes(m.addr as *mut u8, 0x55, m.len) };
            svm.set_attr(m.addr, m.len, &[Attr::Access(g1)]).unwrap();
            for i in 0..16 {
                if prefetch {
                    svm.set_attr(m.addr, m.len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
                }
                let a = m.addr + i * 8 * PAGE;
                madvise(a, PAGE, libc::MADV_DONTNEED);
                let mut b = [9u8; 64];
                svm.gpu_read(g1, a, &mut b).unwrap();
                assert_eq!(b, [0; 64], "xnack {xnack}, prefetched {prefetch}, round {i}: stale read");
                svm.gpu_write(g1, a, &[0xaa; 64]).unwrap();
                let mut c = [0u8; 64];
                // SAFETY: reading this test's own mapping.
                unsafe { std::ptr::copy_nonoverlapping(a as *const u8, c.as_mut_ptr(), 64) };
                assert_eq!(c, [0xaa; 64], "xnack {xnack}, prefetched {prefetch}, round {i}: store lost");
            }
        }
    }
}

/// MAP_FIXED over SVM memory while a migration of the same addresses is under way, at
/// varying moments, both directions: the new mapping keeps every byte the CPU writes into
/// it right after. (The migration went on collecting at those addresses after the unmap
/// event, took the new mapping's pages and threw them away with the old ones.)
#[test]
fn map_fixed_racing_a_migration_keeps_the_new_data() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let m = Mapping::anon(len, 2 * MIB);
    let addr = m.addr;
    let mut failures = Vec::new();
    for round in 0..32u64 {
        map_fixed(addr, len);
        // SAFETY: filling this test's own mapping.
        unsafe { std::ptr::copy_nonoverlapping(pattern(len, 1).as_ptr(), addr as *mut u8, len) };
        svm.set_attr(addr, len, &[Attr::Access(g1)]).unwrap();
        let to_ram = round % 2 == 1;
        if to_ram {
            svm.set_attr(addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
        }
        let data = pattern(len, 100 + round as u8);
        std::thread::scope(|s| {
            let svm = &svm;
            s.spawn(move || {
                let loc = if to_ram { Location::Sysmem } else { Location::Gpu(g1) };
                let _ = svm.set_attr(addr, len, &[Attr::PrefetchLoc(loc)]);
            });
            std::thread::sleep(Duration::from_micros(60 * (round / 2)));
            map_fixed(addr, len);
            // SAFETY: filling the new mapping.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, len) };
        });
        let mut got = vec![0u8; len];
        // SAFETY: reading this test's own mapping.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, got.as_mut_ptr(), len) };
        let bad = bad_pages(&got, &data);
        if bad > 0 {
            failures.push((round, to_ram, bad));
        }
    }
    assert!(failures.is_empty(), "(round, to RAM, pages lost) {failures:?}");
}

/// MAP_FIXED over a range in a loop while another thread keeps prefetching the same
/// addresses to GPU 1, GPU 2 and system memory: each new mapping keeps the bytes the CPU
/// writes into it. (A SET_ATTR racing the unmap registered and migrated the new mapping,
/// then the queued unmap dropped its data: every page read zero, 8 runs of 8.)
#[test]
fn map_fixed_loop_against_a_prefetching_thread() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let svm = Svm::builder().gpus(2).vram_bytes(1 << 30).xgmi_hive(true).build().unwrap();
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let len = 4 * MIB;
    let m = Mapping::anon(len, 2 * MIB);
    let addr = m.addr;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (svm, stop) = (&svm, &stop);
        s.spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let loc = [Location::Gpu(g1), Location::Gpu(g2), Location::Sysmem][i % 3];
                let _ = svm.set_attr(addr, len, &[Attr::PrefetchLoc(loc)]);
                i += 1;
            }
        });
        let t0 = std::time::Instant::now();
        let mut round = 0u8;
        let mut failure = None;
        while t0.elapsed() < Duration::from_millis(1500) && failure.is_none() {
            round = round.wrapping_add(1);
            map_fixed(addr, len);
            let data = pattern(len, round);
            // SAFETY: filling the new mapping, which this test owns.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, len) };
            let _ = svm.set_attr(addr, len, &[Attr::Access(g1)]);
            let mut got = vec![0u8; len];
            // SAFETY: reading it back.
            unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, got.as_mut_ptr(), len) };
            let bad = bad_pages(&got, &data);
            if bad > 0 {
                failure = Some((round, bad));
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(failure, None, "(round, pages lost)");
    });
}

/// As `device_access_after_dontneed_sees_it_done`, while another thread keeps migrating
/// another buffer (so the change is often applied by another thread, at the same moment):
/// a device access that finds the change being applied waits for it to be done. (The flag
/// telling accesses to settle was lowered when the changes were taken, before they were
/// applied: a store about once in 300 went into VRAM that was then dropped.)
#[test]
fn device_access_after_dontneed_while_others_migrate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for xnack in [false, true] {
        let svm = svm2(xnack);
        let g1 = svm.gpu_ids()[0];
        let m = Mapping::anon(8 * MIB, 2 * MIB);
        svm.set_attr(m.addr, m.len, &[Attr::Access(g1)]).unwrap();
        let other = svm.alloc(16 * MIB).unwrap();
        other.fill(0, other.len(), 9);
        svm.set_attr(other.addr(), other.len(), &[Attr::Access(g1)]).unwrap();
        let stop = AtomicBool::new(false);
        let lost = std::thread::scope(|s| {
            let (svm, stop, other) = (&svm, &stop, &other);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let loc = if i % 2 == 0 { Location::Gpu(g1) } else { Location::Sysmem };
                    let _ = svm.set_attr(other.addr(), other.len(), &[Attr::PrefetchLoc(loc)]);
                    i += 1;
                }
            });
            let mut lost = Vec::new();
            for round in 0..250usize {
                if round % 20 == 0 {
                    svm.set_attr(m.addr, m.len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
                }
                let a = m.addr + (round * 131 % 2048) * PAGE;
                madvise(a, PAGE, libc::MADV_DONTNEED);
                let v = [(round as u8) | 1; 64];
                svm.gpu_write(g1, a, &v).unwrap();
                let mut back = [0u8; 64];
                svm.gpu_read(g1, a, &mut back).unwrap();
                if back != v {
                    lost.push(round);
                }
            }
            stop.store(true, Ordering::Relaxed);
            lost
        });
        assert!(lost.is_empty(), "xnack {xnack}: stores lost in rounds {lost:?}");
    }
}
