//! The emulated GPUs through the public API: device accesses, mappings made by SET_ATTR,
//! fatal faults, queues, suspension, events and counters.

use crate::util::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use usvm::{Attr, Error, Event, GpuId, Location, Svm, SvmBuffer, SvmFlags};

fn drain(ev: &usvm::EventStream) -> Vec<Event> {
    ev.try_iter().collect()
}

/// XNACK off: SET_ATTR(ACCESS) maps the range; the GPU reads what the CPU wrote and the
/// CPU sees what the GPU wrote, through the same virtual addresses.
#[test]
fn xnack_off_access_maps_and_data_is_shared() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(4 * MIB).unwrap();
    let pattern: Vec<u8> = (0..4 * MIB).map(|i| (i % 253) as u8).collect();
    buf.write_at(0, &pattern);
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1)]).unwrap();
    assert!(svm.ranges()[0].mapped_to_gpu);
    let mut back = vec![0u8; 4 * MIB];
    svm.gpu_read(g1, buf.addr(), &mut back).unwrap();
    assert_eq!(back, pattern);
    svm.gpu_write(g1, buf.addr() + MIB + 3, b"written by the GPU").unwrap();
    let mut cpu = [0u8; 18];
    buf.read_at(MIB + 3, &mut cpu);
    assert_eq!(&cpu, b"written by the GPU");
    // GPU 2 has no access: a fatal fault, not a hang.
    let e = svm.gpu_read(g2, buf.addr(), &mut back[..8]).unwrap_err();
    assert_eq!(e.errno(), libc::EFAULT);
    assert_eq!(svm.smi()[0].mapped_pages, 1024);
    assert_eq!(svm.smi()[1].mapped_pages, 0);
}

/// XNACK off: an access to a page that is not mapped is a fatal VM fault with a VMFAULT
/// event in the KFD text format.
#[test]
fn xnack_off_unmapped_access_is_fatal_with_vmfault_event() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    let ev = svm.subscribe();
    let mut b = [0u8; 16];
    let e = svm.gpu_read(g1, buf.addr(), &mut b).unwrap_err();
    assert_eq!(e, Error::GpuVmFault { gpu: g1.0, addr: buf.addr() as u64, write: false });
    assert_eq!(e.errno(), libc::EFAULT);
    let evs = drain(&ev);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let text = evs[0].to_string();
    let name = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(text, format!("1 {:x}:{}", std::process::id(), name.trim_end()));
    // An unknown GPU id is EINVAL, not a fault.
    assert_eq!(svm.gpu_read(usvm::GpuId(0xdead), buf.addr(), &mut b).unwrap_err().errno(), libc::EINVAL);
}

/// GPU_RO and read-only VMAs give read-only mappings; writing through them is fatal.
/// PROT_NONE memory is unmapped instead of mapped (T23).
#[test]
fn read_only_and_prot_none_mappings() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(6 * MIB).unwrap();
    svm.set_attr(buf.addr(), 2 * MIB, &[Attr::Access(g1), Attr::SetFlags(SvmFlags::GPU_RO)]).unwrap();
    let mut b = [0u8; 8];
    svm.gpu_read(g1, buf.addr(), &mut b).unwrap();
    assert_eq!(svm.gpu_write(g1, buf.addr(), &b).unwrap_err().errno(), libc::EFAULT);
    // Clearing GPU_RO remaps writable.
    svm.set_attr(buf.addr(), 2 * MIB, &[Attr::ClrFlags(SvmFlags::GPU_RO)]).unwrap();
    svm.gpu_write(g1, buf.addr(), &[9; 8]).unwrap();
    // A read-only VMA.
    let ro = buf.addr() + 2 * MIB;
    mprotect(ro, 2 * MIB, libc::PROT_READ);
    svm.set_attr(ro, 2 * MIB, &[Attr::Access(g1)]).unwrap();
    svm.gpu_read(g1, ro, &mut b).unwrap();
    assert_eq!(svm.gpu_write(g1, ro, &b).unwrap_err().errno(), libc::EFAULT);
    // PROT_NONE: SET succeeds, nothing is mapped, and an access is fatal.
    let none = buf.addr() + 4 * MIB;
    mprotect(none, 2 * MIB, libc::PROT_NONE);
    svm.set_attr(none, 2 * MIB, &[Attr::Access(g1)]).unwrap();
    assert_eq!(svm.gpu_read(g1, none, &mut b).unwrap_err().errno(), libc::EFAULT);
    let r = svm.ranges();
    assert!(!r.iter().find(|r| r.start == none).unwrap().mapped_to_gpu);
}

