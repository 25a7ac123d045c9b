//! Built-in workloads for `usvm run`: small programs that use shared virtual memory the way
//! real applications do, and check every byte they wrote at the end.
//!
//! Each workload gets a [`Ctx`] (the instance, the settings, queues that record their
//! kernels for the trace, a progress bar) and returns an [`Outcome`]: operations done,
//! bytes verified and mismatches. Device kernels touch memory only through
//! [`K`] loads and stores (the library's `KernelCtx`, recorded with `--record`), so with
//! XNACK on every first touch is a GPU fault.

mod early_prefetch;
mod finegrain;
mod handoff;
mod oversub;
mod pingpong;
mod random;
mod seam;
mod stencil;
mod stream;
mod stress;

pub use seam::{Buf, K, Launched};

use crate::record::{KernelLog, KernelSpan};
use crate::replay::Capture;
use crate::summary::Outcome;
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::sync::Arc;
use usvm::{Attr, GpuId, Location, Queue, Svm};

/// Bytes a kernel or the CPU moves per load or store call.
pub const CHUNK: usize = 1 << 20;

/// The built-in workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// CPU writes a buffer, GPU kernels read and transform it, the CPU reads it back.
    Stream,
    /// A 2-D stencil split over the GPUs (2 or more), with halo rows exchanged through a
    /// shared buffer in system memory.
    Stencil,
    /// Random increments from the GPUs and the CPU, 90% of them in a 10% hot set.
    Random,
    /// GPU sweeps over a working set 1.5 times the VRAM (evictions; with XNACK on, faults
    /// bring evicted data back). --fix: the part that fits PREFERRED_LOC on the GPU, the
    /// rest PREFERRED_LOC system memory (accessed in place).
    Oversub,
    /// CPU and GPU take turns incrementing the same pages.
    Pingpong,
    /// One GPU and the CPU hand each 2 MiB block back and forth: the GPU updates it, the
    /// CPU checks and updates it (with XNACK on, a ping-pong). --fix: ACCESS_IN_PLACE for
    /// the GPU.
    Handoff,
    /// The input of a kernel is prefetched early, then scratch work fills the VRAM and
    /// evicts it before the kernel runs (a wasted prefetch). --fix: prefetch right before
    /// the kernel.
    EarlyPrefetch,
    /// A GPU writes a buffer of GRANULARITY 0, the CPU streams through it: a fault per
    /// 4 KiB page (a fault storm). --fix: GRANULARITY 9.
    Finegrain,
    /// Everything at once for --seconds: CPU threads, kernels on every GPU, prefetches,
    /// attribute changes, munmap / mmap and MADV_DONTNEED, oversubscribed VRAM.
    Stress,
}

impl Workload {
    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Stream => "stream",
            Workload::Stencil => "stencil",
            Workload::Random => "random",
            Workload::Oversub => "oversub",
            Workload::Pingpong => "pingpong",
            Workload::Handoff => "handoff",
            Workload::EarlyPrefetch => "early-prefetch",
            Workload::Finegrain => "finegrain",
            Workload::Stress => "stress",
        }
    }

    /// Whether `--fix` (follow the advice of the workload's finding) applies.
    pub fn has_fix(self) -> bool {
        matches!(self, Workload::Oversub | Workload::Handoff | Workload::EarlyPrefetch | Workload::Finegrain)
    }

    /// The names of the workloads `--fix` applies to.
    pub fn with_fix() -> Vec<&'static str> {
        use clap::ValueEnum;
        Workload::value_variants().iter().filter(|w| w.has_fix()).map(|w| w.name()).collect()
    }

    /// Iterations when the user gives none.
    pub fn default_iterations(self) -> u64 {
        match self {
            Workload::Stream => 4,
            Workload::Stencil => 8,
            Workload::Random => 8,
            Workload::Oversub => 3,
            Workload::Pingpong => 16,
            Workload::Handoff => 16,
            Workload::EarlyPrefetch => 8,
            Workload::Finegrain => 4,
            Workload::Stress => 1,
        }
    }

    /// The working set when the user gives none (`vram`: VRAM per GPU, `gpus`: GPUs).
    pub fn default_size(self, vram: u64, gpus: usize) -> u64 {
        match self {
            // 1.5x the VRAM of all GPUs together, in 2 MiB steps.
            Workload::Oversub | Workload::Stress => (vram * gpus as u64 * 3 / 2).next_multiple_of(2 << 20),
            Workload::Pingpong | Workload::Handoff => 8 << 20,
            // A quarter of one GPU's VRAM (the scratch work takes all of it).
            Workload::EarlyPrefetch => (vram / 4).next_multiple_of(2 << 20),
            Workload::Finegrain => 32 << 20,
            _ => 64 << 20,
        }
    }

    /// Runs the workload.
    pub fn run(self, ctx: &mut Ctx) -> Result<Outcome> {
        match self {
            Workload::Stream => stream::run(ctx),
            Workload::Stencil => stencil::run(ctx),
            Workload::Random => random::run(ctx),
            Workload::Oversub => oversub::run(ctx),
            Workload::Pingpong => pingpong::run(ctx),
            Workload::Handoff => handoff::run(ctx),
            Workload::EarlyPrefetch => early_prefetch::run(ctx),
            Workload::Finegrain => finegrain::run(ctx),
            Workload::Stress => stress::run(ctx),
        }
    }
}

