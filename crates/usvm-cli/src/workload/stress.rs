//! `stress`: everything at once, for `--seconds`: CPU threads and a kernel stream per GPU
//! increment their own words of a working set larger than the VRAM (every 2 MiB granule
//! is shared by all of them, every 64 KiB cell belongs to one), checking every value they
//! read, while a chaos thread prefetches parts to random places, changes granularity,
//! preferred location and access, and works a scratch region that it maps over and drops
//! parts of (as munmap / mmap and MADV_DONTNEED do), checking it against a byte model. At
//! the end every word of the working set is compared with its owner's count.

use super::{Ctx, Rng};
use crate::os::Region;
use crate::summary::Outcome;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use usvm::{Attr, GpuId, Location, Svm};

/// CPU actor threads.
const CPU_ACTORS: usize = 2;
/// Bytes of a cell (one actor's).
const CELL: usize = 64 << 10;
/// Bytes between an actor's words inside its cells.
const WORD_STRIDE: usize = 512;
/// The scratch region that is mapped over and dropped in parts.
const SCRATCH: usize = 8 << 20;
const MIB: usize = 1 << 20;

/// Byte offsets of actor `a`'s words in a working set of `len` bytes.
fn words_of(a: usize, actors: usize, len: usize) -> Vec<usize> {
    (0..len / CELL)
        .filter(|c| c % actors == a)
        .flat_map(|c| (0..CELL / WORD_STRIDE).map(move |k| c * CELL + k * WORD_STRIDE))
        .collect()
}

/// Shared tallies.
#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    verified: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn mismatch(&self, what: std::fmt::Arguments<'_>) {
        if self.mismatches.fetch_add(1, Ordering::Relaxed) < 5 {
            tracing::error!("stress: {what}");
        }
    }
}

/// Words an actor increments between two looks at the stop flag (one cell's worth).
const WORDS_PER_CHECK: usize = CELL / WORD_STRIDE;

/// A CPU actor: increments its words, checking each value read. It stops within one cell
/// of the stop flag being set, not at the end of a sweep (a sweep over a working set larger
/// than the VRAM can take seconds of faults).
fn cpu_actor(work: &Region, words: &[usize], stop: &AtomicBool, t: &Tally) -> Vec<u64> {
    let mut model = vec![0u64; words.len()];
    'run: while !stop.load(Ordering::Relaxed) {
        for (k, &off) in words.iter().enumerate() {
            if k % WORDS_PER_CHECK == 0 && k > 0 {
                t.ops.fetch_add(WORDS_PER_CHECK as u64, Ordering::Relaxed);
                t.verified.fetch_add(8 * WORDS_PER_CHECK as u64, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break 'run;
                }
            }
            let v = work.read_u64(off);
            if v != model[k] {
                t.mismatch(format_args!("CPU word {off:#x}: read {v}, expected {}", model[k]));
                model[k] = v;
            }
            work.write_u64(off, v + 1);
            model[k] += 1;
        }
        let tail = if words.is_empty() { 0 } else { (words.len() - 1) % WORDS_PER_CHECK + 1 };
        t.ops.fetch_add(tail as u64, Ordering::Relaxed);
        t.verified.fetch_add(8 * tail as u64, Ordering::Relaxed);
    }
    model
}

/// A GPU actor: kernels on queue `q` increment its words through the GPU's page table,
/// checking each value read. A kernel that fails part way tells how far it got; one that
/// sees the stop flag ends early the same way (one kernel over a working set larger than
/// the VRAM faults for seconds, up to half a minute: waiting for it made a 45 s run last
/// 70).
fn gpu_actor(
    q: &super::Q,
    base: usize,
    words: Arc<Vec<usize>>,
    stop: &Arc<AtomicBool>,
    t: &Arc<Tally>,
) -> Vec<u64> {
    let mut model = Arc::new(vec![0u64; words.len()]);
    while !stop.load(Ordering::Relaxed) {
        let done = Arc::new(AtomicUsize::new(0));
        let (w, m, d, tally, halt) = (words.clone(), model.clone(), done.clone(), t.clone(), stop.clone());
        let r = q
            .launch("stress", move |k| {
                for (i, &off) in w.iter().enumerate() {
                    if i % WORDS_PER_CHECK == 0 && halt.load(Ordering::Relaxed) {
                        break;
                    }
                    let v = k.read_u64(base + off)?;
                    if v != m[i] {
                        tally.mismatch(format_args!("GPU word {off:#x}: read {v}, expected {}", m[i]));
                    }
                    k.write_u64(base + off, m[i] + 1)?;
                    d.store(i + 1, Ordering::Release);
                }
                Ok(())
            })
            .wait();
        let n = done.load(Ordering::Acquire);
        let m = Arc::make_mut(&mut model);
        for x in &mut m[..n] {
            *x += 1;
        }
        if let Err(e) = r {
            t.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("stress: GPU kernel stopped after {n} words: {e}");
            std::thread::sleep(Duration::from_millis(1));
        }
        t.ops.fetch_add(n as u64, Ordering::Relaxed);
        t.verified.fetch_add(8 * n as u64, Ordering::Relaxed);
    }
    Arc::try_unwrap(model).unwrap_or_else(|m| (*m).clone())
}

