//! The seed: migration RAM <-> VRAM on the application's own memory, with transparent CPU
//! faults (kfd-svm-semantics.md sections 4 and 6, test ideas T12-T18).

use crate::util::*;
use std::time::Duration;
use usvm::{Attr, Location, Residency, Svm, SvmFlags};

fn texts(ev: &usvm::EventStream) -> Vec<String> {
    ev.try_iter().map(|e| e.to_string()).collect()
}

fn fields(t: &str) -> String {
    // Drop the id, timestamp and pid: "5 <ns> -<pid> rest" -> "5 rest".
    let mut it = t.splitn(4, ' ');
    let id = it.next().unwrap();
    let _ns = it.next();
    let _pid = it.next();
    format!("{id} {}", it.next().unwrap_or(""))
}

/// T12, T13, T14: prefetch to VRAM, a CPU fault brings one granule back, prefetch to
/// system memory brings the rest; events, counters, residency and data all along.
#[test]
fn prefetch_cpu_fault_and_prefetch_back() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(4 * MIB).unwrap();
    let data = pattern(4 * MIB, 7);
    buf.write_at(0, &data);
    let page = (buf.addr() >> 12) as u64;
    let ev = svm.subscribe();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1), Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let t: Vec<String> = texts(&ev).iter().map(|t| fields(t)).collect();
    assert!(t.contains(&format!("5 @{page:x}(400) 0->1111 1111:ffffffff 0")), "{t:?}");
    assert!(t.contains(&format!("6 @{page:x}(400) 0->1111 0 0")), "{t:?}");
    assert_eq!(svm.counters(g1).page_in, 1024);
    assert!(svm.residency(buf.addr(), 1024).iter().all(|r| *r == Residency::Vram(g1)));
    let r = &svm.ranges()[0];
    assert_eq!((r.actual_loc, r.vram_pages), (Location::Gpu(g1), 1024));
    assert_eq!(svm.smi()[0].vram_used, 4 * MIB as u64);
    // The GPU reads the pattern from VRAM.
    let mut back = vec![0u8; 4 * MIB];
    svm.gpu_read(g1, buf.addr(), &mut back).unwrap();
    assert!(back == data, "GPU read differs");
    let mut q = [Attr::PrefetchLoc(Location::Undefined)];
    svm.get_attr(buf.addr(), buf.len(), &mut q).unwrap();
    assert_eq!(q[0], Attr::PrefetchLoc(Location::Gpu(g1)));
    // T13: the CPU reads A + 3 MiB: the granule [A + 2 MiB, A + 4 MiB) comes back.
    let mut b = [0u8; 16];
    buf.read_at(3 * MIB, &mut b);
    assert_eq!(b[..], data[3 * MIB..3 * MIB + 16]);
    assert_eq!(svm.counters(g1).page_out, 512);
    let r = &svm.ranges()[0];
    assert_eq!((r.actual_loc, r.vram_pages), (Location::Gpu(g1), 512), "mixed range");
    let res = svm.residency(buf.addr(), 1024);
    assert!(res[..512].iter().all(|r| *r == Residency::Vram(g1)));
    assert!(res[512..].iter().all(|r| *r == Residency::Sysmem));
    let t: Vec<String> = texts(&ev).iter().map(|t| fields(t)).collect();
    let g2page = page + 512;
    assert!(t.contains(&format!("5 @{g2page:x}(200) 1111->0 1111:ffffffff 2")), "{t:?}");
    assert!(t.contains(&format!("6 @{g2page:x}(200) 1111->0 2 0")), "{t:?}");
    // Mapped with XNACK off: queues were evicted and restored on every GPU.
    for g in [g1, g2] {
        assert!(t.contains(&format!("9 {:x} 0", g.0)), "{t:?}");
        assert!(t.contains(&format!("a {:x} 0", g.0)), "{t:?}");
    }
    // The restore mapped a mix: the GPU still reads everything right.
    svm.gpu_read(g1, buf.addr(), &mut back).unwrap();
    assert!(back == data);
    // T14: prefetch to system memory: all of it back, the BO freed.
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Sysmem)]).unwrap();
    let r = &svm.ranges()[0];
    assert_eq!((r.actual_loc, r.vram_pages), (Location::Sysmem, 0));
    assert_eq!(svm.counters(g1).page_out, 1024);
    assert_eq!(svm.smi()[0].vram_used, 0);
    buf.read_at(0, &mut back);
    assert!(back == data, "data changed over the round trip");
}

/// T13 with granularity 0: one CPU touch brings one page back.
#[test]
fn cpu_fault_granularity_zero_moves_one_page() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    buf.fill(0, buf.len(), 0xab);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Granularity(0), Attr::PrefetchLoc(Location::Gpu(g1))])
        .unwrap();
    let ev = svm.subscribe();
    let mut b = [0u8; 1];
    buf.read_at(5 * PAGE + 9, &mut b);
    assert_eq!(b[0], 0xab);
    assert_eq!(svm.counters(g1).page_out, 1);
    let t: Vec<String> = texts(&ev).iter().map(|t| fields(t)).collect();
    let p = (buf.addr() >> 12) + 5;
    assert!(t.contains(&format!("5 @{p:x}(1) 1111->0 1111:ffffffff 2")), "{t:?}");
    // A store to another page brings that page back, with the store applied.
    buf.write_at(9 * PAGE, &[1, 2, 3]);
    let mut c = [0u8; 4];
    buf.read_at(9 * PAGE, &mut c);
    assert_eq!(c, [1, 2, 3, 0xab]);
    assert_eq!(svm.ranges()[0].vram_pages, 510);
}

