//! One replay of a trace on real memory: an instance with the recorded GPUs, XNACK mode
//! and granularity, and the VRAM and policy asked for; the buffers and queues made first,
//! then every recorded thread's records in order on a thread of its own, kernels through
//! queues doing the recorded loads and stores. Data content does not matter, sizes and
//! order do. The figures come from the event record, as `usvm run`'s summary's do.

use super::capture::to_attr;
use super::format::{AttrRec, Op, Span, Trace};
use crate::record::{Live, Recorder};
use crate::summary::{self, Outcome, Settings};
use crate::why::FindingRec;
use crate::workload::CHUNK;
use anyhow::{Context, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use usvm::{Fence, GpuId, KernelCtx, Policy, Queue, Svm, SvmBuffer};

/// How long a thread waits for a kernel another thread has not launched yet.
const LAUNCH_WAIT: Duration = Duration::from_secs(120);

/// One load or store of a kernel.
#[derive(Clone, Copy, Debug)]
struct Access {
    span: Span,
    write: bool,
}

/// What a CPU thread does, in order.
#[derive(Clone, Debug)]
enum Step {
    SetAttr(Span, Vec<AttrRec>),
    Cpu(Span, bool),
    Launch(u32),
    Wait(u32),
}

/// A trace arranged for replay.
pub struct Plan {
    /// The trace's header values the instance is built from.
    gpus: usize,
    xnack: bool,
    granularity: u8,
    bufs: Vec<u64>,
    /// The GPU index of each queue.
    queues: Vec<u32>,
    /// Each kernel's queue and accesses.
    kernels: Vec<(u32, Arc<Vec<Access>>)>,
    threads: Vec<Vec<Step>>,
    /// Bytes the trace's CPU and GPU accesses touch.
    pub bytes_accessed: u64,
}

impl Plan {
    /// Arranges a (decoded, hence consistent) trace.
    pub fn of(t: &Trace) -> Plan {
        let h = &t.header;
        let mut p = Plan {
            gpus: h.gpus as usize,
            xnack: h.xnack,
            granularity: h.granularity,
            bufs: Vec::new(),
            queues: Vec::new(),
            kernels: Vec::new(),
            threads: Vec::new(),
            bytes_accessed: 0,
        };
        let mut accesses: Vec<Vec<Access>> = Vec::new();
        for r in &t.recs {
            let th = r.thread as usize;
            let step = match &r.op {
                Op::Alloc { len, .. } => {
                    p.bufs.push(*len);
                    None
                }
                Op::Queue { gpu, .. } => {
                    p.queues.push(*gpu);
                    None
                }
                Op::SetAttr { span, attrs } => Some(Step::SetAttr(*span, attrs.clone())),
                Op::Cpu { span, write } => {
                    p.bytes_accessed += span.len;
                    Some(Step::Cpu(*span, *write))
                }
                Op::Launch { kernel, queue } => {
                    p.kernels.push((*queue, Arc::default()));
                    accesses.push(Vec::new());
                    Some(Step::Launch(*kernel))
                }
                Op::Gpu { kernel, span, write } => {
                    p.bytes_accessed += span.len;
                    accesses[*kernel as usize].push(Access { span: *span, write: *write });
                    None
                }
                Op::KernelEnd { .. } => None,
                Op::Wait { kernel } => Some(Step::Wait(*kernel)),
            };
            if let Some(s) = step {
                if p.threads.len() <= th {
                    p.threads.resize(th + 1, Vec::new());
                }
                p.threads[th].push(s);
            }
        }
        for (k, a) in p.kernels.iter_mut().zip(accesses) {
            k.1 = Arc::new(a);
        }
        p
    }

    /// CPU threads the replay runs.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// What one replay measured.
#[derive(Clone, Debug)]
pub struct Played {
    /// The policy.
    pub policy: Policy,
    /// VRAM per GPU (bytes).
    pub vram: u64,
    /// Wall time of the replay (seconds; buffers and queues made before the clock started).
    pub wall_s: f64,
    /// GPU retry faults.
    pub gpu_faults: u64,
    /// CPU faults that brought data back from VRAM.
    pub cpu_faults: u64,
    /// Bytes migrated to VRAM.
    pub to_vram: u64,
    /// Bytes migrated to system memory.
    pub to_ram: u64,
    /// Of those, bytes evicted from VRAM to make room.
    pub evicted: u64,
    /// Calls and kernels that failed (SET_ATTR errors, fatal GPU faults).
    pub errors: u64,
    /// What `Svm::diagnose` found, worst first.
    pub findings: Vec<FindingRec>,
}

/// Kernels' fences by number, filled at launch, taken by the wait.
struct Fences {
    slots: Mutex<Vec<Option<Fence>>>,
    filled: Condvar,
}

impl Fences {
    fn put(&self, k: u32, f: Fence) {
        self.slots.lock()[k as usize] = Some(f);
        self.filled.notify_all();
    }

    fn take(&self, k: u32) -> Option<Fence> {
        let deadline = Instant::now() + LAUNCH_WAIT;
        let mut s = self.slots.lock();
        loop {
            if let Some(f) = s[k as usize].take() {
                return Some(f);
            }
            if self.filled.wait_until(&mut s, deadline).timed_out() {
                return None;
            }
        }
    }
}

/// The instance's memory and queues for a replay (dropped in this order: the queues and
/// buffers before the instance).
struct World {
    queues: Vec<Queue>,
    fences: Fences,
    bufs: Vec<SvmBuffer>,
    bases: Arc<Vec<usize>>,
    gpus: Vec<GpuId>,
    errors: AtomicU64,
    svm: Arc<Svm>,
}

impl World {
    fn new(p: &Plan, policy: Policy, vram: u64) -> Result<World> {
        let svm = Svm::builder()
            .gpus(p.gpus)
            .vram_bytes(vram)
            .xnack(p.xnack)
            .default_granularity(p.granularity)
            .policy(policy)
            .build()
            .context("cannot build the emulated GPUs")?;
        let gpus = svm.gpu_ids();
        let bufs = p
            .bufs
            .iter()
            .map(|&l| svm.alloc(l as usize).with_context(|| format!("allocating {}", crate::units::bytes(l))))
            .collect::<Result<Vec<_>>>()?;
        let bases = Arc::new(bufs.iter().map(|b| b.addr()).collect());
        let queues = p
            .queues
            .iter()
            .map(|&g| svm.create_queue(gpus[g as usize]).context("creating a queue"))
            .collect::<Result<Vec<_>>>()?;
        let fences = Fences { slots: Mutex::new(vec![None; p.kernels.len()]), filled: Condvar::new() };
        Ok(World { svm: Arc::new(svm), gpus, bufs, bases, queues, fences, errors: AtomicU64::new(0) })
    }

    fn failed<T, E>(&self, r: std::result::Result<T, E>) {
        if r.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs one thread's steps.
    fn thread(&self, p: &Plan, steps: &[Step]) {
        let mut scratch = Vec::new();
        for s in steps {
            match s {
                Step::SetAttr(span, attrs) => {
                    let attrs: Vec<_> = attrs.iter().map(|&a| to_attr(&self.gpus, a)).collect();
                    let addr = self.bases[span.buf as usize] + span.off as usize;
                    self.failed(self.svm.set_attr(addr, span.len as usize, &attrs));
                }
                Step::Cpu(span, write) => {
                    let b = &self.bufs[span.buf as usize];
                    chunks(
                        &mut scratch,
                        span,
                        |at, c| if *write { b.write_at(at, c) } else { b.read_at(at, c) },
                    );
                }
                Step::Launch(k) => {
                    let (q, acc) = &p.kernels[*k as usize];
                    let f = self.queues[*q as usize].submit(kernel(self.bases.clone(), acc.clone()));
                    self.fences.put(*k, f);
                }
                Step::Wait(k) => match self.fences.take(*k) {
                    Some(f) => self.failed(f.wait()),
                    None => self.failed(Err::<(), ()>(())),
                },
            }
        }
    }
}

/// Calls `f(offset, chunk)` over `span` a chunk of at most [`CHUNK`] bytes at a time.
fn chunks(scratch: &mut Vec<u8>, span: &Span, mut f: impl FnMut(usize, &mut [u8])) {
    let (mut at, end) = (span.off as usize, (span.off + span.len) as usize);
    while at < end {
        let n = CHUNK.min(end - at);
        if scratch.len() < n {
            scratch.resize(n, 0);
        }
        f(at, &mut scratch[..n]);
        at += n;
    }
}

/// A kernel doing `acc`'s loads and stores; the first failure ends it, as it ended the
/// recorded one.
fn kernel(
    bases: Arc<Vec<usize>>,
    acc: Arc<Vec<Access>>,
) -> impl FnOnce(&mut KernelCtx) -> usvm::Result<()> + Send + 'static {
    move |k| {
        let mut scratch = Vec::new();
        let mut r = Ok(());
        for a in acc.iter() {
            let base = bases[a.span.buf as usize];
            chunks(&mut scratch, &a.span, |at, c| {
                if r.is_ok() {
                    r = if a.write { k.write(base + at, c) } else { k.read(base + at, c) };
                }
            });
            r.clone()?;
        }
        Ok(())
    }
}

/// Replays the plan once on an instance with `vram` bytes per GPU under `policy`.
pub fn play(p: &Plan, policy: Policy, vram: u64) -> Result<Played> {
    let w = World::new(p, policy, vram)?;
    let rec = Recorder::start(w.svm.clone(), false, false, Live::Off, |_, _| {})?;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for steps in &p.threads {
            let w = &w;
            s.spawn(move || w.thread(p, steps));
        }
    });
    // Kernels nobody waited for (the recording ended first) end before the clock stops.
    for k in 0..p.kernels.len() {
        if let Some(f) = w.fences.slots.lock()[k].take() {
            w.failed(f.wait());
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let record = rec.finish();
    let ranges = w.svm.ranges();
    let s = summary::summarize("replay", Settings::default(), Outcome::default(), &record, &w.svm, &ranges);
    let findings = w.svm.diagnose().iter().map(FindingRec::of).collect();
    Ok(Played {
        policy,
        vram,
        wall_s,
        gpu_faults: s.total.gpu_faults,
        cpu_faults: s.total.cpu_faults,
        to_vram: s.total.h2d.total.bytes,
        to_ram: s.total.d2h.total.bytes,
        evicted: s.total.d2h.eviction.bytes,
        errors: w.errors.load(Ordering::Relaxed),
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::format::{Header, Place, Rec};

    /// Two CPU threads: the second waits for a kernel the first launched, then reads what
    /// the kernel wrote into the buffer it allocated itself, and prefetches the first
    /// thread's buffer back to RAM.
    #[test]
    fn threads_replay_side_by_side_and_wait_for_each_other() {
        let h = Header {
            workload: "synthetic".into(),
            gpus: 1,
            vram: 8 << 20,
            xnack: true,
            granularity: 9,
            policy: "kernel".into(),
            size: 4 << 20,
            iterations: 1,
            seed: 1,
            fix: false,
        };
        let span = |buf, len| Span { buf, off: 0, len };
        let r = |thread, op| Rec { thread, at_ns: 0, dur_ns: 0, op };
        let recs = vec![
            r(0, Op::Alloc { buf: 0, len: 2 << 20 }),
            r(0, Op::Queue { queue: 0, gpu: 0 }),
            r(1, Op::Alloc { buf: 1, len: 2 << 20 }),
            r(0, Op::Cpu { span: span(0, 2 << 20), write: true }),
            r(0, Op::Launch { kernel: 0, queue: 0 }),
            r(0, Op::Gpu { kernel: 0, span: span(0, 2 << 20), write: false }),
            r(0, Op::Gpu { kernel: 0, span: span(1, 1 << 20), write: true }),
            r(0, Op::KernelEnd { kernel: 0 }),
            r(1, Op::Wait { kernel: 0 }),
            r(1, Op::Cpu { span: span(1, 2 << 20), write: false }),
            // After its wait: the kernel has faulted buffer 0 in by then (thread 0 goes on
            // without waiting, so a prefetch there could run before the kernel's faults).
            r(1, Op::SetAttr { span: span(0, 2 << 20), attrs: vec![AttrRec::PrefetchLoc(Place::Sysmem)] }),
        ];
        let plan = Plan::of(&Trace { header: h, recs });
        assert_eq!((plan.threads(), plan.bytes_accessed), (2, 7 << 20));
        let p = play(&plan, Policy::Kernel, 8 << 20).unwrap();
        assert_eq!(p.errors, 0, "{p:?}");
        assert!(p.gpu_faults >= 2 && p.to_vram >= 4 << 20, "both buffers faulted in: {p:?}");
        assert!(p.to_ram >= 4 << 20, "the prefetch and the CPU read brought them back: {p:?}");
    }
}