/// The scratch region and its byte model (one byte per 4 KiB page is enough: the chaos
/// writes a page's byte all over the page).
struct Scratch {
    region: Region,
    model: Vec<u8>,
}

impl Scratch {
    fn fill_page(&mut self, p: usize, b: u8) {
        for w in 0..4096 / 8 {
            self.region.write_u64(p * 4096 + w * 8, u64::from_ne_bytes([b; 8]));
        }
        self.model[p] = b;
    }

    /// Compares every page's first and last word with the model.
    fn verify(&self, t: &Tally) {
        for (p, &b) in self.model.iter().enumerate() {
            let want = u64::from_ne_bytes([b; 8]);
            for off in [p * 4096, p * 4096 + 4088] {
                let v = self.region.read_u64(off);
                if v != want {
                    t.mismatch(format_args!("scratch page {p}: read {v:#x}, expected {want:#x}"));
                }
            }
        }
        t.verified.fetch_add(16 * self.model.len() as u64, Ordering::Relaxed);
    }
}

/// One chaos step.
fn chaos(
    svm: &Svm,
    gpus: &[GpuId],
    work: &Region,
    scratch: &mut Scratch,
    rng: &mut Rng,
    t: &Tally,
) -> Result<()> {
    let loc = |rng: &mut Rng| match rng.below(gpus.len() as u64 + 1) as usize {
        0 => Location::Sysmem,
        i => Location::Gpu(gpus[i - 1]),
    };
    let blocks = work.len() / (2 * MIB);
    let first = rng.below(blocks as u64) as usize;
    let n = 1 + rng.below(4.min(blocks - first) as u64) as usize;
    let (addr, len) = (work.addr() + first * 2 * MIB, n * 2 * MIB);
    let r = match rng.below(8) {
        0..=2 => svm.set_attr(addr, len, &[Attr::PrefetchLoc(loc(rng))]),
        3 => svm.set_attr(addr, len, &[Attr::Granularity([0, 4, 9][rng.below(3) as usize])]),
        4 => svm.set_attr(addr, len, &[Attr::PreferredLoc(loc(rng))]),
        5 => {
            let g = gpus[rng.below(gpus.len() as u64) as usize];
            let a = if rng.below(2) == 0 { Attr::Access(g) } else { Attr::AccessInPlace(g) };
            svm.set_attr(addr, len, &[a])
        }
        6 => {
            // The scratch region: new data in a few pages, then off to a GPU and back.
            let pages = scratch.model.len();
            for _ in 0..8 {
                let p = rng.below(pages as u64) as usize;
                let b = 1 + rng.below(255) as u8;
                scratch.fill_page(p, b);
            }
            let g = gpus[rng.below(gpus.len() as u64) as usize];
            let s = &scratch.region;
            svm.set_attr(s.addr(), s.len(), &[Attr::Access(g), Attr::PrefetchLoc(Location::Gpu(g))])
                .context("SET_ATTR on the scratch region")?;
            let p = rng.below(pages as u64) as usize;
            let mut v = [0u8; 8];
            match svm.gpu_read(g, s.addr() + p * 4096, &mut v) {
                Ok(()) if v != [scratch.model[p]; 8] => t.mismatch(format_args!(
                    "scratch page {p} through GPU {g}: {v:?}, expected {}",
                    scratch.model[p]
                )),
                Ok(()) => {}
                Err(e) => {
                    t.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("stress: scratch GPU read: {e}");
                }
            }
            t.verified.fetch_add(8, Ordering::Relaxed);
            Ok(())
        }
        _ => {
            // munmap + mmap (one MAP_FIXED) or MADV_DONTNEED of a part of the scratch region,
            // while its data may be in VRAM; the part reads zero afterwards.
            let pages = scratch.model.len();
            let p = rng.below(pages as u64) as usize;
            let k = 1 + rng.below((pages - p).min(600) as u64) as usize;
            if rng.below(2) == 0 {
                scratch.region.remap_zero(p * 4096, k * 4096)?;
                // The new memory is not SVM memory until SET_ATTR names it again.
                svm.set_attr(scratch.region.addr() + p * 4096, k * 4096, &[])
                    .context("SET_ATTR on remapped scratch memory")?;
            } else {
                scratch.region.discard(p * 4096, k * 4096)?;
            }
            scratch.model[p..p + k].fill(0);
            scratch.verify(t);
            Ok(())
        }
    };
    if let Err(e) = r {
        t.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("stress: chaos step: {e}");
    }
    t.ops.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Runs the stress workload for `ctx.seconds`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let size = ctx.size.next_multiple_of(2 * MIB).max(4 * MIB);
    let work = Region::new(size, 2 * MIB)?;
    let mut scratch = Scratch { region: Region::new(SCRATCH, 2 * MIB)?, model: vec![0; SCRATCH / 4096] };
    let svm = ctx.svm.clone();
    // Every GPU may touch every granule (with XNACK off they map it where it is).
    let all = ctx.access_all();
    svm.set_attr(work.addr(), work.len(), &all).context("SET_ATTR on the working set")?;
    svm.set_attr(scratch.region.addr(), SCRATCH, &[]).context("SET_ATTR on the scratch region")?;
    let queues = ctx.queues()?;
    let gpus = ctx.gpus.clone();
    let actors = CPU_ACTORS + queues.len();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let seconds = ctx.seconds.max(1);
    ctx.steps(seconds);
    let start = Instant::now();
    let mut rng = Rng::new(ctx.seed);
    let models: Vec<Vec<u64>> = std::thread::scope(|s| -> Result<Vec<Vec<u64>>> {
        let mut handles = Vec::new();
        for a in 0..CPU_ACTORS {
            let (work, stop, t) = (&work, &*stop, &tally);
            let words = words_of(a, actors, size);
            handles.push(s.spawn(move || cpu_actor(work, &words, stop, t)));
        }
        for (i, q) in queues.iter().enumerate() {
            let (stop, t, base) = (&stop, &tally, work.addr());
            let words = Arc::new(words_of(CPU_ACTORS + i, actors, size));
            handles.push(s.spawn(move || gpu_actor(q, base, words, stop, t)));
        }
        let mut shown = 0;
        let mut failure = None;
        while start.elapsed() < Duration::from_secs(seconds) {
            if let Err(e) = chaos(&svm, &gpus, &work, &mut scratch, &mut rng, &tally) {
                failure = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
            let secs = start.elapsed().as_secs();
            while shown < secs.min(seconds) {
                shown += 1;
                ctx.step(&format!("{} ops", tally.ops.load(Ordering::Relaxed)));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let models = handles.into_iter().map(|h| h.join().expect("actor thread")).collect();
        match failure {
            Some(e) => Err(e),
            None => Ok(models),
        }
    })?;
    // Every word of the working set: its owner's count, or zero.
    let mut expect = vec![0u64; size / 8];
    for (a, model) in models.iter().enumerate() {
        for (k, off) in words_of(a, actors, size).into_iter().enumerate() {
            expect[off / 8] = model[k];
        }
    }
    for (i, &want) in expect.iter().enumerate() {
        let v = work.read_u64(i * 8);
        if v != want {
            tally.mismatch(format_args!("final: word {:#x} holds {v}, expected {want}", i * 8));
        }
    }
    tally.verified.fetch_add(size as u64, Ordering::Relaxed);
    scratch.verify(&tally);
    let errors = tally.errors.load(Ordering::Relaxed);
    // Unmapped after the summary, while usvm still manages them: their ranges go too.
    ctx.keep(scratch);
    ctx.keep(work);
    Ok(Outcome {
        operations: tally.ops.load(Ordering::Relaxed),
        bytes_verified: tally.verified.load(Ordering::Relaxed),
        mismatches: tally.mismatches.load(Ordering::Relaxed),
        errors,
    })
}