/// What runs half way through a workload (the `--smi` snapshot).
pub type HalfWay = Box<dyn FnMut(&Svm)>;

/// What a workload runs with.
pub struct Ctx {
    /// The instance.
    pub svm: Arc<Svm>,
    /// The GPUs, in index order.
    pub gpus: Vec<GpuId>,
    /// XNACK mode of the instance.
    pub xnack: bool,
    /// Working-set size in bytes.
    pub size: usize,
    /// Iterations.
    pub iterations: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// How long a time-bounded workload (stress) runs.
    pub seconds: u64,
    /// Follow the advice of the workload's finding (`--fix`).
    pub fix: bool,
    /// Where `--record` writes what the workload does (off without it).
    pub capture: Capture,
    log: KernelLog,
    progress: ProgressBar,
    on_half: Option<HalfWay>,
    /// Every buffer of the run, kept alive until the summary has seen the final ranges.
    buffers: Vec<Buf>,
    /// Other memory kept alive as long (regions the workload mapped itself).
    kept: Vec<Box<dyn std::any::Any>>,
}

/// A queue of one GPU that records its kernels' spans (and, with `--record`, the kernels).
pub struct Q {
    queue: Queue,
    /// The GPU.
    pub gpu: GpuId,
    /// The queue's number on its GPU.
    pub no: usize,
    log: KernelLog,
    /// The queue's number in the recording.
    id: u32,
    cap: Capture,
}

impl Q {
    /// Submits a kernel named `name`; its span goes to the record.
    pub fn launch<F>(&self, name: &'static str, kernel: F) -> Launched
    where
        F: for<'a> FnOnce(&mut K<'a>) -> usvm::Result<()> + Send + 'static,
    {
        let (log, gpu, queue, cap) = (self.log.clone(), self.gpu, self.no, self.cap.clone());
        let id = cap.launch(self.id);
        let c = cap.clone();
        let fence = self.queue.submit(move |k| {
            let start_ns = usvm::clock_ns();
            let r = kernel(&mut K::new(k, &c, id));
            let end_ns = usvm::clock_ns();
            log.push(KernelSpan { gpu, queue, name, start_ns, end_ns });
            c.kernel_end(id, start_ns);
            r
        });
        Launched::new(fence, id, cap)
    }
}

