//! `pingpong`: the CPU and a GPU take turns incrementing every word of the same pages
//! (the GPU changes each turn when there are several), so the data crosses between RAM
//! and VRAM (and between GPUs, through RAM) at every turn.

use super::{Ctx, cpu_update, cpu_verify, gpu_update, wait_all};
use crate::summary::Outcome;
use anyhow::Result;

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let all = ctx.access_all();
    let buf = ctx.filled_buffer(&all)?;
    let queues = ctx.queues()?;
    let init = ctx.initial();
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations {
        cpu_update(&buf, 0, buf.len(), |_, w| w + 1);
        let q = &queues[it as usize % queues.len()];
        ctx.before_kernel(buf.addr(), buf.len(), q.gpu)?;
        let (addr, len) = (buf.addr(), buf.len());
        wait_all(vec![q.launch("pingpong", move |k| gpu_update(k, addr, addr, len, |_, w| w + 1))])?;
        out.operations += 2 * (buf.len() / 8) as u64;
        ctx.step(&format!("turn {}", it + 1));
    }
    let turns = 2 * ctx.iterations;
    out.mismatches += cpu_verify(&buf, 0, buf.len(), |i| init(i) + turns);
    out.bytes_verified += buf.len() as u64;
    Ok(out)
}
