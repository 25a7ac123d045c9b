//! Benchmarks of [`Policy::Adaptive`] (`usvm bench adaptive_*`): each measures a workload
//! under the adaptive policy against a floor measured in the same call (the same workload
//! under the kernel's policy, or an explicit prefetch followed by the same stream).

use super::{Ratio, median};
use crate::error::Result;
use crate::sys::PAGE_SIZE;
use crate::{Attr, Location, Policy, Svm, SvmBuffer};
use std::time::Instant;

/// Bytes a kernel or the CPU moves per load or store call in these benchmarks.
const CHUNK: usize = 64 << 10;

fn instance(policy: Policy, vram: usize, xnack: bool) -> Result<Svm> {
    Svm::builder().gpus(1).vram_bytes(vram as u64).xnack(xnack).policy(policy).build()
}

/// Pages moved into and out of GPU 0's VRAM so far.
fn pages_moved(svm: &Svm) -> u64 {
    let c = svm.counters(svm.gpu_ids()[0]);
    c.page_in + c.page_out
}

/// One GPU kernel over `[addr, addr + len)`: adds one to the first byte of every chunk
/// (a load and a store per 64 KiB), or only loads when `!write`.
fn gpu_pass(svm: &Svm, addr: usize, len: usize, write: bool) -> Result<()> {
    let q = svm.create_queue(svm.gpu_ids()[0])?;
    q.submit(move |ctx| {
        let mut chunk = vec![0u8; CHUNK];
        for off in (0..len).step_by(CHUNK) {
            ctx.read(addr + off, &mut chunk)?;
            if write {
                chunk[0] = chunk[0].wrapping_add(1);
                ctx.write(addr + off, &chunk)?;
            }
        }
        std::hint::black_box(&chunk);
        Ok(())
    })
    .wait()
}

/// The CPU's pass: loads every chunk, and stores it back with its first byte plus one.
fn cpu_pass(buf: &SvmBuffer, write: bool) {
    let mut chunk = vec![0u8; CHUNK];
    for off in (0..buf.len()).step_by(CHUNK) {
        buf.read_at(off, &mut chunk);
        if write {
            chunk[0] = chunk[0].wrapping_add(1);
            buf.write_at(off, &chunk);
        }
    }
    std::hint::black_box(&chunk);
}

/// The CPU's turn of the ping-pong: one 8-byte counter per page, incremented.
fn cpu_counters(buf: &SvmBuffer) {
    let mut w = [0u8; 8];
    for off in (0..buf.len()).step_by(PAGE_SIZE) {
        buf.read_at(off, &mut w);
        buf.write_at(off, &(u64::from_le_bytes(w) + 1).to_le_bytes());
    }
}

/// The GPU's turn: a kernel incrementing the same counters.
fn gpu_counters(svm: &Svm, addr: usize, len: usize) -> Result<()> {
    let q = svm.create_queue(svm.gpu_ids()[0])?;
    q.submit(move |ctx| {
        for off in (0..len).step_by(PAGE_SIZE) {
            let v = ctx.read_u64(addr + off)?;
            ctx.write_u64(addr + off, v + 1)?;
        }
        Ok(())
    })
    .wait()
}

/// `adaptive_pingpong`: with XNACK on, the CPU and the GPU take `turns` turns each
/// incrementing a counter in every page of a `bytes` buffer (shared pages, as flags and
/// counters of a producer and a consumer are). Returns the throughput (increments per
/// microsecond) under the adaptive policy against the kernel's, and the pages each
/// migrated. Every counter is checked at the end.
pub fn pingpong(bytes: usize, turns: usize) -> Result<(Ratio, Ratio)> {
    let run = |policy: Policy| -> Result<(f64, f64)> {
        let svm = instance(policy, 4 * bytes, true)?;
        let buf = svm.alloc(bytes)?;
        buf.fill(0, bytes, 0);
        let t = Instant::now();
        for _ in 0..turns {
            cpu_counters(&buf);
            gpu_counters(&svm, buf.addr(), bytes)?;
        }
        let rate = (2 * turns * bytes / PAGE_SIZE) as f64 / t.elapsed().as_secs_f64() / 1e6;
        let mut w = [0u8; 8];
        for off in (0..bytes).step_by(PAGE_SIZE) {
            buf.read_at(off, &mut w);
            if u64::from_le_bytes(w) != 2 * turns as u64 {
                return Err(crate::Error::InvalidConfig(format!("ping-pong lost an increment at {off:#x}")));
            }
        }
        Ok((rate, pages_moved(&svm) as f64))
    };
    let (kernel, kernel_pages) = run(Policy::Kernel)?;
    let (adaptive, adaptive_pages) = run(Policy::Adaptive)?;
    Ok((Ratio { value: adaptive, floor: kernel }, Ratio { value: adaptive_pages, floor: kernel_pages }))
}