impl Ctx {
    /// A context for a run.
    pub fn new(
        svm: Arc<Svm>,
        size: usize,
        iterations: u64,
        seed: u64,
        log: KernelLog,
        progress: ProgressBar,
        on_half: Option<HalfWay>,
    ) -> Self {
        Ctx {
            gpus: svm.gpu_ids(),
            xnack: svm.xnack(),
            svm,
            size,
            iterations,
            seed,
            seconds: 10,
            fix: false,
            capture: Capture::off(),
            log,
            progress,
            on_half,
            buffers: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// One queue per GPU, in GPU order.
    pub fn queues(&self) -> Result<Vec<Q>> {
        (0..self.gpus.len()).map(|i| self.queue(i)).collect()
    }

    /// A queue on the GPU with index `i`.
    pub fn queue(&self, i: usize) -> Result<Q> {
        let g = *self.gpus.get(i).with_context(|| format!("no GPU {i}"))?;
        let t = self.capture.now();
        let queue = self.svm.create_queue(g).with_context(|| format!("creating a queue on GPU {g}"))?;
        let id = self.capture.queue(g, t);
        Ok(Q { queue, gpu: g, no: 0, log: self.log.clone(), id, cap: self.capture.clone() })
    }

    /// Sets the progress bar's length (the number of steps the workload will report).
    pub fn steps(&self, n: u64) {
        self.progress.set_length(n);
    }

    /// One step done; at the half-way step, the `--smi` snapshot is printed.
    pub fn step(&mut self, msg: &str) {
        self.progress.inc(1);
        self.progress.set_message(msg.to_string());
        let len = self.progress.length().unwrap_or(0);
        if self.progress.position() == len.div_ceil(2)
            && let Some(f) = self.on_half.as_mut()
        {
            let svm = self.svm.clone();
            self.progress.suspend(|| f(&svm));
        }
    }

    /// Allocates a buffer of `len` bytes and gives it `attrs`. It lives until the run's
    /// summary is done (so that the summary sees its ranges).
    pub fn buffer(&mut self, len: usize, attrs: &[Attr]) -> Result<Buf> {
        let t = self.capture.now();
        let b =
            self.svm.alloc(len).with_context(|| format!("allocating {}", crate::units::bytes(len as u64)))?;
        let id = self.capture.alloc(b.addr(), b.len(), t);
        let b = Buf::new(b, id, self.capture.clone());
        if !attrs.is_empty() {
            self.set_attr(b.addr(), b.len(), attrs).context("SET_ATTR on a new buffer")?;
        }
        self.buffers.push(b.clone());
        Ok(b)
    }

    /// SET_ATTR on `[addr, addr + len)` (recorded with `--record`).
    pub fn set_attr(&self, addr: usize, len: usize, attrs: &[Attr]) -> usvm::Result<()> {
        let t = self.capture.now();
        let r = self.svm.set_attr(addr, len, attrs);
        self.capture.set_attr(addr, len, attrs, t);
        r
    }

    /// The initial value of word `i` of a workload's buffer, for this run's seed.
    pub fn initial(&self) -> impl Fn(usize) -> u64 + Copy + Send + 'static {
        let seed = self.seed;
        move |i: usize| mix(seed ^ i as u64) >> 8
    }

    /// A buffer of the working-set size with `attrs`, every word written by the CPU with
    /// its [`Ctx::initial`] value.
    pub fn filled_buffer(&mut self, attrs: &[Attr]) -> Result<Buf> {
        let buf = self.buffer(self.size, attrs)?;
        cpu_write(&buf, 0, buf.len(), self.initial());
        Ok(buf)
    }

    /// Splits `buf` into one part per GPU (whole 2 MiB blocks) and gives each part ACCESS
    /// for its GPU only, as an application that partitions its data does (a range that
    /// several GPUs map outside a hive cannot be prefetched to one of them).
    pub fn partition(&self, buf: &Buf) -> Result<Vec<(usize, usize)>> {
        let parts = split(buf.len(), self.gpus.len());
        for (&(off, len), &g) in parts.iter().zip(&self.gpus) {
            self.set_attr(buf.addr() + off, len, &[Attr::Access(g)]).context("SET_ATTR ACCESS")?;
        }
        Ok(parts)
    }

    /// The workload's buffers: (first byte, bytes), in allocation order.
    pub fn buffer_spans(&self) -> Vec<(usize, usize)> {
        self.buffers.iter().map(|b| (b.addr(), b.len())).collect()
    }

    /// Keeps `t` alive until the run's summary is done.
    pub fn keep<T: 'static>(&mut self, t: T) {
        self.kept.push(Box::new(t));
    }

    /// ACCESS for every GPU.
    pub fn access_all(&self) -> Vec<Attr> {
        self.gpus.iter().map(|&g| Attr::Access(g)).collect()
    }

    /// What an application does before a kernel on `g` touches `[addr, addr + len)`:
    /// nothing with XNACK on (GPU faults bring the data), a prefetch with XNACK off.
    pub fn before_kernel(&self, addr: usize, len: usize, g: GpuId) -> Result<()> {
        if !self.xnack {
            self.set_attr(addr, len, &[Attr::PrefetchLoc(Location::Gpu(g))])
                .context("prefetch to the GPU")?;
        }
        Ok(())
    }
}

