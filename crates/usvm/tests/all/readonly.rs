//! Read-only, PROT_NONE and locked application memory migrates as the kernel's collection
//! takes it (issue 14): `migrate_vma_setup` looks at page-table entries only, whatever the
//! VMA's protection or mlock, while `UFFDIO_MOVE` refuses (`EINVAL`) a source that is not
//! writable or whose protection or lock differs from the staging area's. Every migration to
//! VRAM takes such pages (prefetch, the PREFERRED_LOC change, GPU retry faults, VRAM to
//! VRAM through RAM); a CPU read faults them back, a CPU write still gets SIGSEGV, a GPU
//! store through a read-only mapping is still fatal. Then the adversarial part: the
//! application reads, mprotects back to read-write, munmaps, mremaps and forks while such
//! pages migrate, and no byte is wrong and no fault is spurious.
//!
//! Tests that install a signal handler or fork run in a process of their own: this test
//! binary, re-executed on that one test.

use crate::util::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use usvm::{Attr, Location, Residency, Svm};

/// Copies `data` to `addr` (memory of the test's own).
fn write(addr: usize, data: &[u8]) {
    // SAFETY: `addr` is memory this test mapped, at least `data.len()` bytes, writable now.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}

/// `len` bytes read at `addr` (memory of the test's own).
fn read(addr: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: `addr` is memory this test mapped, at least `len` bytes, readable now.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, v.as_mut_ptr(), len) };
    v
}

/// How many pages of `[addr, addr + npages)` are where `r` says.
fn count(svm: &Svm, addr: usize, npages: usize, r: Residency) -> usize {
    svm.residency(addr, npages).iter().filter(|&&x| x == r).count()
}

/// Whether the mapping at `addr` is locked (`lo` in its VmFlags).
fn is_locked(addr: usize) -> bool {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((s, e)) = range.split_once('-')
            && let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
        {
            inside = s <= addr && addr < e;
        } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            return flags.split_ascii_whitespace().any(|f| f == "lo");
        }
    }
    false
}

/// Locks (`mlock`, which populates) or unlocks memory of the test's own.
fn lock(addr: usize, len: usize, on: bool) {
    // SAFETY: (un)locking memory this test mapped.
    let r = unsafe {
        if on {
            libc::mlock(addr as *const libc::c_void, len)
        } else {
            libc::munlock(addr as *const libc::c_void, len)
        }
    };
    assert_eq!(r, 0, "mlock: {}", std::io::Error::last_os_error());
}

/// A read-only mapping of `len` bytes: its first half written with `data` before the
/// mprotect, its third quarter only read (zero pages), its last quarter never touched.
fn read_only_mapping(len: usize, data: &[u8]) -> Mapping {
    let m = Mapping::anon(len, 2 * MIB);
    write(m.addr, &data[..len / 2]);
    let _ = read(m.addr + len / 2, len / 4);
    mprotect(m.addr, len, libc::PROT_READ);
    m
}

/// What [`read_only_mapping`] holds.
fn read_only_contents(len: usize, data: &[u8]) -> Vec<u8> {
    let mut want = vec![0u8; len];
    want[..len / 2].copy_from_slice(&data[..len / 2]);
    want
}

/// A prefetch to a GPU collects every page of a read-only mapping (written before the
/// mprotect, zero pages, never populated), as it collects writable ones: residency and
/// page_in say so; CPU reads fault the data back. Writable memory migrates as before
/// afterwards (the staging area was put back).
#[test]
fn prefetch_collects_read_only_pages() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let data = pattern(len, 3);
    let m = read_only_mapping(len, &data);
    let n = len / PAGE;
    let page_in = svm.counters(g1).page_in;
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, m.addr, n, Residency::Vram(g1)), n, "{:?}", svm.ranges());
    assert_eq!(svm.counters(g1).page_in - page_in, n as u64);
    let faults = svm.cpu_faults();
    let got = read(m.addr, len);
    assert_eq!(bad_pages(&got, &read_only_contents(len, &data)), 0);
    assert!(svm.cpu_faults() > faults, "no CPU fault brought the data back");
    assert_eq!(count(&svm, m.addr, n, Residency::Sysmem), n);
    assert_eq!(svm.smi()[0].vram_used, 0);

    // Writable memory still moves through the same staging area, both ways.
    let w = svm.alloc(8 * MIB).unwrap();
    let wd = pattern(8 * MIB, 4);
    w.write_at(0, &wd);
    svm.set_attr(w.addr(), w.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, w.addr(), 2048, Residency::Vram(g1)), 2048);
    let mut back = vec![0u8; 8 * MIB];
    w.read_at(0, &mut back);
    assert!(back == wd);
}