/// A range whose first pages only are in VRAM, split by SET_ATTR beyond its last VRAM page
/// and then inside the VRAM part: every page keeps its data (splitting the page bitmap
/// past its last word cleared the low bits of that word: 31 pages whose data was then
/// nowhere; found by the access fuzzer).
#[test]
fn splitting_a_range_partly_in_vram_keeps_every_page() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    let data = pattern(buf.len(), 3);
    buf.write_at(0, &data);
    // The prefetch skips the tail (locked and read-only: collection leaves such pages in
    // RAM, see readonly.rs), so the range's page bitmap ends at page 293.
    let tail = (buf.addr() + 294 * PAGE) as *const libc::c_void;
    // SAFETY: locking, then unlocking, part of a live buffer of ours.
    assert_eq!(unsafe { libc::mlock(tail, 218 * PAGE) }, 0);
    mprotect(buf.addr() + 294 * PAGE, 218 * PAGE, libc::PROT_READ);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    mprotect(buf.addr() + 294 * PAGE, 218 * PAGE, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::munlock(tail, 218 * PAGE) }, 0);
    assert_eq!(svm.ranges()[0].vram_pages, 294);
    // Only the pieces inside a SET_ATTR interval run their (sticky) prefetch again: the
    // split-off head keeps its pages where they are.
    let sysmem = [Attr::PrefetchLoc(Location::Sysmem)];
    let sizes = |svm: &Svm| -> Vec<(usize, usize)> {
        svm.ranges().iter().map(|r| (r.size / PAGE, r.vram_pages)).collect()
    };
    svm.set_attr(buf.addr() + 455 * PAGE, 57 * PAGE, &sysmem).unwrap();
    assert_eq!(sizes(&svm), vec![(455, 294), (57, 0)]);
    let res = svm.residency(buf.addr(), 512);
    assert!(res[..294].iter().all(|r| *r == Residency::Vram(g1)));
    svm.set_attr(buf.addr() + 240 * PAGE, 215 * PAGE, &sysmem).unwrap();
    assert_eq!(sizes(&svm), vec![(240, 240), (215, 0), (57, 0)]);
    let mut got = vec![0u8; buf.len()];
    buf.read_at(0, &mut got);
    assert!(got == data, "data lost at byte {:?}", got.iter().zip(&data).position(|(a, b)| a != b));
}

/// T15: a prefetch to where the data already is still runs (events, eviction pair) and
/// moves nothing. T16: the stored PREFETCH_LOC applies again on a later SET_ATTR. The
/// invalidation of a migration comes inside its MIGRATE_START / MIGRATE_END (the kernel's
/// `migrate_vma_setup` issues it), with one queue eviction per migration (XNACK off).
#[test]
fn re_prefetch_and_sticky_prefetch() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(4 * MIB).unwrap();
    buf.fill(0, buf.len(), 3);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1), Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let ev = svm.subscribe();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let t: Vec<String> = texts(&ev).iter().map(|t| fields(t)).collect();
    let page = buf.addr() >> 12;
    assert!(t.contains(&format!("6 @{page:x}(400) 0->1111 0 0")), "{t:?}");
    let ids = |t: &[String]| -> Vec<String> { t.iter().map(|x| x[..1].to_string()).collect() };
    assert_eq!(ids(&t), ["5", "9", "9", "6", "a", "a"]);
    assert_eq!(svm.counters(g1).page_in, 1024, "nothing moved again");
    // A CPU touch pulls a granule back; a later SET_FLAGS sends it to the GPU again.
    let mut b = [0u8; 1];
    buf.read_at(0, &mut b);
    assert_eq!(b[0], 3);
    assert_eq!(ids(&texts(&ev)), ["5", "9", "9", "6", "a", "a"]);
    assert_eq!(svm.ranges()[0].vram_pages, 512);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::SetFlags(SvmFlags::GPU_EXEC)]).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 1024);
    assert_eq!(svm.counters(g1).page_in, 1024 + 512);
}

/// T17: XNACK off, a prefetch to G1 of a range G2 also accesses (no hive) stays in RAM.
#[test]
fn prefetch_downgraded_when_a_non_hive_gpu_maps_the_range() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(2 * MIB).unwrap();
    buf.fill(0, buf.len(), 1);
    let ev = svm.subscribe();
    svm.set_attr(
        buf.addr(),
        buf.len(),
        &[Attr::Access(g1), Attr::Access(g2), Attr::PrefetchLoc(Location::Gpu(g1))],
    )
    .unwrap();
    assert!(texts(&ev).iter().all(|t| !t.starts_with("5 ")), "no migration");
    assert_eq!(svm.ranges()[0].actual_loc, Location::Sysmem);
    assert_eq!(svm.counters(g1).page_in, 0);
}

/// T18: no VRAM to be had: the prefetch is silent and the data stays in RAM.
#[test]
fn prefetch_without_vram_is_silent() {
    let svm = Svm::builder().gpus(1).vram_bytes(MIB as u64).build().unwrap();
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(4 * MIB).unwrap();
    buf.fill(0, buf.len(), 9);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    assert_eq!(svm.counters(g).page_in, 0);
    assert!(svm.residency(buf.addr(), 1024).iter().all(|r| *r == Residency::Sysmem));
    let mut b = [0u8; 1];
    buf.read_at(4 * MIB - 1, &mut b);
    assert_eq!(b[0], 9);
}