/// Dropping a buffer unmaps its pages from the GPUs at once (UNMAP_FROM_GPU, trigger 2).
#[test]
fn munmap_unmaps_from_gpus() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(2 * MIB).unwrap();
    svm.set_attr(buf.addr(), 2 * MIB, &[Attr::Access(g1), Attr::AccessInPlace(g2)]).unwrap();
    assert_eq!(svm.smi()[1].mapped_pages, 512);
    let ev = svm.subscribe();
    let page = buf.addr() >> 12;
    drop(buf);
    let texts: Vec<String> = drain(&ev).iter().map(|e| e.to_string()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    for (t, g) in texts.iter().zip([g1, g2]) {
        assert!(t.starts_with("b "), "{t}");
        assert!(t.ends_with(&format!("@{page:x}(200) {:x} 2", g.0)), "{t}");
    }
    assert!(svm.smi().iter().all(|s| s.mapped_pages == 0));
    assert_eq!(svm.range_count(), 0);
}

/// Many kernels at once on several queues of two GPUs; results through fences.
#[test]
fn many_kernels_on_many_queues() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let buf = svm.alloc(8 * MIB).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1), Attr::Access(g2)]).unwrap();
    let queues: Vec<usvm::Queue> =
        (0..4).map(|i| svm.create_queue(if i % 2 == 0 { g1 } else { g2 }).unwrap()).collect();
    let base = buf.addr();
    let mut fences = Vec::new();
    for k in 0..64usize {
        let q = &queues[k % 4];
        fences.push(q.submit(move |ctx| {
            // Each kernel owns 128 KiB and writes its index into every u64 of it.
            let start = base + k * (128 << 10);
            for i in 0..(128 << 10) / 8 {
                ctx.write_u64(start + i * 8, (k as u64) << 32 | i as u64)?;
            }
            Ok(())
        }));
    }
    for f in &fences {
        f.wait().unwrap();
    }
    let mut v = [0u8; 8];
    for k in 0..64usize {
        for i in [0usize, 777, (128 << 10) / 8 - 1] {
            buf.read_at(k * (128 << 10) + i * 8, &mut v);
            assert_eq!(u64::from_le_bytes(v), (k as u64) << 32 | i as u64);
        }
    }
    // A kernel's error and a kernel's panic come back through its fence.
    let bad = queues[0].submit(move |ctx| ctx.read_u64(16).map(|_| ()));
    assert_eq!(bad.wait().unwrap_err().errno(), libc::EFAULT);
    let boom = queues[1].submit(|_| panic!("kernel bug"));
    assert_eq!(boom.wait().unwrap_err(), Error::KernelPanic("kernel bug".into()));
    // The queue still works after a panic.
    queues[1].submit(move |ctx| ctx.write_u64(base, 5)).wait().unwrap();
}

/// `resume_queues` undoes only `suspend_queues`: the queue eviction usvm makes itself (here
/// XNACK off, MADV_DONTNEED of a mapped range, undone by the restore worker once the range
/// is mapped again) is not the caller's to undo (it was: device accesses then ran on
/// stale mappings).
#[test]
fn resume_never_undoes_an_eviction_of_usvm() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1)]).unwrap();
    let ev = svm.subscribe();
    // SAFETY: dropping the contents of memory this test owns.
    assert_eq!(unsafe { libc::madvise(buf.addr() as *mut _, PAGE, libc::MADV_DONTNEED) }, 0);
    let _ = svm.range_count(); // applies the change: the queues are evicted
    assert_eq!(svm.resume_queues(g1).unwrap_err().errno(), libc::EINVAL);
    svm.suspend_queues(g1).unwrap();
    svm.resume_queues(g1).unwrap();
    assert_eq!(svm.resume_queues(g1).unwrap_err().errno(), libc::EINVAL);
    // The restore worker remaps and resumes; device accesses run again.
    let mut b = [1u8; 8];
    svm.gpu_read(g1, buf.addr(), &mut b).unwrap();
    assert_eq!(b, [0; 8]);
    // The eviction was of every GPU, and the worker restores them in turn: an access of the
    // second GPU (which has no access to the range: EFAULT) waits for its restore too, so
    // that every restore is in the stream before it is counted.
    let g2 = svm.gpu_ids()[1];
    assert_eq!(svm.gpu_read(g2, buf.addr(), &mut b).unwrap_err().errno(), libc::EFAULT);
    let kinds: Vec<String> = drain(&ev).iter().map(|e| e.to_string()[..1].to_string()).collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "9").count(),
        kinds.iter().filter(|k| *k == "a").count(),
        "{kinds:?}"
    );
}