/// The seed's PREFERRED_LOC change migrates read-only pages; a GPU reads them from VRAM.
#[test]
fn preferred_loc_change_collects_read_only_pages() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 4 * MIB;
    let data = pattern(len, 5);
    let m = read_only_mapping(len, &data);
    svm.set_attr(m.addr, len, &[Attr::Access(g1), Attr::PreferredLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, m.addr, len / PAGE, Residency::Vram(g1)), len / PAGE);
    let mut b = vec![0u8; 64 * 1024];
    svm.gpu_read(g1, m.addr + 4096, &mut b).unwrap();
    assert!(b[..] == data[4096..4096 + b.len()]);
    assert_eq!(bad_pages(&read(m.addr, len), &read_only_contents(len, &data)), 0);
}

/// XNACK on: a GPU retry fault on read-only memory whose preferred location is the GPU
/// migrates the granule (it used to map it in place: nothing could be collected); a GPU
/// store through the read-only mapping is still fatal.
#[test]
fn gpu_retry_fault_collects_read_only_pages() {
    let svm = Svm::builder()
        .gpus(2)
        .vram_bytes(1 << 30)
        .xnack(true)
        .migrate_on_preferred_loc(false)
        .build()
        .unwrap();
    let g1 = svm.gpu_ids()[0];
    let len = 4 * MIB;
    let data = pattern(len, 6);
    let m = read_only_mapping(len, &data);
    svm.set_attr(m.addr, len, &[Attr::PreferredLoc(Location::Gpu(g1)), Attr::Granularity(9)]).unwrap();
    assert_eq!(count(&svm, m.addr, len / PAGE, Residency::Vram(g1)), 0, "migrated too early");
    let mut b = vec![0u8; 4096];
    svm.gpu_read(g1, m.addr + 3 * PAGE, &mut b).unwrap();
    assert!(b[..] == data[3 * PAGE..4 * PAGE]);
    assert!(svm.counters(g1).faults >= 1);
    assert_eq!(count(&svm, m.addr, 512, Residency::Vram(g1)), 512, "the granule was not migrated");
    assert_eq!(svm.gpu_write(g1, m.addr, &[1; 8]).unwrap_err().errno(), libc::EFAULT);
    assert_eq!(bad_pages(&read(m.addr, len), &read_only_contents(len, &data)), 0);
}

/// VRAM to VRAM through RAM: read-only pages leave the first GPU (copied back into the
/// read-only mapping) and are collected again for the second.
#[test]
fn vram_to_vram_moves_read_only_pages() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let len = 4 * MIB;
    let n = len / PAGE;
    let data = pattern(len, 7);
    let m = read_only_mapping(len, &data);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let (out1, in2) = (svm.counters(g1).page_out, svm.counters(g2).page_in);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g2))]).unwrap();
    assert_eq!(count(&svm, m.addr, n, Residency::Vram(g2)), n);
    assert_eq!(svm.counters(g1).page_out - out1, n as u64);
    assert_eq!(svm.counters(g2).page_in - in2, n as u64);
    assert_eq!(bad_pages(&read(m.addr, len), &read_only_contents(len, &data)), 0);
}

/// A GPU store through a read-only mapping whose data is in VRAM is a fatal fault (EFAULT),
/// XNACK off and on; reads work and the data is unchanged.
#[test]
fn gpu_store_to_read_only_vram_data_is_fatal() {
    for xnack in [false, true] {
        let svm = svm2(xnack);
        let g1 = svm.gpu_ids()[0];
        let len = 2 * MIB;
        let data = pattern(len, 8);
        let m = read_only_mapping(len, &data);
        svm.set_attr(m.addr, len, &[Attr::Access(g1), Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
        assert_eq!(count(&svm, m.addr, len / PAGE, Residency::Vram(g1)), len / PAGE);
        let mut b = vec![0u8; 4096];
        svm.gpu_read(g1, m.addr, &mut b).unwrap();
        assert!(b[..] == data[..4096], "xnack {xnack}");
        assert_eq!(
            svm.gpu_write(g1, m.addr + PAGE, &[1; 64]).unwrap_err().errno(),
            libc::EFAULT,
            "xnack {xnack}"
        );
        assert_eq!(bad_pages(&read(m.addr, len), &read_only_contents(len, &data)), 0, "xnack {xnack}");
    }
}

static SEGV_AT: AtomicUsize = AtomicUsize::new(0);
static SEGV_COUNT: AtomicUsize = AtomicUsize::new(0);
static REGION: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));