/// A well-mixed 64-bit value of `x` (splitmix64's finaliser).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic random generator (xorshift64*), seeded through [`mix`].
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(mix(seed) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// The words of a byte slice (little endian).
pub fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}

/// Fills `out` with the words `f(first), f(first + 1), ...`.
pub fn fill_words(out: &mut [u8], first: usize, f: impl Fn(usize) -> u64) {
    for (k, c) in out.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&f(first + k).to_le_bytes());
    }
}

/// CPU: writes the words `f(i)` of `[off, off + len)` of `buf`, a chunk at a time.
pub fn cpu_write(buf: &Buf, off: usize, len: usize, f: impl Fn(usize) -> u64) {
    let mut chunk = vec![0u8; CHUNK.min(len)];
    let mut at = off;
    while at < off + len {
        let n = CHUNK.min(off + len - at);
        fill_words(&mut chunk[..n], at / 8, &f);
        buf.write_at(at, &chunk[..n]);
        at += n;
    }
}

/// CPU: compares the words of `[off, off + len)` of `buf` with `f(i)`; returns the
/// mismatching words (the first few are printed).
pub fn cpu_verify(buf: &Buf, off: usize, len: usize, f: impl Fn(usize) -> u64) -> u64 {
    let mut chunk = vec![0u8; CHUNK.min(len)];
    let mut bad = 0;
    let mut at = off;
    while at < off + len {
        let n = CHUNK.min(off + len - at);
        buf.read_at(at, &mut chunk[..n]);
        for (k, w) in words(&chunk[..n]).enumerate() {
            let i = at / 8 + k;
            if w != f(i) {
                if bad < 3 {
                    tracing::error!("word {i}: read {w:#x}, expected {:#x}", f(i));
                }
                bad += 1;
            }
        }
        at += n;
    }
    bad
}

/// CPU: applies `f(i, w)` to each word `w` of `[off, off + len)` of `buf`.
pub fn cpu_update(buf: &Buf, off: usize, len: usize, f: impl Fn(usize, u64) -> u64) {
    let mut chunk = vec![0u8; CHUNK.min(len)];
    let mut at = off;
    while at < off + len {
        let n = CHUNK.min(off + len - at);
        buf.read_at(at, &mut chunk[..n]);
        for (k, c) in chunk[..n].chunks_exact_mut(8).enumerate() {
            let w = u64::from_le_bytes((&*c).try_into().expect("8 bytes"));
            c.copy_from_slice(&f(at / 8 + k, w).to_le_bytes());
        }
        buf.write_at(at, &chunk[..n]);
        at += n;
    }
}

/// GPU: applies `f(i, w)` to each word of `[addr, addr + len)` (word `i` counted from
/// `base`), a chunk at a time, through the kernel's loads and stores.
pub fn gpu_update(
    k: &mut K,
    base: usize,
    addr: usize,
    len: usize,
    f: impl Fn(usize, u64) -> u64,
) -> usvm::Result<()> {
    let mut chunk = vec![0u8; CHUNK.min(len)];
    let mut at = addr;
    while at < addr + len {
        let n = CHUNK.min(addr + len - at);
        k.read(at, &mut chunk[..n])?;
        for (j, c) in chunk[..n].chunks_exact_mut(8).enumerate() {
            let w = u64::from_le_bytes((&*c).try_into().expect("8 bytes"));
            c.copy_from_slice(&f((at - base) / 8 + j, w).to_le_bytes());
        }
        k.write(at, &chunk[..n])?;
        at += n;
    }
    Ok(())
}

/// Waits for every fence; the first error wins.
pub fn wait_all(fences: Vec<Launched>) -> Result<()> {
    let mut first = None;
    for f in fences {
        if let Err(e) = f.wait() {
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) => Err(anyhow::Error::new(e).context("a GPU kernel failed")),
        None => Ok(()),
    }
}

/// Splits `len` bytes into `n` parts of whole 2 MiB blocks (the last part takes the rest);
/// returns (offset, length) pairs.
pub fn split(len: usize, n: usize) -> Vec<(usize, usize)> {
    let block = 2 << 20;
    let per = (len / n / block).max(1) * block;
    (0..n)
        .map(|i| {
            let off = (i * per).min(len);
            let end = if i + 1 == n { len } else { ((i + 1) * per).min(len) };
            (off, end - off)
        })
        .filter(|&(_, l)| l > 0)
        .collect()
}
