//! Measurement kernels for `usvm bench` that need the crate's internals. Each returns the
//! measured value together with its floor, measured in the same call, so that callers
//! print ratios rather than absolute times (these machines are noisy).

pub mod policy;

use crate::error::Result;
use crate::gpu::sdma::{CopyEngine, CopyOp};
use crate::gpu::vram::{Clear, VramManager};
use crate::sys::{self, PAGE_SIZE};
use std::time::Instant;

/// A throughput and its floor, in GB/s.
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    /// What was measured.
    pub value: f64,
    /// The floor it is compared with.
    pub floor: f64,
}

/// Median of `xs`.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// `copy_engine`: system memory -> VRAM through the copy engine (chunks, fences, engine
/// thread) against a single-thread memcpy of the same size, alternating `reps` times.
pub fn copy_engine(bytes: usize, reps: usize) -> Result<Ratio> {
    let bytes = bytes.next_multiple_of(PAGE_SIZE);
    let npages = (bytes / PAGE_SIZE) as u64;
    let src = sys::mmap::reserve(bytes)?;
    let dst = sys::mmap::reserve(bytes)?;
    // SAFETY: two fresh mappings of `bytes` bytes made above, owned here until the unmaps
    // at the end; nothing else knows them.
    unsafe {
        sys::mmap::fill(src, bytes, 0x5a);
        sys::mmap::fill(dst, bytes, 0);
    }
    let vram = VramManager::new(crate::gpu::GpuIdx::new(0), bytes as u64)?;
    let bo = vram.alloc(npages, Clear::No)?;
    let engine = CopyEngine::new(crate::gpu::GpuIdx::new(0))?;
    let mut ops = Vec::new();
    let mut at = 0u64;
    for r in bo.runs() {
        ops.push(CopyOp {
            src: src + at as usize * PAGE_SIZE,
            dst: vram.base() + r.page as usize * PAGE_SIZE,
            npages: r.npages,
        });
        at += r.npages;
    }
    engine.copy(&ops).wait().1?; // commits the VRAM pages before timing
    let gbps = |secs: f64| bytes as f64 / secs / 1e9;
    let (mut eng, mut cpy) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        engine.copy(&ops).wait().1?; // the engine thread alone, as an asynchronous copy
        eng.push(gbps(t.elapsed().as_secs_f64()));
        let t = Instant::now();
        // SAFETY: the two mappings made above, distinct and live.
        unsafe { sys::mmap::copy(dst, src, bytes) };
        cpy.push(gbps(t.elapsed().as_secs_f64()));
    }
    drop(bo);
    // SAFETY: the mappings made above; the copy engine is done with them.
    unsafe {
        sys::mmap::unmap(src, bytes)?;
        sys::mmap::unmap(dst, bytes)?;
    }
    Ok(Ratio { value: median(eng), floor: median(cpy) })
}

/// Single-thread memcpy throughput (GB/s) of `bytes`, populated source and destination.
fn memcpy_gbps(bytes: usize, reps: usize) -> Result<f64> {
    let src = sys::mmap::reserve(bytes)?;
    let dst = sys::mmap::reserve(bytes)?;
    // SAFETY: two fresh mappings made above, owned here until the unmaps below.
    unsafe {
        sys::mmap::fill(src, bytes, 1);
        sys::mmap::fill(dst, bytes, 2);
    }
    let mut v = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        // SAFETY: the two mappings made above, distinct and live.
        unsafe { sys::mmap::copy(dst, src, bytes) };
        v.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    // SAFETY: the mappings made above, used no more.
    unsafe {
        sys::mmap::unmap(src, bytes)?;
        sys::mmap::unmap(dst, bytes)?;
    }
    Ok(median(v))
}

