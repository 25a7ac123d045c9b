//! `random`: random read-modify-writes with a hot set. Each GPU owns a slice of the
//! buffer and increments random words of it, 90% of them in a hot set (10% of its pages,
//! scattered); then the CPU increments random words anywhere. A model of every word in
//! plain memory follows the same sequences; everything is compared at the end.

use super::{Ctx, Rng, cpu_verify, mix, wait_all};
use crate::summary::Outcome;
use anyhow::Result;

/// Increments per GPU kernel, and by the CPU, per iteration.
const ACCESSES: u64 = 8192;
/// One page in `HOT_ONE_IN` is hot; `HOT_SHARE` percent of the accesses go to hot pages.
const HOT_ONE_IN: u64 = 10;
const HOT_SHARE: u64 = 90;
const WORDS_PER_PAGE: u64 = 512;

/// The words a sequence touches: `n` picks in the words `[first, first + count)`, most of
/// them in `hot` (first words of hot pages).
fn picks(rng: &mut Rng, n: u64, first: u64, count: u64, hot: &[u64]) -> Vec<u64> {
    (0..n)
        .map(|_| {
            if !hot.is_empty() && rng.below(100) < HOT_SHARE {
                hot[rng.below(hot.len() as u64) as usize] + rng.below(WORDS_PER_PAGE)
            } else {
                first + rng.below(count)
            }
        })
        .collect()
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let buf = ctx.filled_buffer(&[])?;
    let queues = ctx.queues()?;
    let parts = ctx.partition(&buf)?;
    let (seed, init) = (ctx.seed, ctx.initial());
    let words = (buf.len() / 8) as u64;
    let mut model: Vec<u64> = (0..words as usize).map(init).collect();
    // The hot pages of each GPU's slice.
    let hot: Vec<Vec<u64>> = parts
        .iter()
        .map(|&(off, len)| {
            let (p0, p1) = ((off / 4096) as u64, ((off + len) / 4096) as u64);
            (p0..p1)
                .filter(|&p| mix(seed ^ 0x407 ^ p).is_multiple_of(HOT_ONE_IN))
                .map(|p| p * WORDS_PER_PAGE)
                .collect()
        })
        .collect();
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations {
        let mut fences = Vec::new();
        for (g, (q, &(off, len))) in queues.iter().zip(&parts).enumerate() {
            let mut rng = Rng::new(seed ^ (it << 32) ^ (g as u64 + 1));
            let seq = picks(&mut rng, ACCESSES, (off / 8) as u64, (len / 8) as u64, &hot[g]);
            for &w in &seq {
                model[w as usize] += 1;
            }
            ctx.before_kernel(buf.addr() + off, len, q.gpu)?;
            let base = buf.addr();
            fences.push(q.launch("random", move |k| {
                for w in seq {
                    let a = base + w as usize * 8;
                    let v = k.read_u64(a)?;
                    k.write_u64(a, v + 1)?;
                }
                Ok(())
            }));
            out.operations += ACCESSES;
        }
        wait_all(fences)?;
        let all_hot: Vec<u64> = hot.concat();
        let mut rng = Rng::new(seed ^ (it << 32));
        for w in picks(&mut rng, ACCESSES, 0, words, &all_hot) {
            let mut b = [0u8; 8];
            buf.read_at(w as usize * 8, &mut b);
            buf.write_at(w as usize * 8, &(u64::from_le_bytes(b) + 1).to_le_bytes());
            model[w as usize] += 1;
        }
        out.operations += ACCESSES;
        ctx.step(&format!("iteration {}", it + 1));
    }
    out.mismatches += cpu_verify(&buf, 0, buf.len(), |i| model[i]);
    out.bytes_verified += buf.len() as u64;
    Ok(out)
}