/// A `bytes` buffer of granularity 0 on the side opposite to the stream's (`cpu`: in VRAM,
/// the CPU streams; else in RAM, the GPU streams, XNACK on), then streamed by loads, under
/// the adaptive policy; `prefetch` first moves it explicitly (timed with the stream).
fn stream_once(cpu: bool, bytes: usize, prefetch: bool) -> Result<f64> {
    let svm = instance(Policy::Adaptive, 2 * bytes, true)?;
    let g = svm.gpu_ids()[0];
    let buf = svm.alloc(bytes)?;
    svm.set_attr(buf.addr(), bytes, &[Attr::Granularity(0)])?;
    buf.fill(0, bytes, 7);
    if cpu {
        svm.set_attr(buf.addr(), bytes, &[Attr::PrefetchLoc(Location::Gpu(g))])?;
    }
    let t = Instant::now();
    if prefetch {
        let to = if cpu { Location::Sysmem } else { Location::Gpu(g) };
        svm.set_attr(buf.addr(), bytes, &[Attr::PrefetchLoc(to)])?;
    }
    if cpu {
        cpu_pass(&buf, false);
    } else {
        gpu_pass(&svm, buf.addr(), bytes, false)?;
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// `adaptive_stream_cpu` (`cpu`) and `adaptive_stream_gpu`: a fault-driven stream at
/// granularity 0 under the adaptive policy against an explicit prefetch followed by the
/// same stream (prefetch time included), alternating `reps` times.
pub fn stream(cpu: bool, bytes: usize, reps: usize) -> Result<Ratio> {
    let (mut faults, mut prefetched) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        faults.push(stream_once(cpu, bytes, false)?);
        prefetched.push(stream_once(cpu, bytes, true)?);
    }
    Ok(Ratio { value: median(faults), floor: median(prefetched) })
}

/// xorshift64*: the random choices of the hot-set benchmark, the same every run.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// `adaptive_oversub_hotset`: with XNACK on, a GPU kernel makes `accesses` random 64 KiB
/// loads over a working set of 1.5x the VRAM (`vram` bytes), 90 % of them in a hot set of
/// half the VRAM; throughput under the adaptive policy against the kernel's.
pub fn oversub_hotset(vram: usize, accesses: usize) -> Result<Ratio> {
    let run = |policy: Policy| -> Result<f64> {
        let svm = instance(policy, vram, true)?;
        let set = vram / 2 * 3;
        let buf = svm.alloc(set)?;
        buf.fill(0, set, 1);
        let (addr, hot, chunks) = (buf.addr(), vram / 2 / CHUNK, set / CHUNK);
        let q = svm.create_queue(svm.gpu_ids()[0])?;
        let t = Instant::now();
        q.submit(move |ctx| {
            let (mut x, mut chunk) = (0x9e37_79b9_7f4a_7c15u64, vec![0u8; CHUNK]);
            for _ in 0..accesses {
                let r = next(&mut x);
                let c = if r % 10 < 9 {
                    (r >> 8) as usize % hot
                } else {
                    hot + (r >> 8) as usize % (chunks - hot)
                };
                ctx.read(addr + c * CHUNK, &mut chunk)?;
            }
            std::hint::black_box(&chunk);
            Ok(())
        })
        .wait()?;
        Ok((accesses * CHUNK) as f64 / t.elapsed().as_secs_f64() / 1e9)
    };
    let kernel = run(Policy::Kernel)?;
    let adaptive = run(Policy::Adaptive)?;
    Ok(Ratio { value: adaptive, floor: kernel })
}