/// SIGSEGV handler: records the address; inside the test's region it makes the region
/// writable (the faulting store is retried on return), elsewhere it puts the default action
/// back, so that a real crash stays a crash.
extern "C" fn on_segv(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo for SIGSEGV.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, len) = (REGION.0.load(Ordering::SeqCst), REGION.1.load(Ordering::SeqCst));
    SEGV_AT.store(addr, Ordering::SeqCst);
    SEGV_COUNT.fetch_add(1, Ordering::SeqCst);
    if start <= addr && addr < start + len {
        // SAFETY: mprotect is async-signal-safe; the region is the test's own mapping.
        unsafe { libc::mprotect(start as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_WRITE) };
    } else {
        // SAFETY: resetting this signal's action to the default, async-signal-safe.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    }
}

/// A CPU store to read-only memory whose data is in VRAM gets SIGSEGV, as without usvm
/// (the kernel checks the mapping's protection before any fault reaches usvm). The handler
/// mprotects the memory back to read-write and the store, retried, faults the data back
/// and lands. In a process of its own (a process-wide signal handler).
#[test]
fn cpu_store_to_read_only_vram_data_gets_sigsegv() {
    const NAME: &str = "readonly::cpu_store_to_read_only_vram_data_gets_sigsegv";
    if !in_own_process(NAME) {
        return;
    }
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 4 * MIB;
    let data = pattern(len, 9);
    let m = read_only_mapping(len, &data);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, m.addr, len / PAGE, Residency::Vram(g1)), len / PAGE);
    REGION.0.store(m.addr, Ordering::SeqCst);
    REGION.1.store(len, Ordering::SeqCst);
    // SAFETY: installing a handler for SIGSEGV in this process of its own; `sa` is fully
    // initialised.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0);
    }
    let target = m.addr + len / 2 + 5 * PAGE + 40;
    // SAFETY: a store to the test's own (read-only) mapping: the handler above makes it
    // writable, and the store is retried.
    unsafe { std::ptr::write_volatile(target as *mut u8, 0xee) };
    assert_eq!(SEGV_COUNT.load(Ordering::SeqCst), 1);
    assert_eq!(SEGV_AT.load(Ordering::SeqCst), target);
    let mut want = read_only_contents(len, &data);
    want[target - m.addr] = 0xee;
    assert_eq!(bad_pages(&read(m.addr, len), &want), 0);
    assert_eq!(SEGV_COUNT.load(Ordering::SeqCst), 1, "a read got SIGSEGV");
}

/// PROT_NONE memory migrates too (the kernel's collection ignores the protection); the
/// GPU cannot reach it (fatal), and once the application makes it accessible again a CPU
/// read faults the data back.
#[test]
fn prot_none_pages_migrate_and_come_back() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 4 * MIB;
    let data = pattern(len, 10);
    let m = Mapping::anon(len, 2 * MIB);
    write(m.addr, &data);
    mprotect(m.addr, len, libc::PROT_NONE);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, m.addr, len / PAGE, Residency::Vram(g1)), len / PAGE);
    let mut b = [0u8; 8];
    assert_eq!(svm.gpu_read(g1, m.addr, &mut b).unwrap_err().errno(), libc::EFAULT);
    mprotect(m.addr, len, libc::PROT_READ | libc::PROT_WRITE);
    assert_eq!(bad_pages(&read(m.addr, len), &data), 0);
    write(m.addr, &[1; 16]);
    assert_eq!(read(m.addr, 16), vec![1; 16]);
}

/// Locked writable memory migrates (the kernel's collection takes mlocked pages) and stays
/// locked; its data comes back into the locked mapping.
#[test]
fn locked_memory_migrates_and_stays_locked() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 4 * MIB;
    let data = pattern(len, 11);
    let m = Mapping::anon(len, 2 * MIB);
    write(m.addr, &data);
    lock(m.addr, len, true);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, m.addr, len / PAGE, Residency::Vram(g1)), len / PAGE);
    assert!(is_locked(m.addr), "the application's mapping lost its lock");
    assert_eq!(bad_pages(&read(m.addr, len), &data), 0);
    assert!(is_locked(m.addr));
    lock(m.addr, len, false);
}