/// A failed prefetch to VRAM does not count as a migration (section 4.2, `migrated = (r
/// == 0)`): XNACK off, the GPU_RO set by the same call still remaps the range read-only (a
/// store is then fatal); XNACK on, nothing is mapped (GPU 2's first touch faults). Taken for
/// a migration, it left the writable entries, and mapped every ACCESS GPU.
#[test]
fn failed_prefetch_is_no_migration_for_the_mapping_step() {
    let svm = Svm::builder().gpus(1).vram_bytes(MIB as u64).build().unwrap();
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    buf.fill(0, buf.len(), 9);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g)]).unwrap();
    svm.gpu_write(g, buf.addr(), &[1u8; 16]).unwrap();
    let ro_and_prefetch = [Attr::SetFlags(SvmFlags::GPU_RO), Attr::PrefetchLoc(Location::Gpu(g))];
    svm.set_attr(buf.addr(), buf.len(), &ro_and_prefetch).unwrap();
    assert_eq!(svm.counters(g).page_in, 0);
    assert_eq!(errno(svm.gpu_write(g, buf.addr(), &[2u8; 16])), libc::EFAULT);
    let mut b = [0u8; 1];
    buf.read_at(0, &mut b);
    assert_eq!(b[0], 1);

    let svm = Svm::builder().gpus(2).vram_bytes(MIB as u64).xnack(true).build().unwrap();
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(2 * MIB).unwrap();
    let mut b = [0u8; 8];
    svm.gpu_read(g1, buf.addr(), &mut b).unwrap();
    assert!(svm.ranges()[0].mapped_to_gpu);
    std::thread::sleep(Duration::from_millis(3)); // past the retry-fault dedup window
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.counters(g1).page_in, 0);
    svm.gpu_read(g2, buf.addr() + MIB, &mut b).unwrap();
    assert_eq!(svm.counters(g2).faults, 1, "GPU 2 was mapped by the failed prefetch");
}

/// The seed's trigger: PREFERRED_LOC changed from system (or undefined) to a GPU on the
/// same address and size migrates; back to system migrates back. The builder switch
/// gives today's kernel.
#[test]
fn preferred_loc_change_migrates_as_the_seed_says() {
    for seed in [true, false] {
        let svm = Svm::builder().gpus(2).vram_bytes(1 << 30).migrate_on_preferred_loc(seed).build().unwrap();
        let g1 = svm.gpu_ids()[0];
        let buf = svm.alloc(4 * MIB).unwrap();
        let data = pattern(4 * MIB, 1);
        buf.write_at(0, &data);
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PreferredLoc(Location::Sysmem)]).unwrap();
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PreferredLoc(Location::Gpu(g1))]).unwrap();
        let want = if seed { 1024 } else { 0 };
        assert_eq!(svm.ranges()[0].vram_pages, want, "seed {seed}");
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PreferredLoc(Location::Sysmem)]).unwrap();
        assert_eq!(svm.ranges()[0].vram_pages, 0);
        assert_eq!(svm.counters(g1).page_out, want as u64);
        let mut back = vec![0u8; 4 * MIB];
        buf.read_at(0, &mut back);
        assert!(back == data);
    }
}

/// With HOST_ACCESS (the default), a never-touched range ends fully in VRAM, reading zeros.
#[test]
fn never_touched_range_prefetches_fully_and_reads_zero() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(4 * MIB).unwrap();
    assert!(svm.residency(buf.addr(), 1024).iter().all(|r| *r == Residency::Unpopulated));
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1), Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 1024);
    assert_eq!(svm.counters(g1).page_in, 1024);
    let mut b = vec![1u8; 4 * MIB];
    svm.gpu_read(g1, buf.addr(), &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    let mut c = vec![1u8; MIB];
    buf.read_at(MIB, &mut c);
    assert!(c.iter().all(|&x| x == 0));
}

