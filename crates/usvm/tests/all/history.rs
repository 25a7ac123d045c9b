//! Why data moved: every movement is recorded with its cause (`Svm::history`), and
//! `Svm::diagnose` names the patterns with one concrete change each.

use crate::util::*;
use usvm::{Attr, Cause, FindingKind, Location, MigrateTrigger, Svm};

fn gpu_of(svm: &Svm) -> usvm::GpuId {
    svm.gpu_ids()[0]
}

#[test]
fn prefetch_preferred_loc_and_cpu_faults_are_recorded_with_their_cause() {
    let svm = svm2(false);
    let g = gpu_of(&svm);
    let buf = svm.alloc(4 * MIB).unwrap();
    buf.fill(0, buf.len(), 3);
    svm.set_attr(buf.addr(), 2 * MIB, &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    svm.set_attr(buf.addr() + 2 * MIB, 2 * MIB, &[Attr::PreferredLoc(Location::Gpu(g))]).unwrap();
    // A CPU fault brings the first granule back (on a page that went to VRAM: under load a
    // busy page may stay in RAM).
    let res = svm.residency(buf.addr(), 512);
    let p = res.iter().position(|r| matches!(r, usvm::Residency::Vram(_))).expect("a page in VRAM");
    let mut b = [0u8; 1];
    buf.read_at(p * PAGE, &mut b);
    let h = svm.history(buf.addr(), buf.len());
    assert_eq!(h.len(), 3, "{h:#?}");
    assert_eq!((h[0].start, h[0].cause.clone()), (buf.addr(), Cause::Prefetch));
    assert!(h[0].npages > 500 && h[0].npages <= 512, "{h:#?}");
    assert_eq!(
        (h[0].from, h[0].to, h[0].trigger),
        (Location::Sysmem, Location::Gpu(g), MigrateTrigger::Prefetch)
    );
    assert_eq!((h[1].start, h[1].cause.clone()), (buf.addr() + 2 * MIB, Cause::PreferredLoc));
    assert_eq!(h[2].cause, Cause::CpuFault { addr: buf.addr() + p * PAGE, write: false });
    assert_eq!(
        (h[2].from, h[2].to, h[2].trigger),
        (Location::Gpu(g), Location::Sysmem, MigrateTrigger::PagefaultCpu)
    );
    assert!(h.windows(2).all(|w| w[0].id < w[1].id && w[0].at_ns <= w[1].at_ns), "oldest first");
    assert!(svm.history(buf.addr() + 8 * MIB, MIB).is_empty());
}

#[test]
fn gpu_faults_and_evictions_are_linked() {
    // 2 MiB of VRAM: B's fault evicts A; A's fault back evicts B and links to A's eviction.
    let svm = Svm::builder().gpus(1).vram_bytes(2 << 20).xnack(true).build().unwrap();
    let g = gpu_of(&svm);
    let a = svm.alloc(2 * MIB).unwrap();
    let b = svm.alloc(2 * MIB).unwrap();
    a.fill(0, a.len(), 1);
    b.fill(0, b.len(), 2);
    let mut v = [0u8; 8];
    svm.gpu_read(g, a.addr(), &mut v).unwrap();
    svm.gpu_read(g, b.addr(), &mut v).unwrap();
    svm.gpu_read(g, a.addr(), &mut v).unwrap();
    let ha = svm.history(a.addr(), a.len());
    let hb = svm.history(b.addr(), b.len());
    assert_eq!(ha[0].cause, Cause::GpuFault { gpu: g, addr: a.addr(), write: false });
    let ev = ha.iter().find(|m| matches!(m.cause, Cause::Eviction { .. })).expect("A was evicted");
    assert_eq!(ev.cause, Cause::Eviction { for_gpu: g, for_addr: b.addr() });
    assert_eq!(ev.linked, Some(hb[0].id), "the eviction names the move that needed the room");
    let back = ha.last().unwrap();
    assert!(matches!(back.cause, Cause::GpuFault { .. }) && back.to == Location::Gpu(g));
    assert_eq!(back.linked, Some(ev.id), "the fault that brought A back names its eviction");
}

#[test]
fn the_applications_munmap_madvise_and_mremap_of_vram_copies_are_recorded() {
    let svm = svm2(false);
    let g = gpu_of(&svm);
    let m = Mapping::anon(8 * MIB, 2 * MIB);
    // SAFETY: the test's own mapping, read-write, no Rust reference into it.
    unsafe { std::ptr::write_bytes(m.addr as *mut u8, 7, m.len) };
    svm.set_attr(m.addr, m.len, &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    // SAFETY: dropping pages of the test's own mapping.
    assert_eq!(unsafe { libc::madvise(m.addr as *mut libc::c_void, MIB, libc::MADV_DONTNEED) }, 0);
    m.punch(2 * MIB, MIB);
    let _ = svm.range_count(); // applies the queued changes
    let h = svm.history(m.addr, 4 * MIB);
    let dn = h.iter().find(|x| x.cause == Cause::DontNeed).expect("MADV_DONTNEED");
    assert_eq!((dn.start, dn.npages, dn.to), (m.addr, 256, Location::Undefined));
    let un = h.iter().find(|x| x.cause == Cause::Munmap).expect("munmap");
    assert_eq!((un.start, un.npages), (m.addr + 2 * MIB, 256));
}

/// In a process of its own: a fork empties the VRAM of every instance of the process, which
/// would put `Cause::Fork` moves into the records of the tests running beside it.
#[test]
fn fork_brings_everything_back_and_says_so() {
    if !in_own_process("history::fork_brings_everything_back_and_says_so") {
        return;
    }
    let svm = svm2(false);
    let g = gpu_of(&svm);
    let buf = svm.alloc(2 * MIB).unwrap();
    buf.fill(0, buf.len(), 9);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    // SAFETY: the child only exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    let h = svm.history(buf.addr(), buf.len());
    assert_eq!(h.last().map(|m| m.cause.clone()), Some(Cause::Fork), "{h:#?}");
}

/// CPU and GPU take turns on one buffer (XNACK on): the data moves back and forth.
fn ping_pong(svm: &Svm, rounds: usize, in_place: bool) -> usize {
    let g = gpu_of(svm);
    let buf = svm.alloc(2 * MIB).unwrap();
    buf.fill(0, buf.len(), 1);
    if in_place {
        svm.set_attr(buf.addr(), buf.len(), &[Attr::AccessInPlace(g)]).unwrap();
    }
    let mut v = [0u8; 8];
    for i in 0..rounds {
        svm.gpu_write(g, buf.addr() + i * 8, &[i as u8; 8]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3)); // past the 2 ms fault window
        buf.read_at(i * 8, &mut v);
        assert_eq!(v, [i as u8; 8]);
    }
    buf.addr()
}

#[test]
fn ping_pong_is_diagnosed_and_its_advice_works() {
    let svm = svm2(true);
    let addr = ping_pong(&svm, 12, false);
    let f = svm.diagnose();
    let p = f.iter().find(|f| f.kind == FindingKind::PingPong).unwrap_or_else(|| panic!("{f:#?}"));
    assert_eq!(p.start, addr);
    assert!(p.count >= 4, "{p:?}");
    let g = gpu_of(&svm);
    assert!(p.advice.contains(&format!("set ACCESS_IN_PLACE for GPU {:#x}", g.0)), "{}", p.advice);
    // Following the advice: no ping-pong, and nothing moves at all.
    let fixed = svm2(true);
    let addr = ping_pong(&fixed, 12, true);
    assert!(fixed.diagnose().iter().all(|f| f.kind != FindingKind::PingPong));
    assert!(fixed.history(addr, 2 * MIB).is_empty(), "mapped in place: no migration");
}

#[test]
fn a_fault_storm_is_diagnosed_and_a_larger_granularity_ends_it() {
    let run = |gran: u32| {
        let svm = svm2(false);
        let g = gpu_of(&svm);
        let buf = svm.alloc(4 * MIB).unwrap();
        buf.fill(0, buf.len(), 5);
        svm.set_attr(buf.addr(), buf.len(), &[Attr::Granularity(gran), Attr::PrefetchLoc(Location::Gpu(g))])
            .unwrap();
        let mut sum = 0u64;
        let mut b = [0u8; 1];
        for p in 0..1024 {
            buf.read_at(p * PAGE, &mut b);
            sum += u64::from(b[0]);
        }
        assert_eq!(sum, 5 * 1024);
        (svm.diagnose(), buf.addr())
    };
    let (f, addr) = run(0);
    let s = f.iter().find(|f| f.kind == FindingKind::FaultStorm).unwrap_or_else(|| panic!("{f:#?}"));
    assert_eq!(s.start, addr);
    assert!(s.count >= 1000, "a fault per page (a busy page may have stayed in RAM): {}", s.count);
    assert!(s.advice.starts_with("raise GRANULARITY from 0 to 9 on"), "{}", s.advice);
    let (f, _) = run(9);
    assert!(f.iter().all(|f| f.kind != FindingKind::FaultStorm), "{f:#?}");
}

#[test]
fn a_prefetch_the_gpu_never_used_is_wasted_and_a_used_one_is_not() {
    let svm = svm2(false);
    let g = gpu_of(&svm);
    let unused = svm.alloc(2 * MIB).unwrap();
    let used = svm.alloc(2 * MIB).unwrap();
    for b in [&unused, &used] {
        b.fill(0, b.len(), 1);
        svm.set_attr(b.addr(), b.len(), &[Attr::Access(g), Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(3));
    let mut v = [0u8; 8];
    svm.gpu_read(g, used.addr(), &mut v).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3));
    unused.read_at(0, &mut v[..1]);
    used.read_at(0, &mut v[..1]);
    let f = svm.diagnose();
    let w: Vec<_> = f.iter().filter(|f| f.kind == FindingKind::WastedPrefetch).collect();
    assert_eq!(w.len(), 1, "{f:#?}");
    assert_eq!(w[0].start, unused.addr());
    assert!(w[0].advice.contains("PREFETCH_LOC"), "{}", w[0].advice);
}

#[test]
fn a_well_behaved_workload_gets_no_finding() {
    let svm = svm2(false);
    let g = gpu_of(&svm);
    let buf = svm.alloc(8 * MIB).unwrap();
    for round in 0..5u8 {
        buf.fill(0, buf.len(), round);
        svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g), Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
        let q = svm.create_queue(g).unwrap();
        let a = buf.addr();
        q.submit(move |k| {
            let v = k.read_u64(a)?;
            k.write_u64(a, v + 1)
        })
        .wait()
        .unwrap();
        drop(q);
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Sysmem)]).unwrap();
    }
    assert!(svm.diagnose().is_empty(), "{:#?}", svm.diagnose());
    // Every round went there and back (a prefetch to VRAM that collects nothing, pages busy
    // under load, moves nothing and is not a move).
    let h = svm.history(buf.addr(), buf.len());
    assert!(h.len() >= 2, "{h:#?}");
    assert!(h.iter().all(|m| m.to == Location::Gpu(g) || m.to == Location::Sysmem), "{h:#?}");
}

#[test]
fn recording_can_be_turned_off() {
    let svm = Svm::builder().gpus(1).history(false).build().unwrap();
    let g = gpu_of(&svm);
    let buf = svm.alloc(2 * MIB).unwrap();
    buf.fill(0, buf.len(), 1);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    assert!(svm.history(buf.addr(), buf.len()).is_empty());
}