/// Writable and executable memory (a JIT's code buffer) migrates: the staging piece takes
/// the same protection, and the application's keeps it.
#[test]
fn writable_executable_memory_migrates() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 2 * MIB;
    let data = pattern(len, 17);
    let m = Mapping::anon(len, 2 * MIB);
    write(m.addr, &data);
    mprotect(m.addr, len, libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, m.addr, len / PAGE, Residency::Vram(g1)), len / PAGE);
    assert_eq!(bad_pages(&read(m.addr, len), &data), 0);
    write(m.addr + 100, &[3; 8]);
    assert_eq!(read(m.addr + 100, 8), vec![3; 8]);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|l| {
        let (r, _) = l.split_once(' ').unwrap();
        let (s, e) = r.split_once('-').unwrap();
        let (s, e) = (usize::from_str_radix(s, 16).unwrap(), usize::from_str_radix(e, 16).unwrap());
        s <= m.addr && m.addr < e
    });
    assert!(line.is_some_and(|l| l.contains(" rwxp ")), "{line:?}");
}

/// Locked read-only memory stays in RAM (a deviation: the only way to take pages out of a
/// mapping that is not writable, `mremap(MREMAP_DONTUNMAP)`, unlocks the mapping) and stays
/// locked, its data intact; the rest of the range migrates.
#[test]
fn locked_read_only_memory_stays_in_ram_and_locked() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 4 * MIB;
    let data = pattern(len, 12);
    let m = Mapping::anon(len, 2 * MIB);
    write(m.addr, &data);
    lock(m.addr, len / 2, true);
    mprotect(m.addr, len, libc::PROT_READ);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let res = svm.residency(m.addr, len / PAGE);
    assert!(res[..512].iter().all(|r| *r == Residency::Sysmem), "locked read-only pages moved");
    assert!(res[512..].iter().all(|r| *r == Residency::Vram(g1)), "read-only pages stayed");
    assert!(is_locked(m.addr));
    assert_eq!(bad_pages(&read(m.addr, len), &data), 0);
    lock(m.addr, len / 2, false);
}

/// Threads read read-only memory all the time while another thread migrates it back and
/// forth: every read sees the data (a page taken out of the application is missing, and a
/// read of it waits for usvm; it must never see zeros).
#[test]
fn readers_racing_read_only_migrations_see_their_data() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let data = pattern(len, 13);
    let m = read_only_mapping(len, &data);
    let want = read_only_contents(len, &data);
    let stop = AtomicBool::new(false);
    let bad = AtomicU64::new(0);
    let page_in = svm.counters(g1).page_in;
    std::thread::scope(|s| {
        for t in 0..3usize {
            let (stop, bad, want, addr) = (&stop, &bad, &want, m.addr);
            s.spawn(move || {
                let mut i = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let page = i % (len / PAGE);
                    let off = page * PAGE + (i % (PAGE / 8)) * 8;
                    // SAFETY: reading a word of the test's own read-only mapping.
                    let v = unsafe { std::ptr::read_volatile((addr + off) as *const u64) };
                    let w = u64::from_ne_bytes(want[off..off + 8].try_into().unwrap());
                    if v != w && bad.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("thread {t}: page {page} offset {off:#x} read {v:#x}, expected {w:#x}");
                    }
                    i = i.wrapping_mul(31).wrapping_add(17);
                }
            });
        }
        for round in 0..40 {
            let loc = if round % 2 == 0 { Location::Gpu(g1) } else { Location::Sysmem };
            let g = [9u32, 0, 4][round % 3];
            svm.set_attr(m.addr, len, &[Attr::Granularity(g), Attr::PrefetchLoc(loc)]).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0, "a read saw wrong data");
    assert!(svm.counters(g1).page_in > page_in, "nothing migrated");
    assert_eq!(bad_pages(&read(m.addr, len), &want), 0);
}

