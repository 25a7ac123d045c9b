//! `early-prefetch`: each step, the application prefetches the input of a kernel to the GPU
//! early, then runs scratch work on the same GPU whose data takes the whole VRAM, and only
//! then the kernel that uses the input. The scratch work evicts the input before the GPU
//! touched it: the prefetch was wasted (and, with XNACK on, the kernel faults the input back
//! in). `--explain` finds the wasted prefetch; `--fix` follows its advice: the input is
//! prefetched right before the kernel that uses it. Both buffers go back to system memory
//! after their kernels (a prefetch), where the CPU reads the results.

use super::{Ctx, cpu_verify, gpu_update, mix, wait_all};
use crate::summary::Outcome;
use anyhow::{Context, Result};
use usvm::{Attr, GpuId, Location};

fn prefetch(ctx: &Ctx, addr: usize, len: usize, to: Location) -> Result<()> {
    ctx.set_attr(addr, len, &[Attr::PrefetchLoc(to)]).context("SET_ATTR PREFETCH_LOC")?;
    Ok(())
}

fn scratch_value(seed: u64, it: u64, i: usize) -> u64 {
    mix(seed ^ (it << 40) ^ i as u64)
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let g: GpuId = ctx.gpus[0];
    let input = ctx.filled_buffer(&[Attr::Access(g)])?;
    let vram = ctx.svm.smi().first().map_or(0, |s| s.vram_bytes) as usize;
    let scratch = ctx.buffer(vram, &[Attr::Access(g)])?;
    let q = ctx.queue(0)?;
    let (init, seed) = (ctx.initial(), ctx.seed);
    let gpu = Location::Gpu(g);
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations {
        if !ctx.fix {
            prefetch(ctx, input.addr(), input.len(), gpu)?;
        }
        let (s, n) = (scratch.addr(), scratch.len());
        ctx.before_kernel(s, n, g)?;
        wait_all(vec![
            q.launch("scratch", move |k| gpu_update(k, s, s, n, |i, _| scratch_value(seed, it, i))),
        ])?;
        prefetch(ctx, s, n, Location::Sysmem)?;
        if ctx.fix {
            prefetch(ctx, input.addr(), input.len(), gpu)?;
        }
        let (a, n) = (input.addr(), input.len());
        ctx.before_kernel(a, n, g)?;
        wait_all(vec![q.launch("use input", move |k| gpu_update(k, a, a, n, |_, w| w + 1))])?;
        prefetch(ctx, a, n, Location::Sysmem)?;
        out.operations += ((scratch.len() + input.len()) / 8) as u64;
        ctx.step(&format!("step {}", it + 1));
    }
    let (steps, last) = (ctx.iterations, ctx.iterations - 1);
    out.mismatches += cpu_verify(&input, 0, input.len(), |i| init(i) + steps);
    out.mismatches += cpu_verify(&scratch, 0, scratch.len(), |i| scratch_value(seed, last, i));
    out.bytes_verified += (input.len() + scratch.len()) as u64;
    Ok(out)
}