/// System calls on memory whose data is in VRAM: the kernel's own accesses fault too, and
/// read(2) / write(2) see the right bytes.
#[test]
fn syscalls_on_vram_resident_memory() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let src = svm.alloc(2 * MIB).unwrap();
    let dst = svm.alloc(2 * MIB).unwrap();
    let data = pattern(2 * MIB, 42);
    src.write_at(0, &data);
    for b in [&src, &dst] {
        svm.set_attr(b.addr(), b.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
        assert_eq!(svm.residency(b.addr(), 1)[0], Residency::Vram(g1));
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    std::thread::scope(|s| {
        // write(2) from the VRAM-resident source, read(2) into the VRAM-resident target.
        let w = s.spawn(|| {
            let mut off = 0;
            while off < 2 * MIB {
                // SAFETY: writing from `src`, a live mapping of 2 MiB, to our pipe.
                let n =
                    unsafe { libc::write(fds[1], (src.addr() + off) as *const libc::c_void, 2 * MIB - off) };
                assert!(n > 0, "write(2): {}", std::io::Error::last_os_error());
                off += n as usize;
            }
        });
        let mut off = 0;
        while off < 2 * MIB {
            // SAFETY: reading into `dst`, a live mapping of 2 MiB, from our pipe.
            let n = unsafe { libc::read(fds[0], (dst.addr() + off) as *mut libc::c_void, 2 * MIB - off) };
            assert!(n > 0, "read(2): {}", std::io::Error::last_os_error());
            off += n as usize;
        }
        w.join().unwrap();
    });
    // SAFETY: closing the pipe we opened.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    let mut back = vec![0u8; 2 * MIB];
    dst.read_at(0, &mut back);
    assert!(back == data, "bytes through the pipe differ");
}

/// Data in VRAM comes back into memory the application made read-only (mprotect) or
/// locked (mlock, which faults every page in), by CPU faults and by prefetch; moving a
/// page in needs the same protection on both sides, so these get a copy (they got
/// `EINVAL`, the data stayed in VRAM and the faulting thread got SIGBUS; found in review).
#[test]
fn data_comes_back_into_read_only_and_locked_memory() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let to_gpu = [Attr::PrefetchLoc(Location::Gpu(g1))];
    let ro = svm.alloc(4 * MIB).unwrap();
    let data = pattern(4 * MIB, 77);
    ro.write_at(0, &data);
    svm.set_attr(ro.addr(), ro.len(), &to_gpu).unwrap();
    mprotect(ro.addr(), ro.len(), libc::PROT_READ);
    let mut back = vec![0u8; 2 * MIB];
    ro.read_at(0, &mut back); // CPU faults
    assert!(back[..] == data[..2 * MIB]);
    svm.set_attr(ro.addr() + 2 * MIB, 2 * MIB, &[Attr::PrefetchLoc(Location::Sysmem)]).unwrap();
    assert_eq!(svm.ranges().iter().map(|r| r.vram_pages).sum::<usize>(), 0);
    ro.read_at(2 * MIB, &mut back);
    assert!(back[..] == data[2 * MIB..]);
    mprotect(ro.addr(), ro.len(), libc::PROT_READ | libc::PROT_WRITE);

    let locked = svm.alloc(2 * MIB).unwrap();
    locked.write_at(0, &data[..2 * MIB]);
    svm.set_attr(locked.addr(), locked.len(), &to_gpu).unwrap();
    // SAFETY: locking and unlocking a live mapping of ours.
    unsafe {
        assert_eq!(
            libc::mlock(locked.addr() as *const _, locked.len()),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
    locked.read_at(0, &mut back);
    assert!(back[..] == data[..2 * MIB]);
    // SAFETY: as above.
    unsafe { libc::munlock(locked.addr() as *const _, locked.len()) };
}

/// Collection that fails for a page is retried 3 times; a page still busy stays in RAM
/// and the range is mixed (partial migration).
#[test]
fn busy_pages_are_retried_then_left_in_ram() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    let data = pattern(2 * MIB, 5);
    buf.write_at(0, &data);
    svm.inject_busy_pages(2); // two failures: the third try succeeds
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 512);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Sysmem)]).unwrap();
    svm.inject_busy_pages(3); // three failures: the first page stays in RAM
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let r = &svm.ranges()[0];
    assert_eq!((r.actual_loc, r.vram_pages), (Location::Gpu(g1), 511));
    let res = svm.residency(buf.addr(), 512);
    assert_eq!(res[0], Residency::Sysmem);
    assert!(res[1..].iter().all(|r| *r == Residency::Vram(g1)));
    let mut back = vec![0u8; 2 * MIB];
    svm.gpu_read(g1, buf.addr(), &mut back).unwrap_err(); // no ACCESS: not mapped
    buf.read_at(0, &mut back);
    assert!(back == data);
}

/// A copy-engine failure in the middle of a migration leaves the pages of the failed
/// chunks in RAM, intact.
#[test]
fn copy_failure_mid_migration_keeps_data() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(8 * MIB).unwrap();
    let data = pattern(8 * MIB, 9);
    buf.write_at(0, &data);
    svm.inject_copy_failure(g1, 2).unwrap(); // the second 2 MiB chunk to run fails
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    // The copy runs on two rings (the engine thread and the caller), each in order: in
    // every range, the chunks before the failure arrived, the failed one and those after
    // it did not. (The buffer may span two ranges: ranges are cut at 32 MiB multiples.)
    let ranges = svm.ranges();
    let got: usize = ranges.iter().map(|r| r.vram_pages).sum();
    assert!(got < 2048, "a chunk failed, yet all {got} pages are in VRAM");
    for r in &ranges {
        let res = svm.residency(r.start, r.size / PAGE);
        let vram: Vec<usize> = (0..res.len()).filter(|&i| res[i] == Residency::Vram(g1)).collect();
        assert_eq!(
            vram,
            (0..r.vram_pages).collect::<Vec<_>>(),
            "the pages in VRAM are a prefix of the range"
        );
    }
    // The sticky prefetch moves the rest on the next SET_ATTR.
    svm.set_attr(buf.addr(), buf.len(), &[Attr::SetFlags(SvmFlags::GPU_EXEC)]).unwrap();
    assert_eq!(svm.ranges().iter().map(|r| r.vram_pages).sum::<usize>(), 2048);
    let mut back = vec![0u8; 8 * MIB];
    buf.read_at(0, &mut back);
    assert!(back == data);
}

/// Bad input leaves data and ranges as they were.
#[test]
fn bad_input_changes_nothing() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    let data = pattern(2 * MIB, 3);
    buf.write_at(0, &data);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let before = format!("{:?}", svm.ranges());
    for bad in [
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Undefined)]),
        svm.set_attr(buf.addr() + 1, buf.len(), &[Attr::PrefetchLoc(Location::Sysmem)]),
        svm.set_attr(
            buf.addr(),
            buf.len(),
            &[Attr::PrefetchLoc(Location::Sysmem), Attr::Access(usvm::GpuId(7))],
        ),
    ] {
        assert_eq!(bad.unwrap_err().errno(), libc::EINVAL);
    }
    assert_eq!(format!("{:?}", svm.ranges()), before);
    assert_eq!(svm.ranges()[0].vram_pages, 512);
    let mut back = vec![0u8; 2 * MIB];
    buf.read_at(0, &mut back);
    assert!(back == data);
}