/// The application mprotects read-only memory back to read-write (and stores into it, and
/// makes it read-only again) while another thread migrates it back and forth: no store gets
/// a spurious SIGSEGV (it would end this process), every store lands, every read sees the
/// data. In a process of its own, so that a crash is reported as this test's.
#[test]
fn mprotect_racing_read_only_migrations() {
    const NAME: &str = "readonly::mprotect_racing_read_only_migrations";
    if !in_own_process(NAME) {
        return;
    }
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let m = Mapping::anon(len, 2 * MIB);
    let mut want = pattern(len, 14);
    write(m.addr, &want);
    mprotect(m.addr, len, libc::PROT_READ);
    let stop = AtomicBool::new(false);
    let page_in = svm.counters(g1).page_in;
    let bad = std::thread::scope(|s| {
        let (svm, stop, addr) = (&svm, &stop, m.addr);
        s.spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let loc = if i.is_multiple_of(2) { Location::Gpu(g1) } else { Location::Sysmem };
                let _ =
                    svm.set_attr(addr, len, &[Attr::Granularity([9u32, 0][i % 2]), Attr::PrefetchLoc(loc)]);
                i += 1;
            }
        });
        let mut bad = 0;
        for round in 0..300usize {
            // Sometimes a part only: the mapping splits and merges under the migration.
            let (off, l) = if round % 3 == 0 { (0, len) } else { ((round % 4) * 2 * MIB, 2 * MIB) };
            mprotect(m.addr + off, l, libc::PROT_READ | libc::PROT_WRITE);
            for k in 0..4 {
                let o = off + ((round * 131 + k * 977) % (l / PAGE)) * PAGE + k * 8;
                let v = (round as u64) << 8 | k as u64;
                // SAFETY: a store into the test's own mapping, read-write at this moment.
                unsafe { std::ptr::write_volatile((m.addr + o) as *mut u64, v) };
                want[o..o + 8].copy_from_slice(&v.to_ne_bytes());
            }
            std::thread::yield_now();
            mprotect(m.addr + off, l, libc::PROT_READ);
            if round % 10 == 0 {
                bad += bad_pages(&read(m.addr, len), &want);
            }
        }
        stop.store(true, Ordering::Relaxed);
        bad
    });
    assert_eq!(bad, 0, "pages read wrong data");
    assert!(svm.counters(g1).page_in > page_in, "nothing migrated");
    assert_eq!(bad_pages(&read(m.addr, len), &want), 0);
}

/// munmap or MAP_FIXED over read-only memory while a migration of the same addresses is
/// under way, both directions, at varying moments: the new mapping keeps every byte the CPU
/// writes into it right after (a move out of the old mapping must never take the new
/// one's pages), and the instance goes on working.
#[test]
fn unmap_or_map_fixed_racing_read_only_migrations_keep_the_new_data() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let m = Mapping::anon(len, 2 * MIB);
    let addr = m.addr;
    std::mem::forget(m); // remapped below, unmapped at the end
    let mut failures = Vec::new();
    for round in 0..32u64 {
        map_fixed(addr, len);
        write(addr, &pattern(len, 1));
        mprotect(addr, len, libc::PROT_READ);
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
            std::thread::sleep(Duration::from_micros(60 * (round / 4)));
            if round % 4 < 2 {
                map_fixed(addr, len);
            } else {
                unmap(addr, len);
                while Mapping::at(addr, len).map(std::mem::forget).is_none() {
                    std::thread::yield_now(); // another test's thread took the address: wait
                }
            }
            write(addr, &data);
        });
        let bad = bad_pages(&read(addr, len), &data);
        if bad > 0 {
            failures.push((round, to_ram, bad));
        }
    }
    unmap(addr, len);
    assert!(failures.is_empty(), "(round, to RAM, pages lost) {failures:?}");
    let w = svm.alloc(2 * MIB).unwrap();
    w.write_at(0, &[5; 64]);
    svm.set_attr(w.addr(), w.len(), &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(count(&svm, w.addr(), 512, Residency::Vram(g1)), 512);
}

/// mremap of read-only memory while a migration of it is under way, both directions, at
/// varying moments: every byte arrives at the new place.
#[test]
fn mremap_racing_read_only_migrations_keeps_the_data() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let mut failures = Vec::new();
    for round in 0..16u64 {
        let data = pattern(len, round as u8);
        let a = read_only_mapping(len, &data);
        let want = read_only_contents(len, &data);
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
        let bad = bad_pages(&read(to, len), &want);
        if bad > 0 {
            failures.push((round, to_ram, bad));
        }
        drop(dst);
        let _ = svm.range_count();
    }
    assert!(failures.is_empty(), "rounds with lost pages (round, to RAM, pages): {failures:?}");
    assert_eq!(svm.smi()[0].vram_used, 0, "VRAM left behind");
}

