//! What a run leaves behind: every event of the instance, the spans of the kernels the
//! workload ran, and periodic samples of VRAM use and range residency. A collector thread
//! drains the event stream (printing it live with `--events`) and takes the samples; the
//! summary, the trace and the plots are all computed from this one record.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use usvm::{Event, Finding, GpuId, Location, Move, RangeInfo, Svm};

/// How often the collector samples VRAM use and residency.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How long the collector waits for an event when it does not sample (also how long
/// `finish` may wait for it).
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// One kernel's execution on a queue.
#[derive(Clone, Debug)]
pub struct KernelSpan {
    /// The GPU.
    pub gpu: GpuId,
    /// The queue's number on its GPU.
    pub queue: usize,
    /// What the kernel does.
    pub name: &'static str,
    /// Start and end, `clock_ns` nanoseconds.
    pub start_ns: u64,
    /// End.
    pub end_ns: u64,
}

/// A range's residency at one sample: the fraction of its pages in each GPU's VRAM.
#[derive(Clone, Debug)]
pub struct RangeSample {
    /// First byte address.
    pub start: usize,
    /// Size in bytes.
    pub size: usize,
    /// The GPU holding its VRAM pages (when any).
    pub gpu: Option<GpuId>,
    /// Pages in that GPU's VRAM.
    pub vram_pages: usize,
}

/// One sample of the instance's state.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When, `clock_ns` nanoseconds.
    pub ns: u64,
    /// VRAM in use per GPU (bytes), in GPU order.
    pub vram_used: Vec<u64>,
    /// Pages resident per GPU, in GPU order.
    pub resident_pages: Vec<u64>,
    /// The ranges (only when the heat map is wanted).
    pub ranges: Vec<RangeSample>,
}

/// Everything recorded during a run.
#[derive(Debug, Default)]
pub struct Record {
    /// When the run started, `clock_ns` nanoseconds.
    pub t0: u64,
    /// When it ended.
    pub t1: u64,
    /// The GPUs, in index order.
    pub gpus: Vec<GpuId>,
    /// Every event, in emission order.
    pub events: Vec<Event>,
    /// Every kernel span.
    pub kernels: Vec<KernelSpan>,
    /// The samples (empty unless sampling was asked for).
    pub samples: Vec<Sample>,
    /// Every movement of pages with its cause (`Svm::history`, the newest 65536), taken at
    /// the end of the run when a trace or the findings are wanted.
    pub moves: Vec<Move>,
    /// What `Svm::diagnose` found at the end of the run (when a trace or the findings are
    /// wanted).
    pub findings: Vec<Finding>,
    /// The ranges as the workload left them.
    pub end_ranges: Vec<RangeInfo>,
}

/// Where live events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Nowhere.
    Off,
    /// Standard output.
    Stdout,
    /// Standard error (when standard output carries JSON).
    Stderr,
}

/// A running recorder: a collector thread plus the kernel-span sink.
pub struct Recorder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<Event>, Vec<Sample>)>>,
    kernels: Arc<Mutex<Vec<KernelSpan>>>,
    t0: u64,
    gpus: Vec<GpuId>,
}

/// A handle that records kernel spans (cheap to clone into kernels).
#[derive(Clone)]
pub struct KernelLog(Arc<Mutex<Vec<KernelSpan>>>);

impl KernelLog {
    /// Records one finished kernel.
    pub fn push(&self, span: KernelSpan) {
        self.0.lock().push(span);
    }
}

impl Recorder {
    /// Starts recording `svm`'s events; samples every [`SAMPLE_EVERY`] when `sample` (and
    /// the ranges too when `ranges`); prints events as they come per `live`, through
    /// `print` (which keeps progress bars intact).
    pub fn start(
        svm: Arc<Svm>,
        sample: bool,
        ranges: bool,
        live: Live,
        print: impl Fn(Live, String) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stream = svm.subscribe();
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = usvm::clock_ns();
        let gpus = svm.gpu_ids();
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("usvm-record".into()).spawn(move || {
            let mut events = Vec::new();
            let mut samples = Vec::new();
            let mut next_sample = 0u64;
            loop {
                let done = s.load(Ordering::Acquire);
                let now = usvm::clock_ns();
                if sample && now >= next_sample {
                    samples.push(take_sample(&svm, ranges));
                    next_sample = now + SAMPLE_EVERY.as_nanos() as u64;
                }
                let wait = if sample { Duration::from_millis(1) } else { IDLE_WAIT };
                while let Some(ev) = stream.recv_timeout(wait) {
                    if live != Live::Off {
                        print(live, ev.to_string());
                    }
                    events.push(ev);
                    if sample && usvm::clock_ns() >= next_sample {
                        break;
                    }
                }
                if done {
                    // Everything emitted before `stop` was set has been drained.
                    for ev in stream.try_iter() {
                        if live != Live::Off {
                            print(live, ev.to_string());
                        }
                        events.push(ev);
                    }
                    if sample {
                        samples.push(take_sample(&svm, ranges));
                    }
                    return (events, samples);
                }
            }
        })?;
        Ok(Recorder { stop, thread: Some(thread), kernels: Arc::new(Mutex::new(Vec::new())), t0, gpus })
    }

    /// The sink for kernel spans.
    pub fn kernel_log(&self) -> KernelLog {
        KernelLog(self.kernels.clone())
    }

    /// Stops recording and returns the record.
    pub fn finish(mut self) -> Record {
        self.stop.store(true, Ordering::Release);
        let (events, samples) = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        Record {
            t0: self.t0,
            t1: usvm::clock_ns(),
            gpus: self.gpus.clone(),
            events,
            kernels: std::mem::take(&mut self.kernels.lock()),
            samples,
            ..Record::default()
        }
    }
}

fn take_sample(svm: &Svm, ranges: bool) -> Sample {
    let smi = svm.smi();
    Sample {
        ns: usvm::clock_ns(),
        vram_used: smi.iter().map(|g| g.vram_used).collect(),
        resident_pages: smi.iter().map(|g| g.resident_pages).collect(),
        ranges: if ranges {
            svm.ranges()
                .into_iter()
                .map(|r| RangeSample {
                    start: r.start,
                    size: r.size,
                    gpu: match r.actual_loc {
                        Location::Gpu(g) if r.vram_pages > 0 => Some(g),
                        _ => None,
                    },
                    vram_pages: r.vram_pages,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}