/// GPU kernels and the CPU see each other's writes across migrations.
#[test]
fn gpu_and_cpu_see_each_others_writes_across_migrations() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(4 * MIB).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1)]).unwrap();
    let q = svm.create_queue(g1).unwrap();
    let base = buf.addr();
    for round in 0..6u64 {
        // CPU writes, the range goes to VRAM, a kernel adds one, the CPU checks.
        for i in 0..8 {
            buf.write_at(i * MIB / 2, &(round * 100 + i as u64).to_le_bytes());
        }
        let loc = if round % 2 == 0 { Location::Gpu(g1) } else { Location::Sysmem };
        svm.set_attr(base, buf.len(), &[Attr::PrefetchLoc(loc)]).unwrap();
        q.submit(move |ctx| {
            for i in 0..8 {
                let a = base + i * MIB / 2;
                let v = ctx.read_u64(a)?;
                ctx.write_u64(a, v + 1)?;
            }
            Ok(())
        })
        .wait()
        .unwrap();
        for i in 0..8 {
            let mut v = [0u8; 8];
            buf.read_at(i * MIB / 2, &mut v);
            assert_eq!(u64::from_le_bytes(v), round * 100 + i as u64 + 1, "round {round} word {i}");
        }
    }
}

/// Dropping the instance brings every byte back to RAM.
#[test]
fn drop_returns_everything_to_ram() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(4 * MIB, 2 * MIB);
    let data = pattern(4 * MIB, 11);
    // SAFETY: the mapping is ours, 4 MiB long and writable.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.addr as *mut u8, data.len()) };
    svm.set_attr(a.addr, a.len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 1024);
    drop(svm);
    // SAFETY: the mapping is ours and readable; the instance is gone.
    let back = unsafe { std::slice::from_raw_parts(a.addr as *const u8, 4 * MIB) };
    assert!(back == &data[..]);
    std::thread::sleep(Duration::from_millis(1));
}

/// No write is lost and no stale byte is read: threads increment their own words of a
/// range (checking each value they read) while the range migrates back and forth by
/// prefetch to the GPU, prefetch to system memory and the threads' own CPU faults.
#[test]
fn concurrent_stores_during_migrations_lose_nothing() {
    const THREADS: usize = 4;
    const WORDS: usize = (8 * MIB) / 8;
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(8 * MIB).unwrap();
    let base = buf.addr();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let errors = std::sync::atomic::AtomicU64::new(0);
    let finals: Vec<Vec<u64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (stop, errors, buf) = (&stop, &errors, &buf);
                s.spawn(move || {
                    // Word i belongs to thread i % THREADS; a stride spreads them over pages.
                    let mine: Vec<usize> = (0..WORDS).filter(|i| i % THREADS == t).step_by(97).collect();
                    let mut expect = vec![0u64; mine.len()];
                    let mut rounds = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 3 {
                        for (k, &w) in mine.iter().enumerate() {
                            let mut v = [0u8; 8];
                            buf.read_at(w * 8, &mut v);
                            if u64::from_le_bytes(v) != expect[k]
                                && errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3
                            {
                                eprintln!(
                                    "thread {t} word {w}: read {} expected {}",
                                    u64::from_le_bytes(v),
                                    expect[k]
                                );
                            }
                            expect[k] += 1;
                            buf.write_at(w * 8, &expect[k].to_le_bytes());
                        }
                        rounds += 1;
                    }
                    expect
                })
            })
            .collect();
        for i in 0..40 {
            let g = [0u32, 9, 2][i % 3];
            let loc = if i % 2 == 0 { Location::Gpu(g1) } else { Location::Sysmem };
            svm.set_attr(base, buf.len(), &[Attr::Granularity(g), Attr::PrefetchLoc(loc)]).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(errors.load(std::sync::atomic::Ordering::Relaxed), 0, "a thread read a stale value");
    svm.set_attr(base, buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    for (t, expect) in finals.iter().enumerate() {
        let mine: Vec<usize> = (0..WORDS).filter(|i| i % THREADS == t).step_by(97).collect();
        for (k, &w) in mine.iter().enumerate() {
            let mut v = [0u8; 8];
            svm.gpu_read(g1, base + w * 8, &mut v).unwrap_err(); // no ACCESS: the GPU cannot look
            buf.read_at(w * 8, &mut v);
            assert_eq!(u64::from_le_bytes(v), expect[k], "thread {t} word {w}: a write was lost");
        }
    }
    // Every other byte is still zero.
    let mut all = vec![0u8; 8 * MIB];
    buf.read_at(0, &mut all);
    let touched: std::collections::HashSet<usize> =
        (0..THREADS).flat_map(|t| (0..WORDS).filter(move |i| i % THREADS == t).step_by(97)).collect();
    for w in 0..WORDS {
        if !touched.contains(&w) {
            assert_eq!(&all[w * 8..w * 8 + 8], &[0u8; 8], "word {w} changed");
        }
    }
}

/// Memory the engine cannot migrate (a shared mapping, a file mapping) stays in place and
/// remains usable by the CPU and the GPU; the prefetch still reports its (empty) piece.
#[test]
fn unmigratable_memory_stays_in_place() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let sh = Mapping::with(2 * MIB, 2 * MIB, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
    // SAFETY: the shared mapping is ours and writable.
    unsafe { std::ptr::write_bytes(sh.addr as *mut u8, 0x42, 2 * MIB) };
    let ev = svm.subscribe();
    svm.set_attr(sh.addr, 2 * MIB, &[Attr::Access(g1), Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let t: Vec<String> = texts(&ev).iter().map(|t| fields(t)).collect();
    let page = sh.addr >> 12;
    assert!(t.contains(&format!("6 @{page:x}(200) 0->1111 0 0")), "{t:?}");
    assert_eq!(svm.ranges()[0].vram_pages, 0);
    assert!(svm.residency(sh.addr, 512).iter().all(|r| *r == Residency::Sysmem));
    let mut b = [0u8; 8];
    svm.gpu_read(g1, sh.addr + MIB, &mut b).unwrap();
    assert_eq!(b, [0x42; 8]);
    svm.gpu_write(g1, sh.addr, &[7; 8]).unwrap();
    // SAFETY: reading our own mapping.
    assert_eq!(unsafe { *(sh.addr as *const u8) }, 7);
}

/// Several instances migrate their own memory at the same time, each with its own fault
/// handler, without touching each other.
#[test]
fn instances_migrate_side_by_side() {
    std::thread::scope(|s| {
        for k in 0..3u8 {
            s.spawn(move || {
                let svm = Svm::builder().gpus(1).vram_bytes(64 << 20).build().unwrap();
                let g = svm.gpu_ids()[0];
                let buf = svm.alloc(4 * MIB).unwrap();
                let data = pattern(4 * MIB, k);
                buf.write_at(0, &data);
                for round in 0..5 {
                    let loc = if round % 2 == 0 { Location::Gpu(g) } else { Location::Sysmem };
                    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(loc)]).unwrap();
                    let mut back = vec![0u8; 4 * MIB];
                    buf.read_at(0, &mut back); // faults its way back when in VRAM
                    assert!(back == data, "instance {k} round {round}");
                }
                assert_eq!(svm.counters(g).page_in, 3 * 1024);
            });
        }
    });
}

/// A fault outside every usvm range is never swallowed: with an instance holding
/// VRAM-resident data (its fault handler running), a stray access still kills the process
/// with SIGSEGV, as it would without usvm. Runs in a child process (this test binary,
/// started again on this test alone).
#[test]
fn stray_fault_still_crashes() {
    if std::env::var_os("USVM_STRAY_FAULT_CHILD").is_some() {
        let svm = svm2(false);
        let g1 = svm.gpu_ids()[0];
        let buf = svm.alloc(2 * MIB).unwrap();
        buf.fill(0, buf.len(), 1);
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
        // Inaccessible memory that stays mapped (an address unmapped here could be taken by
        // another thread's mmap before the read, and the read would succeed).
        let hole = Mapping::anon(PAGE, PAGE);
        mprotect(hole.addr, PAGE, libc::PROT_NONE);
        let addr = hole.addr;
        // SAFETY: deliberately reading inaccessible memory: this child process must die.
        let v = unsafe { std::ptr::read_volatile(addr as *const u8) };
        std::process::exit(i32::from(v) + 100); // not reached
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "migrate::stray_fault_still_crashes", "--nocapture", "--test-threads=1"])
        .env("USVM_STRAY_FAULT_CHILD", "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "child ended with {:?}; its output: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// VRAM -> VRAM goes through RAM (section 4.7): the whole range leaves the first GPU, then
/// arrives on the second; counters on both GPUs follow.
#[test]
fn vram_to_vram_goes_through_ram() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(4 * MIB).unwrap();
    let data = pattern(4 * MIB, 77);
    buf.write_at(0, &data);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let ev = svm.subscribe();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g2))]).unwrap();
    let t: Vec<String> = texts(&ev).iter().map(|t| fields(t)).filter(|t| t.starts_with("5 ")).collect();
    let page = buf.addr() >> 12;
    assert_eq!(
        t,
        vec![
            format!("5 @{page:x}(400) 1111->0 2222:ffffffff 0"),
            format!("5 @{page:x}(400) 0->2222 2222:ffffffff 0")
        ]
    );
    assert_eq!((svm.counters(g1).page_out, svm.counters(g2).page_in), (1024, 1024));
    assert!(svm.residency(buf.addr(), 1024).iter().all(|r| *r == Residency::Vram(g2)));
    assert_eq!(svm.smi()[0].vram_used, 0);
    let mut back = vec![0u8; 4 * MIB];
    buf.read_at(0, &mut back);
    assert!(back == data);
}