/// fork while another thread migrates read-only memory back and forth: every child reads
/// all the data (usvm brings it back before the fork), the parent's data is intact, and
/// read-only pages still shared with a child since the fork are collected all the same
/// (the page-table entries move; the child keeps its own). In a process of its own.
#[test]
fn fork_during_read_only_migrations() {
    const NAME: &str = "readonly::fork_during_read_only_migrations";
    if !in_own_process(NAME) {
        return;
    }
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let data = pattern(len, 15);
    let m = read_only_mapping(len, &data);
    let want = read_only_contents(len, &data);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (svm, stop, addr) = (&svm, &stop, m.addr);
        s.spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let loc = if i.is_multiple_of(2) { Location::Gpu(g1) } else { Location::Sysmem };
                svm.set_attr(addr, len, &[Attr::PrefetchLoc(loc)]).unwrap();
                i += 1;
            }
        });
        for _ in 0..12 {
            std::thread::sleep(Duration::from_millis(3));
            let expect = want.as_ptr() as usize;
            // SAFETY: the child only compares memory and leaves at once, without running
            // any code of the parent's (no lock, no allocation).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: both are live `len`-byte regions in the child's copy of the
                // address space.
                let same = unsafe { libc::memcmp(addr as *const _, expect as *const _, len) } == 0;
                // SAFETY: leaving the child at once.
                unsafe { libc::_exit(if same { 0 } else { 1 }) };
            }
            assert!(pid > 0);
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "a child saw wrong data");
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad_pages(&read(m.addr, len), &want), 0);
    // With every page shared with a live child, a prefetch still collects them all.
    let mut fds = [0i32; 2];
    // SAFETY: a pipe into a two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only waits on the pipe and leaves, running no code of the parent's.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a one-byte buffer, then leaving at once.
        unsafe {
            libc::read(fds[0], b.as_mut_ptr() as *mut libc::c_void, 1);
            libc::_exit(0);
        }
    }
    assert!(pid > 0);
    svm.set_attr(m.addr, len, &[Attr::PrefetchLoc(Location::Gpu(g1))]).unwrap();
    let moved = count(&svm, m.addr, len / PAGE, Residency::Vram(g1));
    // SAFETY: one byte from a live buffer to our pipe; waiting for our own child.
    unsafe {
        libc::write(fds[1], [1u8].as_ptr() as *const libc::c_void, 1);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert_eq!(moved, len / PAGE);
    assert_eq!(bad_pages(&read(m.addr, len), &want), 0);
}

/// The staging area is put back after every batch that took read-only pages (its pieces
/// replaced by the moves become one mapping again): many such migrations, alternating with
/// migrations of writable memory (whose moves must not meet a seam in the staging area),
/// leave usvm's own areas (watched by its own userfaultfd and left out of forks: `um` and
/// `dc` in their VmFlags) in as many mappings as one did. In a process of its own.
#[test]
fn read_only_migrations_leave_no_mapping_behind() {
    const NAME: &str = "readonly::read_only_migrations_leave_no_mapping_behind";
    if !in_own_process(NAME) {
        return;
    }
    // The smaps header and VmFlags of each of usvm's own areas.
    let own_areas = || {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut header = "";
        let mut own = Vec::new();
        for l in smaps.lines() {
            if let Some(flags) = l.strip_prefix("VmFlags:") {
                let f: Vec<&str> = flags.split_ascii_whitespace().collect();
                if f.contains(&"um") && f.contains(&"dc") {
                    own.push(format!("{header} |{flags}"));
                }
            } else if l.split_once(' ').is_some_and(|(r, _)| r.contains('-') && !r.ends_with(':')) {
                header = l;
            }
        }
        own
    };
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let data = pattern(len, 16);
    let m = read_only_mapping(len, &data);
    let w = svm.alloc(len).unwrap();
    let wd = pattern(len, 18);
    w.write_at(0, &wd);
    let cycle = |g: u32| {
        for addr in [m.addr, w.addr()] {
            let to_gpu = [Attr::Granularity(g), Attr::PrefetchLoc(Location::Gpu(g1))];
            svm.set_attr(addr, len, &to_gpu).unwrap();
            assert_eq!(count(&svm, addr, len / PAGE, Residency::Vram(g1)), len / PAGE, "{:?}", own_areas());
            svm.set_attr(addr, len, &[Attr::PrefetchLoc(Location::Sysmem)]).unwrap();
        }
    };
    cycle(9);
    let after_one = own_areas();
    for i in 0..20 {
        cycle([9, 0, 3][i % 3]);
    }
    let now = own_areas();
    assert_eq!(now.len(), after_one.len(), "after one cycle: {after_one:#?}\nnow: {now:#?}");
    assert_eq!(bad_pages(&read(m.addr, len), &read_only_contents(len, &data)), 0);
    let mut back = vec![0u8; len];
    w.read_at(0, &mut back);
    assert!(back == wd);
}
