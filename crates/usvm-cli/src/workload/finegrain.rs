//! `finegrain`: streaming with GRANULARITY 0. Each step, a buffer whose granularity the
//! application set to 0 (one 4 KiB page) is prefetched to the GPU, a kernel updates every
//! word, and the CPU streams through it checking every word: each page it reads is a CPU
//! fault that brings back 4 KiB. `--explain` finds the fault storm; `--fix` follows its
//! advice, GRANULARITY 9: a CPU fault brings back 2 MiB.

use super::{Ctx, cpu_verify, gpu_update, wait_all};
use crate::summary::Outcome;
use anyhow::{Context, Result};
use usvm::{Attr, Location};

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let g = ctx.gpus[0];
    let granularity = if ctx.fix { 9 } else { 0 };
    let buf = ctx.filled_buffer(&[Attr::Access(g), Attr::Granularity(granularity)])?;
    let q = ctx.queue(0)?;
    let init = ctx.initial();
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations {
        let (a, n) = (buf.addr(), buf.len());
        ctx.set_attr(a, n, &[Attr::PrefetchLoc(Location::Gpu(g))]).context("SET_ATTR PREFETCH_LOC")?;
        wait_all(vec![q.launch("update", move |k| gpu_update(k, a, a, n, |_, w| w + 1))])?;
        out.mismatches += cpu_verify(&buf, 0, n, |i| init(i) + it + 1);
        out.bytes_verified += n as u64;
        out.operations += (n / 8) as u64;
        ctx.step(&format!("step {}", it + 1));
    }
    Ok(out)
}