/// Waits for the child `pid` for up to ten seconds (killing it after that); true when it
/// exited with status 0.
fn child_succeeds(pid: libc::pid_t) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: polling our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        assert_eq!(r, 0, "waitpid");
        if std::time::Instant::now() > deadline {
            // SAFETY: killing and reaping our own child, which is stuck.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// fork: the child reads correct data for every page, including pages whose data was in
/// VRAM (usvm brings it back to RAM before the fork).
#[test]
fn fork_child_reads_vram_resident_data() {
    if !in_own_process("migrate::fork_child_reads_vram_resident_data") {
        return;
    }
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(4 * MIB).unwrap();
    let data = pattern(4 * MIB, 99);
    buf.write_at(0, &data);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 1024);
    let (addr, expect) = (buf.addr(), data.as_ptr() as usize);
    // SAFETY: the child only compares memory and exits; it uses no lock and no thread.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: both are live 4 MiB regions in the child's copy of the address space.
        let same = unsafe { libc::memcmp(addr as *const _, expect as *const _, 4 * MIB) } == 0;
        // SAFETY: leaving the child at once, without running the test harness's code.
        unsafe { libc::_exit(if same { 0 } else { 1 }) };
    }
    assert!(pid > 0);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child saw wrong data ({status:#x})"
    );
    // The parent goes on: its data is in RAM now, intact. Pages still shared with the
    // child since the fork cannot be collected (UFFDIO_MOVE refuses them, EBUSY) and stay in
    // RAM; pages the parent wrote since are its own again and migrate.
    let mut back = vec![0u8; 4 * MIB];
    buf.read_at(0, &mut back);
    assert!(back == data);
    buf.write_at(0, &data[..2 * MIB]);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert!(svm.ranges()[0].vram_pages >= 512, "{} pages moved", svm.ranges()[0].vram_pages);
    buf.read_at(0, &mut back);
    assert!(back == data);
}