/// Suspending the queues pauses a kernel between two memory accesses; resuming lets it
/// finish. Suspension is reference counted and evented.
#[test]
fn suspension_pauses_kernels_mid_way() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g1)]).unwrap();
    let q = svm.create_queue(g1).unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let base = buf.addr();
    let f = q.submit(move |ctx| {
        for i in 0..200_000u64 {
            ctx.write_u64(base + (i as usize % 1000) * 8, i)?;
            p.store(i + 1, Ordering::Release);
        }
        Ok(())
    });
    while progress.load(Ordering::Acquire) < 100 {
        std::thread::yield_now();
    }
    let ev = svm.subscribe();
    svm.suspend_queues(g1).unwrap();
    svm.suspend_queues(g1).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let stopped_at = progress.load(Ordering::Acquire);
    std::thread::sleep(Duration::from_millis(50));
    assert!(progress.load(Ordering::Acquire) <= stopped_at + 1, "kernel ran while suspended");
    assert!(!f.is_signaled());
    assert!(svm.smi()[0].queues_suspended);
    // A device access waits too.
    let mut b = [0u8; 8];
    std::thread::scope(|s| {
        let t = s.spawn(|| svm.gpu_read(g1, base, &mut b));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished());
        svm.resume_queues(g1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished(), "one resume of two suspensions");
        svm.resume_queues(g1).unwrap();
        t.join().unwrap().unwrap();
    });
    f.wait().unwrap();
    assert_eq!(progress.load(Ordering::Acquire), 200_000);
    assert_eq!(svm.resume_queues(g1).unwrap_err().errno(), libc::EINVAL);
    let texts: Vec<String> = drain(&ev).iter().map(|e| e.to_string()).collect();
    let kinds: Vec<&str> = texts.iter().map(|t| &t[..1]).collect();
    assert_eq!(kinds, ["9", "9", "a", "a"]);
    assert!(texts[0].ends_with(&format!("{:x} 3", g1.0)), "{}", texts[0]);
    assert!(texts[2].ends_with(&format!("{:x} 0", g1.0)), "{}", texts[2]);
}

/// XNACK cannot change while queues exist.
#[test]
fn set_xnack_is_ebusy_with_queues() {
    let svm = svm2(false);
    let q = svm.create_queue(svm.gpu_ids()[1]).unwrap();
    assert_eq!(svm.set_xnack(true).unwrap_err().errno(), libc::EBUSY);
    assert!(!svm.xnack());
    drop(q);
    svm.set_xnack(true).unwrap();
    assert!(svm.xnack());
}

/// XNACK on, first GPU touch of memory with no range (T19): a range is created around the
/// page, the granule migrates to the faulting GPU and is mapped there only, the fault is
/// evented and counted, and never-written memory reads as zero.
#[test]
fn xnack_on_first_touch_creates_range_and_maps_granule() {
    let svm = svm2(true);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let a = Mapping::anon(16 * MIB, 32 * MIB);
    let ev = svm.subscribe();
    let mut b = vec![1u8; 4096];
    svm.gpu_read(g1, a.addr + 5 * MIB, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    let r = svm.ranges();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].start, r[0].size), (a.addr + 4 * MIB, 2 * MIB));
    assert_eq!(r[0].access, vec![g1, g2]);
    let page = (a.addr + 5 * MIB) >> 12;
    let granule = (a.addr + 4 * MIB) >> 12;
    let texts: Vec<String> = drain(&ev).iter().map(|e| e.to_string()).collect();
    let strip = |t: &String| {
        let v: Vec<&str> = t.splitn(4, ' ').collect();
        format!("{} {}", v[0], v[3])
    };
    let got: Vec<String> = texts.iter().map(strip).collect();
    assert_eq!(
        got,
        vec![
            format!("7 @{page:x}({:x}) R", g1.0),
            format!("5 @{granule:x}(200) 0->{:x} ffffffff:ffffffff 1", g1.0),
            format!("6 @{granule:x}(200) 0->{:x} 1 0", g1.0),
            format!("8 @{page:x}({:x}) M", g1.0),
        ]
    );
    assert_eq!(svm.counters(g1).page_in, 512);
    assert!(svm.residency(a.addr + 4 * MIB, 512).iter().all(|r| *r == usvm::Residency::Vram(g1)));
    assert_eq!(svm.counters(g1).faults, 1);
    assert_eq!(svm.counters(g2).faults, 0);
    assert_eq!(svm.smi()[0].mapped_pages, 512);
    assert_eq!(svm.smi()[1].mapped_pages, 0);
    // Mapped now: more accesses in the granule do not fault.
    svm.gpu_write(g1, a.addr + 4 * MIB, &[7; 4096]).unwrap();
    assert_eq!(svm.counters(g1).faults, 1);
}

