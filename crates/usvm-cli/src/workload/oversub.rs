//! `oversub`: each GPU sweeps its share of a working set larger than its VRAM (1.5 times by
//! default), incrementing every word, a tile at a time; VRAM fills up and the least
//! recently used data is evicted to RAM to make room. With XNACK off the application
//! prefetches each tile before the kernel that works on it. With XNACK on, the GPU faults
//! bring back data evicted shortly before: `--explain` finds hot data evicted, and `--fix`
//! follows its advice: the part of each share that fits in the VRAM gets PREFERRED_LOC on its
//! GPU (it moves there once and stays), the rest PREFERRED_LOC system memory (the GPU maps
//! it where it is and works on it there).

use super::{Ctx, cpu_verify, gpu_update, wait_all};
use crate::summary::Outcome;
use anyhow::{Context, Result};
use usvm::{Attr, Location};

/// Bytes a kernel works on (one tile).
const TILE: usize = 8 << 20;

/// `--fix`: the first part of each GPU's share that fits in its VRAM (in whole tiles)
/// prefers that GPU, the rest system memory.
fn place(ctx: &Ctx, addr: usize, parts: &[(usize, usize)]) -> Result<()> {
    for (&(off, len), (&g, snap)) in parts.iter().zip(ctx.gpus.iter().zip(ctx.svm.smi())) {
        let hot = (snap.vram_bytes as usize / TILE * TILE).min(len);
        let pref = |l| [Attr::PreferredLoc(l)];
        ctx.set_attr(addr + off, hot, &pref(Location::Gpu(g))).context("SET_ATTR PREFERRED_LOC")?;
        if hot < len {
            ctx.set_attr(addr + off + hot, len - hot, &pref(Location::Sysmem)).context("SET_ATTR")?;
        }
    }
    Ok(())
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let buf = ctx.filled_buffer(&[])?;
    let queues = ctx.queues()?;
    let parts = ctx.partition(&buf)?;
    if ctx.fix {
        place(ctx, buf.addr(), &parts)?;
    }
    let init = ctx.initial();
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations {
        let rounds = parts.iter().map(|p| p.1.div_ceil(TILE)).max().unwrap_or(0);
        for r in 0..rounds {
            // One tile of each GPU's share per round, the GPUs side by side.
            let off = r * TILE;
            let mut fences = Vec::new();
            for (q, &(poff, plen)) in queues.iter().zip(&parts).filter(|(_, p)| off < p.1) {
                let len = TILE.min(plen - off);
                let addr = buf.addr() + poff + off;
                // Placed by --fix: the data is where it should be, mapped for the GPU.
                if !ctx.fix {
                    ctx.before_kernel(addr, len, q.gpu)?;
                }
                let base = buf.addr();
                fences.push(q.launch("sweep", move |k| gpu_update(k, base, addr, len, |_, w| w + 1)));
                out.operations += (len / 8) as u64;
            }
            wait_all(fences)?;
        }
        ctx.step(&format!("sweep {}", it + 1));
    }
    let sweeps = ctx.iterations;
    out.mismatches += cpu_verify(&buf, 0, buf.len(), |i| init(i) + sweeps);
    out.bytes_verified += buf.len() as u64;
    Ok(out)
}