/// fork: a child may drop the instance and the buffers it inherited (they are not live in
/// the child: nothing runs, nothing is torn down); the parent's instance goes on serving
/// migrations and CPU faults.
#[test]
fn fork_child_may_drop_what_it_inherited() {
    if !in_own_process("migrate::fork_child_may_drop_what_it_inherited") {
        return;
    }
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(4 * MIB).unwrap();
    let data = pattern(4 * MIB, 5);
    buf.write_at(0, &data);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let (addr, expect) = (buf.addr(), data.as_ptr() as usize);
    // SAFETY: the child compares memory, drops what it inherited (which must neither wait
    // for threads it does not have nor touch the parent) and leaves.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: both are live 4 MiB regions in the child's copy of the address space.
        let same = unsafe { libc::memcmp(addr as *const _, expect as *const _, 4 * MIB) } == 0;
        drop(buf);
        drop(svm);
        // SAFETY: leaving the child without running the test harness's code.
        unsafe { libc::_exit(if same { 0 } else { 1 }) };
    }
    assert!(pid > 0);
    assert!(child_succeeds(pid), "the child saw wrong data or did not finish");
    // The parent's instance still works: the data migrates again (written since the fork,
    // its pages are the parent's own) and a CPU fault brings it back.
    buf.write_at(0, &data);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert!(svm.ranges()[0].vram_pages > 0, "nothing migrated");
    let mut back = vec![0u8; 4 * MIB];
    buf.read_at(0, &mut back);
    assert!(back == data);
}

/// fork while other threads of the parent store into memory that keeps migrating: no store
/// is lost in the parent. Threads increment their own words (checking each value they
/// read) while the main thread prefetches the range back and forth and forks now and then
/// (the child leaves at once).
#[test]
fn fork_during_concurrent_stores_and_migrations_loses_nothing() {
    if !in_own_process("migrate::fork_during_concurrent_stores_and_migrations_loses_nothing") {
        return;
    }
    const THREADS: usize = 4;
    const WORDS: usize = (8 * MIB) / 8;
    let rounds: usize =
        std::env::var("USVM_FORK_STORES_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let mine = |t: usize| -> Vec<usize> { (0..WORDS).filter(|i| i % THREADS == t).step_by(97).collect() };
    for round in 0..rounds {
        let buf = svm.alloc(8 * MIB).unwrap();
        let base = buf.addr();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let errors = std::sync::atomic::AtomicU64::new(0);
        let finals: Vec<Vec<u64>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (stop, errors, buf) = (&stop, &errors, &buf);
                    s.spawn(move || {
                        let mine = mine(t);
                        let mut expect = vec![0u64; mine.len()];
                        let mut rounds = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 3 {
                            for (k, &w) in mine.iter().enumerate() {
                                let mut v = [0u8; 8];
                                buf.read_at(w * 8, &mut v);
                                let got = u64::from_le_bytes(v);
                                if got != expect[k] && errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3
                                {
                                    eprintln!(
                                        "round {round} thread {t} word {w} (page {:#x}, offset {:#x}): read {got} \
                                         expected {}",
                                        (base + w * 8) >> 12,
                                        w * 8,
                                        expect[k]
                                    );
                                }
                                expect[k] += 1;
                                buf.write_at(w * 8, &expect[k].to_le_bytes());
                            }
                            rounds += 1;
                        }
                        expect
                    })
                })
                .collect();
            struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let _stop = StopOnDrop(&stop);
            for i in 0..40 {
                let g = [0u32, 9, 2][i % 3];
                let loc = if i % 2 == 0 { Location::Gpu(g1) } else { Location::Sysmem };
                svm.set_attr(base, buf.len(), &[Attr::Granularity(g), Attr::PrefetchLoc(loc)]).unwrap();
                if i % 10 == 5 {
                    // SAFETY: the child only leaves, at once, without running any code of the
                    // parent's (no lock, no allocation).
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        // SAFETY: leaving the child at once.
                        unsafe { libc::_exit(0) };
                    }
                    assert!(pid > 0);
                    let mut status = 0;
                    // SAFETY: waiting for our own child.
                    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut lost = 0;
        for (t, expect) in finals.iter().enumerate() {
            for (k, &w) in mine(t).iter().enumerate() {
                let mut v = [0u8; 8];
                buf.read_at(w * 8, &mut v);
                if u64::from_le_bytes(v) != expect[k] {
                    lost += 1;
                    eprintln!(
                        "round {round} thread {t} word {w}: {} at the end, expected {}",
                        u64::from_le_bytes(v),
                        expect[k]
                    );
                }
            }
        }
        assert_eq!(errors.load(std::sync::atomic::Ordering::Relaxed), 0, "round {round}: a store was lost");
        assert_eq!(lost, 0, "round {round}: a store was lost");
    }
}

/// T17 with an XGMI hive: the prefetch to G1 happens although G2 maps the range too, and
/// G2 reads G1's VRAM through a peer mapping (no migration).
#[test]
fn xgmi_hive_maps_peer_vram() {
    let svm = Svm::builder().gpus(2).vram_bytes(1 << 30).xgmi_hive(true).build().unwrap();
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(2 * MIB).unwrap();
    let data = pattern(2 * MIB, 17);
    buf.write_at(0, &data);
    svm.set_attr(
        buf.addr(),
        buf.len(),
        &[Attr::Access(g1), Attr::Access(g2), Attr::PrefetchLoc(Location::Gpu(g1))],
    )
    .unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 512);
    let mut back = vec![0u8; 2 * MIB];
    svm.gpu_read(g2, buf.addr(), &mut back).unwrap();
    assert!(back == data, "G2 reads G1's VRAM");
    svm.gpu_write(g2, buf.addr(), b"peer").unwrap();
    assert_eq!((svm.counters(g2).page_in, svm.counters(g1).page_out), (0, 0), "no migration");
    let mut b = [0u8; 4];
    buf.read_at(0, &mut b);
    assert_eq!(&b, b"peer");
}