/// XNACK on: a fault on an address nothing maps cannot make a range; it is fatal (EFAULT,
/// VMFAULT) and counts as a processed fault (section 5.4 step 6).
#[test]
fn xnack_on_fault_without_mapping_is_fatal_and_counted() {
    let svm = svm2(true);
    let g1 = svm.gpu_ids()[0];
    let m = Mapping::anon(2 * MIB, 2 * MIB);
    let addr = m.addr;
    drop(m);
    let mut b = [0u8; 8];
    assert_eq!(errno(svm.gpu_read(g1, addr, &mut b)), libc::EFAULT);
    assert_eq!(svm.counters(g1).faults, 1);
    assert_eq!(svm.range_count(), 0);
}

/// XNACK on: NO_ACCESS makes a GPU touch fatal, with a VMFAULT and no PAGE_FAULT_START
/// (T22); a write to a read-only VMA is fatal (T23).
#[test]
fn xnack_on_fatal_faults() {
    let svm = svm2(true);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(4 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::NoAccess(g1)]).unwrap();
    let ev = svm.subscribe();
    let mut b = [0u8; 8];
    assert_eq!(svm.gpu_read(g1, a.addr, &mut b).unwrap_err().errno(), libc::EFAULT);
    let kinds: Vec<u32> = drain(&ev).iter().map(|e| e.kind.id()).collect();
    assert_eq!(kinds, [1]);
    mprotect(a.addr + 2 * MIB, 2 * MIB, libc::PROT_READ);
    svm.gpu_read(g1, a.addr + 2 * MIB, &mut b).unwrap();
    assert_eq!(svm.gpu_write(g1, a.addr + 2 * MIB, &b).unwrap_err().errno(), libc::EFAULT);
    // No mapping at all: fatal.
    assert_eq!(svm.gpu_read(g1, 4096, &mut b).unwrap_err().errno(), libc::EFAULT);
}

/// XNACK on: a second fault on the same range within 2 ms of its validation is ignored
/// (counted, no events) and resolves on a later retry (T24).
#[test]
fn xnack_on_fault_dedup_window() {
    let svm = svm2(true);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(4 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 4 * MIB, &[]).unwrap(); // one range, two granules, not mapped
    assert_eq!(svm.range_count(), 1);
    let ev = svm.subscribe();
    let mut b = [0u8; 8];
    svm.gpu_read(g1, a.addr, &mut b).unwrap();
    svm.gpu_read(g1, a.addr + 3 * MIB, &mut b).unwrap();
    let kinds: Vec<u32> = drain(&ev).iter().map(|e| e.kind.id()).collect();
    // The second migration's invalidation unmaps its granule from both GPUs (XNACK on),
    // inside its MIGRATE_START / MIGRATE_END, as the kernel's migrate_vma_setup does.
    assert_eq!(kinds, [7, 5, 6, 8, 7, 5, 11, 11, 6, 8], "one handled fault (with its migration) per granule");
    // The second access was usually deduplicated at least once (counted, no events).
    assert!(svm.counters(g1).faults >= 2);
}

/// mprotect is not reported to usvm: a device access through a mapping made before it is
/// checked against the current permissions and faults (EFAULT) instead of crashing.
#[test]
fn mprotect_after_mapping_faults_the_gpu_not_the_process() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(2 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::Access(g1)]).unwrap();
    svm.gpu_write(g1, a.addr, &[1; 8]).unwrap();
    mprotect(a.addr, 2 * MIB, libc::PROT_READ);
    let mut b = [0u8; 8];
    svm.gpu_read(g1, a.addr, &mut b).unwrap();
    assert_eq!(b, [1; 8]);
    assert_eq!(svm.gpu_write(g1, a.addr, &[2; 8]).unwrap_err().errno(), libc::EFAULT);
    mprotect(a.addr, 2 * MIB, libc::PROT_NONE);
    assert_eq!(svm.gpu_read(g1, a.addr, &mut b).unwrap_err().errno(), libc::EFAULT);
    mprotect(a.addr, 2 * MIB, libc::PROT_READ | libc::PROT_WRITE);
    svm.gpu_write(g1, a.addr, &[3; 8]).unwrap();
}

