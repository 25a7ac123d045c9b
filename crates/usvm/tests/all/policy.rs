//! The adaptive placement policy: each rule shown by a behaviour that differs from the
//! kernel's policy (fault counts, bytes moved, residency), with every byte checked.

use crate::util::*;
use usvm::{Attr, Cause, Location, Policy, Residency, Svm};

fn svm(policy: Policy, vram: u64, xnack: bool) -> Svm {
    Svm::builder().gpus(1).vram_bytes(vram).xnack(xnack).policy(policy).build().unwrap()
}

/// Pages moved into and out of the GPU's VRAM so far.
fn pages_moved(svm: &Svm) -> u64 {
    let c = svm.counters(svm.gpu_ids()[0]);
    c.page_in + c.page_out
}

/// CPU and GPU take turns incrementing every word of a 1 MiB buffer (XNACK on); returns
/// the pages moved. Every word is checked at every turn.
fn ping_pong(policy: Policy, preferred: Option<Location>) -> u64 {
    let svm = svm(policy, 64 << 20, true);
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(MIB).unwrap();
    if let Some(p) = preferred {
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PreferredLoc(p)]).unwrap();
    }
    buf.fill(0, buf.len(), 0);
    let mut words = vec![0u8; MIB];
    for turn in 0..24u64 {
        // CPU: +1 on every word.
        buf.read_at(0, &mut words);
        for (i, w) in words.chunks_exact_mut(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().unwrap());
            assert_eq!(v, 2 * turn, "word {i} before the CPU's turn {turn}");
            w.copy_from_slice(&(v + 1).to_le_bytes());
        }
        buf.write_at(0, &words);
        // GPU: +1 on every word.
        svm.gpu_read(g, buf.addr(), &mut words).unwrap();
        for w in words.chunks_exact_mut(8) {
            let v = u64::from_le_bytes(w.try_into().unwrap());
            w.copy_from_slice(&(v + 1).to_le_bytes());
        }
        svm.gpu_write(g, buf.addr(), &words).unwrap();
    }
    buf.read_at(0, &mut words);
    assert!(words.chunks_exact(8).all(|w| u64::from_le_bytes(w.try_into().unwrap()) == 48));
    pages_moved(&svm)
}

#[test]
fn pinning_ends_a_cpu_gpu_ping_pong() {
    let kernel = ping_pong(Policy::Kernel, None);
    let adaptive = ping_pong(Policy::Adaptive, None);
    assert!(kernel >= 24 * 256, "the kernel moves the buffer at every turn: {kernel} pages");
    assert!(adaptive * 10 <= kernel, "pinned, the data stays in RAM: {adaptive} vs {kernel} pages");
}

#[test]
fn a_preferred_loc_is_throttled_not_pinned() {
    // PREFERRED_LOC = the GPU: pinning in RAM would override the application's wish, so a
    // thrashing block is throttled instead and keeps following its preference.
    let g = Svm::builder().gpus(1).build().unwrap().gpu_ids()[0];
    let adaptive = ping_pong(Policy::Adaptive, Some(Location::Gpu(g)));
    assert!(adaptive >= 24 * 256, "the data still goes to the GPU at its faults: {adaptive} pages");
}

/// A 1 MiB buffer of granularity 0 (a fault per 4 KiB page under the kernel's policy):
/// the GPU writes it (into VRAM), then the CPU reads it page by page. Returns the CPU
/// faults the stream took.
fn cpu_stream_faults(policy: Policy) -> u64 {
    let svm = svm(policy, 64 << 20, true);
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(MIB).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Granularity(0)]).unwrap();
    svm.gpu_write(g, buf.addr(), &pattern(MIB, 3)).unwrap();
    svm.set_attr(buf.addr(), buf.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    assert!(svm.residency(buf.addr(), 256).iter().all(|r| *r == Residency::Vram(g)));
    let before = svm.cpu_faults();
    let (mut page, want) = (vec![0u8; PAGE], pattern(MIB, 3));
    for p in 0..256 {
        buf.read_at(p * PAGE, &mut page);
        assert_eq!(page, want[p * PAGE..(p + 1) * PAGE], "page {p}");
    }
    svm.cpu_faults() - before
}

#[test]
fn density_prefetch_cuts_the_cpu_faults_of_a_stream() {
    let kernel = cpu_stream_faults(Policy::Kernel);
    let adaptive = cpu_stream_faults(Policy::Adaptive);
    assert!(kernel >= 256, "a fault per page: {kernel}");
    assert!(adaptive * 10 <= kernel, "density prefetch: {adaptive} faults vs {kernel}");
}

/// A 512 KiB buffer of granularity 0 in RAM; the GPU reads it page by page (XNACK on).
/// Returns the migrations its faults made.
fn gpu_stream_moves(policy: Policy) -> usize {
    let svm = svm(policy, 64 << 20, true);
    let g = svm.gpu_ids()[0];
    let len = 512 << 10;
    let buf = svm.alloc(len).unwrap();
    svm.set_attr(buf.addr(), len, &[Attr::Granularity(0)]).unwrap();
    buf.write_at(0, &pattern(len, 5));
    let (mut page, want) = (vec![0u8; PAGE], pattern(len, 5));
    for p in 0..len / PAGE {
        svm.gpu_read(g, buf.addr() + p * PAGE, &mut page).unwrap();
        assert_eq!(page, want[p * PAGE..(p + 1) * PAGE], "page {p}");
    }
    assert!(svm.residency(buf.addr(), len / PAGE).iter().all(|r| *r == Residency::Vram(g)));
    svm.history(buf.addr(), len).iter().filter(|m| matches!(m.cause, Cause::GpuFault { .. })).count()
}

