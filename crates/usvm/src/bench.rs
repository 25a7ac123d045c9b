//! Measurement kernels for `usvm bench` that need the crate's internals. Each returns the
//! measured value together with its floor, measured in the same call, so that callers
//! print ratios rather than absolute times (these machines are noisy).

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
    sys::mmap::fill(src, bytes, 0x5a);
    sys::mmap::fill(dst, bytes, 0);
    let vram = VramManager::new(0, bytes as u64)?;
    let bo = vram.alloc(npages, Clear::No)?;
    let engine = CopyEngine::new(0)?;
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
    engine.copy_sync(&ops).1?; // commits the VRAM pages before timing
    let gbps = |secs: f64| bytes as f64 / secs / 1e9;
    let (mut eng, mut cpy) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        engine.copy_sync(&ops).1?;
        eng.push(gbps(t.elapsed().as_secs_f64()));
        let t = Instant::now();
        sys::mmap::copy(dst, src, bytes);
        cpy.push(gbps(t.elapsed().as_secs_f64()));
    }
    drop(bo);
    sys::mmap::unmap(src, bytes)?;
    sys::mmap::unmap(dst, bytes)?;
    Ok(Ratio { value: median(eng), floor: median(cpy) })
}