/// Found by the `access` fuzzer: XNACK on, one device access over two granules that do
/// not both fit in VRAM. Each retry fault migrated its granule and evicted the other, so
/// an access that needed both pages of one chunk mapped at once never completed (EFAULT
/// after 2 s). An access now completes the pages before a faulting one first.
#[test]
fn xnack_on_access_across_granules_larger_than_vram_completes() {
    let svm = usvm::Svm::builder().gpus(2).vram_bytes(3 * MIB as u64).xnack(true).build().unwrap();
    let g2 = svm.gpu_ids()[1];
    let buf = svm.alloc(4 * MIB).unwrap();
    let pattern: Vec<u8> = (0..144659).map(|i| (i % 251) as u8 + 1).collect();
    let off = 2 * MIB - 64 * 1024 + 100; // one 64 KiB chunk holds the last page of each side
    buf.write_at(off, &pattern);
    let t = std::time::Instant::now();
    let mut back = vec![0u8; pattern.len()];
    svm.gpu_read(g2, buf.addr() + off, &mut back).unwrap();
    assert_eq!(back, pattern);
    assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
}

/// Found by the `access` fuzzer: XNACK on, a GPU store to a GPU_RO range is a fatal fault
/// at once (it used to be retried for 2 s), and stores nothing.
#[test]
fn xnack_on_store_to_gpu_ro_is_fatal_at_once() {
    let svm = svm2(true);
    let g1 = svm.gpu_ids()[0];
    let buf = svm.alloc(2 * MIB).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::SetFlags(SvmFlags::GPU_RO)]).unwrap();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let e = svm.gpu_write(g1, buf.addr() + 5000, &[1u8; 100]).unwrap_err();
        assert_eq!(e.errno(), libc::EFAULT);
        assert!(t.elapsed() < Duration::from_millis(500), "took {:?}", t.elapsed());
        let mut b = [0u8; 8];
        svm.gpu_read(g1, buf.addr() + 5000, &mut b).unwrap();
        assert_eq!(b, [0; 8]);
    }
}

/// XNACK on, two GPUs not in a hive: a range in GPU 2's VRAM that prefers system memory.
/// GPU 1's fault brings only its granule back to RAM, and GPU 1 then maps those system
/// pages although the rest of the range stays in a VRAM it cannot reach (the access
/// fuzzer's case: GPU 1 was skipped for the whole range, and its read retried for 2 s
/// before failing).
#[test]
fn xnack_on_gpu_maps_system_pages_of_a_range_partly_in_unreachable_vram() {
    let svm = svm2(true);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let a = Mapping::anon(64 * PAGE, 2 * MIB);
    let data: Vec<u8> = (0..a.len).map(|i| (i * 7 % 251) as u8 + 1).collect();
    // SAFETY: the test owns the mapping, which is `a.len` bytes long.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.addr as *mut u8, a.len) };
    svm.set_attr(a.addr, a.len, &[Attr::PreferredLoc(usvm::Location::Sysmem), Attr::Granularity(1)]).unwrap();
    svm.set_attr(a.addr, a.len, &[Attr::PrefetchLoc(usvm::Location::Gpu(g2))]).unwrap();
    assert_eq!(svm.counters(g2).page_in, 64);
    let t = std::time::Instant::now();
    let mut b = vec![0u8; 3 * PAGE];
    svm.gpu_read(g1, a.addr + 13 * PAGE + 100, &mut b).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "the read took {:?}", t.elapsed());
    assert_eq!(b, data[13 * PAGE + 100..16 * PAGE + 100]);
    // Pages 12..=17 (three granules of two pages) came back; the rest is still in VRAM.
    let res = svm.residency(a.addr, 64);
    for (p, r) in res.iter().enumerate() {
        let want = if (12..=17).contains(&p) { usvm::Residency::Sysmem } else { usvm::Residency::Vram(g2) };
        assert_eq!(*r, want, "page {p}");
    }
    assert_eq!(svm.smi()[0].mapped_pages, 6);
}