#[test]
fn density_prefetch_cuts_the_gpu_faults_of_a_stream() {
    let kernel = gpu_stream_moves(Policy::Kernel);
    let adaptive = gpu_stream_moves(Policy::Adaptive);
    assert!(kernel >= 128, "a migration per page: {kernel}");
    assert!(adaptive * 8 <= kernel, "density prefetch: {adaptive} migrations vs {kernel}");
}

#[test]
fn untouched_memory_is_populated_where_it_is_first_touched() {
    for policy in [Policy::Kernel, Policy::Adaptive] {
        let svm = svm(policy, 8 << 20, true);
        let g = svm.gpu_ids()[0];
        let buf = svm.alloc(32 << 20).unwrap();
        svm.set_attr(buf.addr(), buf.len(), &[Attr::PreferredLoc(Location::Gpu(g))]).unwrap();
        let moved = pages_moved(&svm);
        if policy == Policy::Kernel {
            assert!(moved >= 2048, "the kernel fills VRAM with zeroed pages: {moved}");
            continue;
        }
        assert_eq!(moved, 0, "nothing held data: nothing moved");
        assert!(svm.residency(buf.addr(), 8192).iter().all(|r| *r == Residency::Unpopulated));
        // The GPU's first touch populates its VRAM, the CPU's populates RAM.
        svm.gpu_write(g, buf.addr(), &[7; 8]).unwrap();
        let mut b = [1u8; 8];
        buf.read_at(16 << 20, &mut b);
        assert_eq!(b, [0; 8]);
        let res = svm.residency(buf.addr(), 1);
        assert_eq!(res[0], Residency::Vram(g));
        assert_eq!(svm.residency(buf.addr() + (16 << 20), 1)[0], Residency::Sysmem);
        buf.read_at(0, &mut b);
        assert_eq!(b, [7; 8]);
    }
}

/// Four 2 MiB buffers fill an 8 MiB VRAM, the oldest one is the hot one (the GPU reads it
/// again and again), then a fifth needs room. Returns where the hot buffer is afterwards.
fn hot_buffer_after_eviction(policy: Policy) -> Residency {
    let svm = svm(policy, 8 << 20, false);
    let g = svm.gpu_ids()[0];
    let bufs: Vec<_> = (0..5).map(|_| svm.alloc(2 * MIB).unwrap()).collect();
    for (i, b) in bufs.iter().enumerate() {
        b.fill(0, b.len(), i as u8 + 1);
        svm.set_attr(b.addr(), b.len(), &[Attr::Access(g)]).unwrap();
    }
    for b in &bufs[..4] {
        svm.set_attr(b.addr(), b.len(), &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    }
    let mut page = vec![0u8; 64 << 10];
    for _ in 0..20 {
        svm.gpu_read(g, bufs[0].addr(), &mut page).unwrap();
        assert!(page.iter().all(|&x| x == 1));
    }
    svm.set_attr(bufs[4].addr(), 2 * MIB, &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    let hot = svm.residency(bufs[0].addr(), 1)[0];
    for (i, b) in bufs.iter().enumerate() {
        let mut v = [0u8; 1];
        b.read_at(MIB, &mut v);
        assert_eq!(v[0], i as u8 + 1, "buffer {i}");
    }
    hot
}

#[test]
fn eviction_keeps_the_hot_buffer() {
    assert_eq!(hot_buffer_after_eviction(Policy::Kernel), Residency::Sysmem, "LRU evicts the oldest");
    assert!(matches!(hot_buffer_after_eviction(Policy::Adaptive), Residency::Vram(_)), "the least used goes");
}

#[test]
fn a_stream_reads_ahead_into_the_next_ranges() {
    // 64 MiB of VRAM: ranges of 2 MiB; an 8 MiB buffer is four of them.
    let svm = svm(Policy::Adaptive, 64 << 20, true);
    let g = svm.gpu_ids()[0];
    let len = 8 * MIB;
    let buf = svm.alloc(len).unwrap();
    svm.set_attr(buf.addr(), len, &[Attr::Granularity(0)]).unwrap();
    assert!(svm.ranges().len() >= 4, "{:?}", svm.ranges());
    buf.write_at(0, &pattern(len, 9));
    svm.set_attr(buf.addr(), len, &[Attr::PrefetchLoc(Location::Gpu(g))]).unwrap();
    let before = svm.cpu_faults();
    let mut page = vec![0u8; PAGE];
    let want = pattern(len, 9);
    for p in 0..len / PAGE {
        buf.read_at(p * PAGE, &mut page);
        assert_eq!(page, want[p * PAGE..(p + 1) * PAGE], "page {p}");
    }
    let faults = svm.cpu_faults() - before;
    let h = svm.history(buf.addr(), len);
    let ahead: Vec<_> = h.iter().filter(|m| m.cause == Cause::Policy { rule: "stream-ahead" }).collect();
    assert!(!ahead.is_empty(), "the later ranges came back ahead of the stream: {h:#?}");
    assert!(ahead.iter().all(|m| m.to == Location::Sysmem && m.start >= buf.addr() + 2 * MIB));
    assert!(faults <= 12, "the first range's faults only: {faults}");
}