/// `prefetch_to_vram` and `prefetch_to_sysmem`: SET_ATTR(PREFETCH_LOC) of a populated
/// range of `bytes` to the GPU and back, against memcpy of the same size in the same run.
pub fn prefetch(bytes: usize, reps: usize) -> Result<(Ratio, Ratio)> {
    use crate::{Attr, Location, Svm};
    let svm = Svm::builder().gpus(1).vram_bytes(2 * bytes as u64).build()?;
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(bytes)?;
    buf.fill(0, bytes, 0x77);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let gbps = |t: Instant| bytes as f64 / t.elapsed().as_secs_f64() / 1e9;
    for _ in 0..reps {
        let t = Instant::now();
        svm.set_attr(buf.addr(), bytes, &[Attr::PrefetchLoc(Location::Gpu(g))])?;
        up.push(gbps(t));
        let t = Instant::now();
        svm.set_attr(buf.addr(), bytes, &[Attr::PrefetchLoc(Location::Sysmem)])?;
        down.push(gbps(t));
    }
    let floor = memcpy_gbps(bytes, reps)?;
    Ok((Ratio { value: median(up), floor }, Ratio { value: median(down), floor }))
}

/// `cpu_fault_4k`: median latency (us) of a CPU touch of a page whose data is in VRAM,
/// granularity 0, against the median latency of a bare userfaultfd fault round trip with
/// the same mechanism (a handler thread blocking in poll/read, resolving with a zero page).
pub fn cpu_fault_4k(pages: usize) -> Result<Ratio> {
    use crate::{Attr, Location, Svm};
    let bytes = pages * PAGE_SIZE;
    let svm = Svm::builder().gpus(1).vram_bytes((bytes as u64).max(64 << 20)).build()?;
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(bytes)?;
    buf.fill(0, bytes, 1);
    svm.set_attr(buf.addr(), bytes, &[Attr::Granularity(0), Attr::PrefetchLoc(Location::Gpu(g))])?;
    // The floor: the same mechanism with nothing around it.
    let uffd = std::sync::Arc::new(crate::sys::uffd::Uffd::new(false)?);
    let region = sys::mmap::reserve(bytes)?;
    uffd.register(region, bytes)?;
    let u = uffd.clone();
    let handler = std::thread::spawn(move || {
        while let Ok(Some(f)) = u.next_fault() {
            let _ = u.zeropage(f.addr, PAGE_SIZE);
        }
    });
    // Alternate the two, so that both see the same machine (these VMs are noisy).
    let (mut lat, mut bare) = (Vec::with_capacity(pages), Vec::with_capacity(pages));
    let mut b = [0u8; 1];
    for i in 0..pages {
        let t = Instant::now();
        buf.read_at(i * PAGE_SIZE, std::hint::black_box(&mut b));
        std::hint::black_box(&b);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        // SAFETY: page `i` of the region mapped above (registered: a missing page faults to
        // the handler thread, which serves it).
        unsafe { sys::mmap::copy_from(region + i * PAGE_SIZE, std::hint::black_box(&mut b)) };
        std::hint::black_box(&b);
        bare.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let value = median(lat);
    uffd.shutdown();
    let _ = handler.join();
    // SAFETY: the region mapped above; the handler thread is gone.
    unsafe { sys::mmap::unmap(region, bytes)? };
    Ok(Ratio { value, floor: median(bare) })
}

/// `cpu_fault_stream_2m`: the CPU reads (a sum over every 8-byte word) a VRAM-resident
/// range of `bytes` with the default 2 MiB granularity, each granule a CPU fault, against
/// memcpy of the same size measured in the same run.
pub fn cpu_fault_stream(bytes: usize, reps: usize) -> Result<Ratio> {
    use crate::{Attr, Location, Svm};
    let svm = Svm::builder().gpus(1).vram_bytes(2 * bytes as u64).build()?;
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(bytes)?;
    buf.fill(0, bytes, 3);
    let mut v = Vec::new();
    for _ in 0..reps {
        svm.set_attr(buf.addr(), bytes, &[Attr::PrefetchLoc(Location::Gpu(g))])?;
        let t = Instant::now();
        // SAFETY: the buffer's own mapping, live while `buf` is; faults are served by usvm.
        std::hint::black_box(unsafe { sys::mmap::sum_words(buf.addr(), bytes) });
        v.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let floor = memcpy_gbps(bytes, reps)?;
    Ok(Ratio { value: median(v), floor })
}

/// A GPU kernel on GPU 0 reads every 8-byte word of `[addr, addr + len)` (64 KiB at a
/// time); returns the bytes per second.
fn gpu_sweep(svm: &crate::Svm, addr: usize, len: usize) -> Result<f64> {
    let g = svm.gpu_ids()[0];
    let q = svm.create_queue(g)?;
    let t = Instant::now();
    q.submit(move |ctx| {
        let mut chunk = vec![0u8; 64 << 10];
        let mut sum = 0u64;
        for off in (0..len).step_by(chunk.len()) {
            ctx.read(addr + off, &mut chunk)?;
            sum = sum.wrapping_add(chunk[0] as u64);
        }
        std::hint::black_box(sum);
        Ok(())
    })
    .wait()?;
    Ok(len as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// `gpu_fault_stream`: with XNACK on, a GPU kernel streams a system-resident range of
/// `bytes`, every granule brought to VRAM by a GPU retry fault; against an explicit
/// prefetch of the same range followed by the same stream (prefetch time included).
pub fn gpu_fault_stream(bytes: usize) -> Result<Ratio> {
    use crate::{Attr, Location, Svm};
    let run = |prefetch: bool| -> Result<f64> {
        let svm = Svm::builder().gpus(1).vram_bytes(2 * bytes as u64).xnack(true).build()?;
        let g = svm.gpu_ids()[0];
        let buf = svm.alloc(bytes)?;
        buf.fill(0, bytes, 1);
        let t = Instant::now();
        if prefetch {
            svm.set_attr(buf.addr(), bytes, &[Attr::PrefetchLoc(Location::Gpu(g))])?;
        }
        gpu_sweep(&svm, buf.addr(), bytes)?;
        Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
    };
    let value = run(false)?;
    let floor = run(true)?;
    Ok(Ratio { value, floor })
}

/// `oversub_1_5x`: with XNACK on, a GPU kernel sweeps twice over a working set of 1.5x its
/// VRAM (granules fault in, least recently used buffer objects are evicted), against the
/// same sweeps over 0.5x its VRAM.
pub fn oversub(vram: usize) -> Result<Ratio> {
    use crate::Svm;
    let run = |set: usize| -> Result<f64> {
        let svm = Svm::builder().gpus(1).vram_bytes(vram as u64).xnack(true).build()?;
        let buf = svm.alloc(set)?;
        buf.fill(0, set, 2);
        let t = Instant::now();
        for _ in 0..2 {
            gpu_sweep(&svm, buf.addr(), set)?;
        }
        Ok(2.0 * set as f64 / t.elapsed().as_secs_f64() / 1e9)
    };
    let value = run(vram / 2 * 3)?;
    let floor = run(vram / 2)?;
    Ok(Ratio { value, floor })
}

/// `sdma_copy`: COPY_LINEAR of `bytes` between two VRAM-resident SVM ranges through an SDMA
/// queue of the KFD model (packets of 2 MiB in a ring, doorbell, read pointer), against a
/// single-thread memcpy of the same size in the same run.
pub fn sdma_copy(bytes: usize, reps: usize) -> Result<Ratio> {
    use crate::kfd::{Kfd, KfdConfig, MemFlags, QueueKind};
    use crate::{Attr, Location};
    const RING: usize = 64 << 10;
    const PIECE: usize = 2 << 20;
    let bytes = bytes.next_multiple_of(PIECE);
    let err = |e: crate::kfd::KfdError| crate::Error::InvalidConfig(e.to_string());
    let k = Kfd::new(KfdConfig {
        gpus: 1,
        vram_bytes: 2 * bytes as u64 + (64 << 20),
        xgmi_hive: false,
        xnack: false,
    })
    .map_err(err)?;
    let svm = k.svm();
    let g = svm.gpu_ids()[0];
    let (src, dst) = (svm.alloc(bytes)?, svm.alloc(bytes)?);
    src.fill(0, bytes, 0x3c);
    for b in [&src, &dst] {
        svm.set_attr(b.addr(), bytes, &[Attr::Access(g), Attr::PrefetchLoc(Location::Gpu(g))])?;
    }
    let ring = k.alloc_memory(1, RING as u64, MemFlags::HOST_ACCESS | MemFlags::UNCACHED).map_err(err)?;
    k.map_memory(ring, Some(&[1])).map_err(err)?;
    let q = k.create_queue(1, QueueKind::Sdma, ring, RING as u64).map_err(err)?;
    let mut packets = Vec::new();
    for off in (0..bytes).step_by(PIECE) {
        let (s, d) = ((src.addr() + off) as u64, (dst.addr() + off) as u64);
        for w in [1, PIECE as u32 - 1, 0, s as u32, (s >> 32) as u32, d as u32, (d >> 32) as u32] {
            packets.extend_from_slice(&w.to_le_bytes());
        }
    }
    assert!(packets.len() <= RING, "the packets fit the ring");
    let mut wptr = 0u64;
    let mut copy = || -> Result<f64> {
        // Each round starts at the ring's beginning: pad the rest with NOPs (zero dwords).
        let pos = (wptr % RING as u64) as usize;
        if pos != 0 {
            // SAFETY: the tail of the ring mapping made above (`pos < RING`).
            unsafe { sys::mmap::fill(ring + pos, RING - pos, 0) };
            wptr += (RING - pos) as u64;
        }
        // SAFETY: the ring mapping made above, at least as large as one round's packets.
        unsafe { sys::mmap::copy_to(ring, &packets) };
        wptr += packets.len() as u64;
        let t = Instant::now();
        k.queues().submit(q.id, wptr).map_err(err)?;
        // Poll as applications do, sleeping in between: a spinning waiter would take a core
        // from the engine (2 cores here).
        while k.queues().read_ptr(q.id).map_err(err)? != wptr {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
    };
    copy()?; // the first copy takes the destination's VRAM pages in
    let mut v = Vec::new();
    for _ in 0..reps {
        v.push(copy()?);
    }
    let floor = memcpy_gbps(bytes, reps)?;
    k.destroy_queue(q.id).map_err(err)?;
    k.free_memory(ring).map_err(err)?;
    Ok(Ratio { value: median(v), floor })
}

/// `isa_copy`: gfx90a machine code (`shaders::ISA_COPY`, one dword per work-item, one
/// 64-lane wave per workgroup) copying `bytes` between two SVM ranges through
/// `Queue::submit_isa`, against a single-thread memcpy of the same size in the same run.
/// Checks the copy once.
pub fn isa_copy(bytes: usize, reps: usize) -> Result<Ratio> {
    use crate::gpu::isa::shaders::{ISA_COPY, isa_copy_launch};
    use crate::{Attr, Svm};
    let bytes = bytes.next_multiple_of(256);
    let svm = Svm::builder().gpus(1).vram_bytes(2 * bytes as u64 + (64 << 20)).build()?;
    let g = svm.gpu_ids()[0];
    let (code, src, dst) = (svm.alloc(PAGE_SIZE)?, svm.alloc(bytes)?, svm.alloc(bytes)?);
    let words: Vec<u8> = ISA_COPY.iter().flat_map(|w| w.to_le_bytes()).collect();
    code.write_at(0, &words);
    let pattern: Vec<u8> = (0..bytes).map(|i| (i * 7 / 4) as u8).collect();
    src.write_at(0, &pattern);
    dst.fill(0, bytes, 0);
    for b in [&code, &src, &dst] {
        svm.set_attr(b.addr(), b.len(), &[Attr::Access(g)])?;
    }
    let q = svm.create_queue(g)?;
    let launch = isa_copy_launch(code.addr() as u64, src.addr() as u64, dst.addr() as u64, bytes as u64);
    let mut v = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        q.submit_isa(launch.clone()).wait()?;
        v.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let mut back = vec![0u8; bytes];
    dst.read_at(0, &mut back);
    if back != pattern {
        return Err(crate::Error::InvalidConfig("isa_copy: the destination differs from the source".into()));
    }
    let floor = memcpy_gbps(bytes, reps)?;
    Ok(Ratio { value: median(v), floor })
}
