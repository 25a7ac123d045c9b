//! `handoff`: one GPU and the CPU hand each 2 MiB block of a buffer back and forth, as a
//! producer and a consumer of the same data do: the GPU updates a block, then the CPU checks
//! the GPU's work and updates the block in turn, block after block. With XNACK on and ACCESS
//! for the GPU, every hand-off pulls the block across (a GPU fault moves it to VRAM, a CPU
//! fault moves it back): a ping-pong, which `--explain` finds. `--fix` follows its advice:
//! ACCESS_IN_PLACE for the GPU, which then works on the block in system memory, and nothing
//! moves.

use super::{Ctx, cpu_update, cpu_verify, gpu_update, wait_all};
use crate::summary::Outcome;
use anyhow::Result;
use std::cell::Cell;
use usvm::Attr;

/// Bytes handed over at a time (one 2 MiB granule).
const BLOCK: usize = 2 << 20;

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let g = ctx.gpus[0];
    let access = if ctx.fix { Attr::AccessInPlace(g) } else { Attr::Access(g) };
    let buf = ctx.filled_buffer(&[access])?;
    let q = ctx.queue(0)?;
    let init = ctx.initial();
    let blocks: Vec<(usize, usize)> =
        (0..buf.len()).step_by(BLOCK).map(|off| (off, BLOCK.min(buf.len() - off))).collect();
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations {
        for &(off, len) in &blocks {
            let (base, addr) = (buf.addr(), buf.addr() + off);
            // In place, the GPU maps the block in system memory: nothing to prefetch.
            if !ctx.fix {
                ctx.before_kernel(addr, len, g)?;
            }
            wait_all(vec![q.launch("gpu turn", move |k| gpu_update(k, base, addr, len, |_, w| w + 1))])?;
            // The CPU's turn: check the GPU's increment, then add its own.
            let bad = Cell::new(0u64);
            cpu_update(&buf, off, len, |i, w| {
                if w != init(i) + 2 * it + 1 {
                    bad.set(bad.get() + 1);
                }
                w + 1
            });
            out.mismatches += bad.get();
            out.operations += 2 * (len / 8) as u64;
        }
        ctx.step(&format!("round {}", it + 1));
    }
    let turns = 2 * ctx.iterations;
    out.mismatches += cpu_verify(&buf, 0, buf.len(), |i| init(i) + turns);
    out.bytes_verified += buf.len() as u64;
    Ok(out)
}