/// GPU `stale` mapped range `a` while it was in VRAM (the SET_ATTR calls of `setup`),
/// then is no longer among the GPUs the restore maps; `a` moves back to RAM, freeing the
/// VRAM, and range `b` reuses it. `stale` must not reach `b` through entries left from `a`
/// (they were left in place: a store by `stale` to `a` landed in `b`). Returns what that
/// store got.
fn stale_entries_never_reach_reused_vram(
    svm: &Svm,
    (a, b): (&SvmBuffer, &SvmBuffer),
    stale: GpuId,
    setup: &[&[Attr]],
) -> usvm::Result<()> {
    let g0 = svm.gpu_ids()[0];
    a.write_at(0, &pattern(a.len(), 1));
    let db = pattern(b.len(), 9);
    b.write_at(0, &db);
    let ev = svm.subscribe();
    for attrs in setup {
        svm.set_attr(a.addr(), a.len(), attrs).unwrap();
    }
    assert_eq!(svm.ranges()[0].vram_pages, 512);
    svm.set_attr(a.addr(), a.len(), &[Attr::PrefetchLoc(Location::Sysmem)]).unwrap();
    assert_eq!(svm.ranges()[0].vram_pages, 0);
    // A restore unmapped `stale` (UNMAP_FROM_GPU, trigger MMU_NOTIFY).
    let unmapped = drain(&ev).iter().any(|e| {
        matches!(e.kind, usvm::EventKind::UnmapFromGpu { gpu, trigger: usvm::UnmapTrigger::MmuNotify, .. } if gpu == stale)
    });
    assert!(unmapped, "no UNMAP_FROM_GPU for the GPU left out of the restore");
    svm.set_attr(b.addr(), b.len(), &[Attr::Access(g0), Attr::PrefetchLoc(Location::Gpu(g0))]).unwrap();
    let r = svm.gpu_write(stale, a.addr(), &[0xab; 4096]);
    let mut got = vec![0u8; b.len()];
    b.read_at(0, &mut got);
    assert!(got == db, "B corrupted at byte {:?}", first_difference(&got, &db));
    r
}

/// XNACK off: GPU 2 mapped A (ACCESS) in GPU 1's VRAM, then got NO_ACCESS; the restore
/// after the next migration (here, the sticky prefetch SET_ATTR re-runs) unmaps it, and its
/// store is a fatal fault.
#[test]
fn gpu_that_lost_access_is_unmapped_when_the_range_moves() {
    let svm = Svm::builder().gpus(2).vram_bytes(64 << 20).xgmi_hive(true).build().unwrap();
    let [g0, g1] = svm.gpu_ids()[..] else { panic!() };
    let (a, b) = (svm.alloc(2 * MIB).unwrap(), svm.alloc(2 * MIB).unwrap());
    let setup: [&[Attr]; 2] =
        [&[Attr::Access(g0), Attr::Access(g1), Attr::PrefetchLoc(Location::Gpu(g0))], &[Attr::NoAccess(g1)]];
    let r = stale_entries_never_reach_reused_vram(&svm, (&a, &b), g1, &setup);
    assert_eq!(errno(r), libc::EFAULT);
}

/// XNACK on, GPU_ALWAYS_MAPPED: the restore after A's move maps only the IN_PLACE GPU 2;
/// GPU 1, which mapped A's VRAM, is unmapped, and its store is a retry fault that maps A
/// again, in RAM: the store lands in A, never in B.
#[test]
fn always_mapped_restore_unmaps_the_gpus_it_does_not_map() {
    let svm = Svm::builder().gpus(2).vram_bytes(64 << 20).xnack(true).xgmi_hive(true).build().unwrap();
    let [g0, g1] = svm.gpu_ids()[..] else { panic!() };
    let (a, b) = (svm.alloc(2 * MIB).unwrap(), svm.alloc(2 * MIB).unwrap());
    let setup: [&[Attr]; 2] = [
        &[Attr::AccessInPlace(g1), Attr::SetFlags(SvmFlags::GPU_ALWAYS_MAPPED)],
        &[Attr::PrefetchLoc(Location::Gpu(g0))],
    ];
    stale_entries_never_reach_reused_vram(&svm, (&a, &b), g0, &setup).unwrap();
    let mut got = vec![0u8; 4096];
    a.read_at(0, &mut got);
    assert!(got.iter().all(|&x| x == 0xab), "A did not get the store");
}
