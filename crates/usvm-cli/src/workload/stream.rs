//! `stream`: the CPU writes a buffer, GPU kernels (one per GPU, each on its own part)
//! read and transform every word, the CPU reads everything back and checks it; repeated.
//! With XNACK on, the GPUs' first touches fault the data in and the CPU's reads fault it
//! back; with XNACK off, the application prefetches each part before its kernel.

use super::{Ctx, cpu_verify, cpu_write, gpu_update, mix, wait_all};
use crate::summary::Outcome;
use anyhow::Result;

fn initial(seed: u64, it: u64, i: usize) -> u64 {
    mix(seed ^ (it << 48) ^ i as u64)
}

fn transform(w: u64) -> u64 {
    w.wrapping_mul(3).wrapping_add(1)
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let buf = ctx.buffer(ctx.size, &[])?;
    let queues = ctx.queues()?;
    let parts = ctx.partition(&buf)?;
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations {
        let seed = ctx.seed;
        cpu_write(&buf, 0, buf.len(), |i| initial(seed, it, i));
        let mut fences = Vec::new();
        for (q, &(off, len)) in queues.iter().zip(&parts) {
            ctx.before_kernel(buf.addr() + off, len, q.gpu)?;
            let (base, addr) = (buf.addr(), buf.addr() + off);
            fences.push(q.launch("stream", move |k| gpu_update(k, base, addr, len, |_, w| transform(w))));
            out.operations += (len / 8) as u64;
        }
        wait_all(fences)?;
        ctx.step(&format!("iteration {}", it + 1));
        out.mismatches += cpu_verify(&buf, 0, buf.len(), |i| transform(initial(seed, it, i)));
        out.bytes_verified += buf.len() as u64;
    }
    Ok(out)
}
