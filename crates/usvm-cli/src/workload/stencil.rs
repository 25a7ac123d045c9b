//! `stencil`: a 2-D five-point stencil on a grid of `u32` cells split into slabs of rows,
//! one slab per GPU (2 or more), double buffered. Each slab prefers its GPU's VRAM; the
//! boundary rows travel through a small halo buffer in system memory that every GPU maps
//! in place: each iteration a GPU reads its neighbours' halo rows of the previous
//! iteration, updates its slab and publishes its own new boundary rows. At the end the
//! CPU compares the grid with the same computation done on plain memory.

use super::K;
use super::{Ctx, wait_all};
use crate::summary::Outcome;
use crate::units::bytes;
use anyhow::{Result, bail};
use usvm::{Attr, Location};

/// Cells per row (one 4 KiB page per row).
const COLS: usize = 1024;
const ROW_BYTES: usize = COLS * 4;
/// Slabs are whole 2 MiB blocks of rows, so each is a range of its own.
const SLAB_ROWS: usize = (2 << 20) / ROW_BYTES;

/// One step of the stencil over `rows` (a whole number of rows), given the row above and
/// the row below: up + down + left + right + 2 * centre, wrapping, zero outside.
fn step(up: &[u32], rows: &[u32], down: &[u32]) -> Vec<u32> {
    let n = rows.len() / COLS;
    let mut out = vec![0u32; rows.len()];
    for r in 0..n {
        let row = &rows[r * COLS..(r + 1) * COLS];
        let above = if r == 0 { up } else { &rows[(r - 1) * COLS..r * COLS] };
        let below = if r + 1 == n { down } else { &rows[(r + 1) * COLS..(r + 2) * COLS] };
        for c in 0..COLS {
            let left = if c == 0 { 0 } else { row[c - 1] };
            let right = if c + 1 == COLS { 0 } else { row[c + 1] };
            out[r * COLS + c] = above[c]
                .wrapping_add(below[c])
                .wrapping_add(left)
                .wrapping_add(right)
                .wrapping_add(row[c].wrapping_mul(2));
        }
    }
    out
}

fn to_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

fn gpu_read_cells(k: &mut K, addr: usize, cells: usize) -> usvm::Result<Vec<u32>> {
    let mut b = vec![0u8; cells * 4];
    for (i, c) in b.chunks_mut(super::CHUNK).enumerate() {
        k.read(addr + i * super::CHUNK, c)?;
    }
    Ok(from_bytes(&b))
}

fn gpu_write_cells(k: &mut K, addr: usize, cells: &[u32]) -> usvm::Result<()> {
    let b = to_bytes(cells);
    for (i, c) in b.chunks(super::CHUNK).enumerate() {
        k.write(addr + i * super::CHUNK, c)?;
    }
    Ok(())
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let n = ctx.gpus.len();
    if n < 2 {
        bail!("the stencil workload needs at least 2 GPUs (--gpus 2)");
    }
    let grid_bytes = ctx.size / 2 / (2 << 20) * (2 << 20);
    let rows = grid_bytes / ROW_BYTES;
    if rows < n * SLAB_ROWS {
        bail!("the stencil workload needs --size of at least {} for {n} GPUs", bytes((4 * n as u64) << 20));
    }
    // Slab g: rows [first[g], first[g + 1]).
    let per = rows / n / SLAB_ROWS * SLAB_ROWS;
    let first: Vec<usize> = (0..n).map(|g| g * per).chain([rows]).collect();
    let grids = [ctx.buffer(grid_bytes, &[])?, ctx.buffer(grid_bytes, &[])?];
    for grid in &grids {
        for (g, &gpu) in ctx.gpus.iter().enumerate() {
            let (a, b) = (first[g] * ROW_BYTES, first[g + 1] * ROW_BYTES);
            ctx.set_attr(
                grid.addr() + a,
                b - a,
                &[Attr::PreferredLoc(Location::Gpu(gpu)), Attr::Access(gpu)],
            )?;
        }
    }
    // Halo rows: [buffer 0/1][gpu][top/bottom].
    let halo_at = |hb: usize, g: usize, which: usize| ((hb * n + g) * 2 + which) * ROW_BYTES;
    let mut halo_attrs = ctx.access_all();
    halo_attrs.push(Attr::PreferredLoc(Location::Sysmem));
    let halo = ctx.buffer(halo_at(2, 0, 0), &halo_attrs)?;
    // The initial grid, and the halo rows of iteration 0.
    let seed = ctx.seed;
    let mut reference: Vec<u32> = (0..rows * COLS).map(|i| super::mix(seed ^ i as u64) as u32).collect();
    grids[0].write_at(0, &to_bytes(&reference));
    for g in 0..n {
        let (r0, r1) = (first[g], first[g + 1]);
        halo.write_at(halo_at(0, g, 0), &to_bytes(&reference[r0 * COLS..(r0 + 1) * COLS]));
        halo.write_at(halo_at(0, g, 1), &to_bytes(&reference[(r1 - 1) * COLS..r1 * COLS]));
    }
    let queues = ctx.queues()?;
    if !ctx.xnack {
        for (g, q) in queues.iter().enumerate() {
            for grid in &grids {
                let (a, b) = (first[g] * ROW_BYTES, first[g + 1] * ROW_BYTES);
                ctx.before_kernel(grid.addr() + a, b - a, q.gpu)?;
            }
        }
    }
    let mut out = Outcome::default();
    ctx.steps(ctx.iterations);
    for it in 0..ctx.iterations as usize {
        let (src, dst) = (grids[it % 2].addr(), grids[(it + 1) % 2].addr());
        let (hcur, hnext) = (it % 2, (it + 1) % 2);
        let mut fences = Vec::new();
        for (g, q) in queues.iter().enumerate() {
            let (r0, r1) = (first[g], first[g + 1]);
            let h = halo.addr();
            let up_at = (g > 0).then(|| h + halo_at(hcur, g - 1, 1));
            let down_at = (g + 1 < n).then(|| h + halo_at(hcur, g + 1, 0));
            let (top_out, bottom_out) = (h + halo_at(hnext, g, 0), h + halo_at(hnext, g, 1));
            fences.push(q.launch("stencil", move |k| {
                let cells = gpu_read_cells(k, src + r0 * ROW_BYTES, (r1 - r0) * COLS)?;
                let up = match up_at {
                    Some(a) => gpu_read_cells(k, a, COLS)?,
                    None => vec![0; COLS],
                };
                let down = match down_at {
                    Some(a) => gpu_read_cells(k, a, COLS)?,
                    None => vec![0; COLS],
                };
                let new = step(&up, &cells, &down);
                gpu_write_cells(k, dst + r0 * ROW_BYTES, &new)?;
                gpu_write_cells(k, top_out, &new[..COLS])?;
                gpu_write_cells(k, bottom_out, &new[new.len() - COLS..])
            }));
            out.operations += ((r1 - r0) * COLS) as u64;
        }
        wait_all(fences)?;
        reference = step(&[0; COLS], &reference, &[0; COLS]);
        ctx.step(&format!("iteration {}", it + 1));
    }
    let result = &grids[ctx.iterations as usize % 2];
    let mut got = vec![0u8; grid_bytes];
    result.read_at(0, &mut got);
    let bad = from_bytes(&got).iter().zip(&reference).filter(|(a, b)| a != b).count();
    out.mismatches += bad as u64;
    out.bytes_verified += grid_bytes as u64;
    Ok(out)
}