/// T31: XNACK on, no hive: G1 touches a granule (it moves to G1), G2 touches another
/// granule of the same range: the whole range leaves G1 first, then the granule moves to G2.
#[test]
fn t31_gpu_to_gpu_through_ram() {
    let svm = svm2(true);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(4 * MIB).unwrap();
    let data = pattern(4 * MIB, 31);
    buf.write_at(0, &data);
    svm.set_attr(buf.addr(), buf.len(), &[]).unwrap();
    let mut b = [0u8; 8];
    svm.gpu_read(g1, buf.addr(), &mut b).unwrap();
    assert_eq!(svm.counters(g1).page_in, 512);
    std::thread::sleep(Duration::from_millis(3)); // past the fault dedup window
    let ev = svm.subscribe();
    svm.gpu_read(g2, buf.addr() + 3 * MIB, &mut b).unwrap();
    assert_eq!(b[..], data[3 * MIB..3 * MIB + 8]);
    let page = buf.addr() >> 12;
    let t: Vec<String> = texts(&ev).iter().map(|t| fields(t)).filter(|t| t.starts_with("5 ")).collect();
    assert_eq!(
        t,
        vec![
            format!("5 @{page:x}(400) 1111->0 ffffffff:ffffffff 1"),
            format!("5 @{:x}(200) 0->2222 ffffffff:ffffffff 1", page + 512),
        ]
    );
    assert_eq!((svm.counters(g1).page_out, svm.counters(g2).page_in), (512, 512));
}

/// VRAM pressure (T30, section 6.5): a working set twice the VRAM; each prefetch evicts the
/// least recently used buffer objects (trigger TTM_EVICTION, every range sharing them back
/// to RAM), and every byte survives.
#[test]
fn oversubscribed_vram_evicts_lru_and_keeps_every_byte() {
    let svm = Svm::builder().gpus(1).vram_bytes(8 << 20).build().unwrap();
    let g = svm.gpu_ids()[0];
    let bufs: Vec<usvm::SvmBuffer> = (0..4).map(|_| svm.alloc(4 * MIB).unwrap()).collect();
    let datas: Vec<Vec<u8>> = (0..4).map(|k| pattern(4 * MIB, 50 + k as u8)).collect();
    for (b, d) in bufs.iter().zip(&datas) {
        b.write_at(0, d);
    }
    let ev = svm.subscribe();
    for round in 0..3 {
        for (k, b) in bufs.iter().enumerate() {
            svm.set_attr(b.addr(), b.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
            let in_vram: usize = svm
                .ranges()
                .iter()
                .filter(|r| r.start >= b.addr() && r.start < b.addr() + b.len())
                .map(|r| r.vram_pages)
                .sum();
            assert_eq!(in_vram, 1024, "round {round} buffer {k}: the prefetch made room");
            assert!(svm.smi()[0].vram_used <= 8 << 20);
        }
    }
    let evictions = texts(&ev).iter().filter(|t| t.starts_with("5 ") && t.ends_with(" 3")).count();
    assert!(evictions >= 4, "TTM evictions: {evictions}");
    for (k, (b, d)) in bufs.iter().zip(&datas).enumerate() {
        let mut back = vec![0u8; 4 * MIB];
        b.read_at(0, &mut back);
        assert!(back == *d, "buffer {k} changed");
    }
}

/// Residency of memory whose data is in the page cache: a `MAP_SHARED` file mapping full of
/// data reads `Sysmem` before this process touched a page of it (pagemap alone says such
/// pages are not mapped; mincore finds them), with a range over it or not; untouched
/// anonymous memory, private or shared, stays `Unpopulated`.
#[test]
fn page_cache_pages_read_as_sysmem() {
    const LEN: usize = 64 * PAGE;
    let path = std::env::temp_dir().join(format!("usvm-residency-{}", std::process::id()));
    std::fs::write(&path, pattern(LEN, 9)).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: a fresh shared mapping of our own file at an address the kernel picks.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let file_map = Mapping { addr: p as usize, len: LEN };
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    assert_eq!(svm.residency(file_map.addr, 64), vec![Residency::Sysmem; 64], "before SET_ATTR");
    svm.set_attr(file_map.addr, LEN, &[Attr::Access(g1)]).unwrap();
    assert_eq!(svm.residency(file_map.addr, 64), vec![Residency::Sysmem; 64], "with a range");
    let mut b = [0u8; 8];
    svm.gpu_read(g1, file_map.addr + 5 * PAGE, &mut b).unwrap();
    assert_eq!(b[..], pattern(LEN, 9)[5 * PAGE..5 * PAGE + 8]);
    let anon = Mapping::anon(4 * PAGE, PAGE);
    let shared = Mapping::with(4 * PAGE, PAGE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
    for m in [&anon, &shared] {
        assert_eq!(svm.residency(m.addr, 4), vec![Residency::Unpopulated; 4]);
    }
    // SAFETY: a store into our own shared mapping.
    unsafe { (shared.addr as *mut u8).write(1) };
    let r = svm.residency(shared.addr, 4);
    assert_eq!((r[0], r[1]), (Residency::Sysmem, Residency::Unpopulated));
}
