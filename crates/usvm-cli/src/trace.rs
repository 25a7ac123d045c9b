//! `--trace FILE`: the run as a Chrome-trace JSON file (Perfetto, chrome://tracing).
//!
//! One process, `usvm`, with these tracks (thread ids):
//! - `CPU faults` (1, and 2.. when they overlap): a span per CPU fault that migrated data
//!   back to RAM (an instant when the causal record no longer holds its move);
//! - `SET_ATTR` (50, and 51.. when they overlap): a span per migration a SET_ATTR made
//!   (PREFETCH_LOC, or the seed's PREFERRED_LOC change);
//! - per GPU `i` (ids from 100 * (i + 1)): `copy engine` (migration spans, one per VMA
//!   piece, with their trigger, pages and errno), `faults` (GPU retry fault spans, fatal
//!   faults and GPU unmaps as instants), `scheduler` (queue eviction spans, restore
//!   retries as instants) and one track per queue (kernel spans);
//! - counter tracks `VRAM used (MiB)` and `resident pages`, one series per GPU.
//!
//! Flow arrows link each migration to its cause (see [`crate::flows`]): the GPU fault, CPU
//! fault or SET_ATTR to the MIGRATE span, an eviction to the migration that needed the room
//! and to the fault that brought the pages back. Each MIGRATE span's args name its move and
//! cause. The file also holds the causal record itself (`usvmMoves`), the ranges at the end
//! (`usvmRanges`) and the findings (`usvmFindings`), after the keys the viewers read (an
//! unknown key ends Perfetto's reading of the file; chrome://tracing keeps it as metadata);
//! `usvm explain` reads them.
//!
//! Every event is a typed value ([`Event`]): the trace format's phases are its variants.

use crate::flows::{self, FaultSpan, MigrateSpan};
use crate::record::Record;
use crate::units::mib;
use crate::why::{FindingRec, MoveRec, RangeRec, trigger_name};
use serde::{Serialize, Serializer};
use std::collections::HashMap;
use std::path::Path;
use usvm::{EventKind, GpuId, MigrateTrigger};

/// The trace's one process id.
pub(crate) const PID: u32 = 1;
/// The first `CPU faults` track.
pub(crate) const CPU_TID: u64 = 1;
const COPY: u64 = 1;
const FAULTS: u64 = 2;
const SCHED: u64 = 3;
const QUEUE0: u64 = 10;

/// A whole trace file: the JSON object format of the Chrome trace-event format.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// The events.
    pub trace_events: Vec<Event>,
    /// The unit Perfetto and chrome://tracing show times in.
    pub display_time_unit: &'static str,
    /// Where the trace comes from.
    pub other_data: OtherData,
    /// The causal record: every movement of pages with its cause, oldest first.
    pub usvm_moves: Vec<MoveRec>,
    /// The ranges as the run left them.
    pub usvm_ranges: Vec<RangeRec>,
    /// What `Svm::diagnose` found at the end of the run.
    pub usvm_findings: Vec<FindingRec>,
}

/// The trace's `otherData`: its generator and clock.
#[derive(Debug, Serialize)]
pub struct OtherData {
    /// Always `usvm`.
    pub generator: &'static str,
    /// The clock of the timestamps.
    pub clock: &'static str,
    /// The clock's value at timestamp 0, nanoseconds.
    pub t0_ns: u64,
}

/// One trace event; the variant is its phase (`ph`). Times (`ts`, `dur`) are
/// microseconds since the start of the run.
#[derive(Debug, Serialize)]
#[serde(tag = "ph")]
pub enum Event {
    /// `M`: names the process or a thread (track), or sets a track's sort order.
    #[serde(rename = "M")]
    Metadata {
        /// What is named or sorted.
        #[serde(flatten)]
        meta: Meta,
        /// The process.
        pid: u32,
        /// The thread, unless the process is named.
        #[serde(skip_serializing_if = "Option::is_none")]
        tid: Option<u64>,
    },
    /// `X`: a span with its duration.
    #[serde(rename = "X")]
    Complete {
        /// What ran.
        name: String,
        /// The category (`migrate`, `fault`, `queue`, `kernel`).
        cat: &'static str,
        /// The process.
        pid: u32,
        /// The track.
        tid: u64,
        /// Start.
        ts: f64,
        /// Duration.
        dur: f64,
        /// Details.
        #[serde(skip_serializing_if = "Args::is_none")]
        args: Args,
    },
    /// `i`: an instant on a thread's track.
    #[serde(rename = "i")]
    Instant {
        /// The scope: always thread (`t`).
        s: Scope,
        /// What happened.
        name: &'static str,
        /// The process.
        pid: u32,
        /// The track.
        tid: u64,
        /// When.
        ts: f64,
        /// Details.
        #[serde(skip_serializing_if = "Args::is_none")]
        args: Args,
    },
    /// `s`: where a flow arrow starts, inside the slice of its track enclosing `ts`.
    #[serde(rename = "s")]
    FlowStart {
        /// What the arrow means (`cause`, `made room for`, `brought back`).
        name: &'static str,
        /// Always `cause`.
        cat: &'static str,
        /// The arrow's id (its end has the same).
        id: u64,
        /// The process.
        pid: u32,
        /// The track.
        tid: u64,
        /// When.
        ts: f64,
    },
    /// `f`: where a flow arrow ends, bound to the slice enclosing `ts` (`bp: "e"`).
    #[serde(rename = "f")]
    FlowEnd {
        /// As its start's.
        name: &'static str,
        /// As its start's.
        cat: &'static str,
        /// As its start's.
        id: u64,
        /// The process.
        pid: u32,
        /// The track.
        tid: u64,
        /// When.
        ts: f64,
        /// Always `e`: the enclosing slice.
        bp: &'static str,
    },
    /// `C`: the values of a counter track, one series per GPU.
    #[serde(rename = "C")]
    Counter {
        /// The counter track.
        name: &'static str,
        /// The process.
        pid: u32,
        /// When.
        ts: f64,
        /// Series name and value, in GPU order.
        #[serde(serialize_with = "series")]
        args: Vec<(String, f64)>,
    },
}

/// What a metadata event names: its `name` and its `args`.
#[derive(Debug, Serialize)]
#[serde(tag = "name", content = "args", rename_all = "snake_case")]
pub enum Meta {
    /// The process's name.
    ProcessName {
        /// The name.
        name: &'static str,
    },
    /// A thread's name (a track's title).
    ThreadName {
        /// The name.
        name: String,
    },
    /// A thread's place among the tracks.
    ThreadSortIndex {
        /// Smaller first.
        sort_index: u64,
    },
}

/// The scope of an instant event.
#[derive(Debug, Serialize)]
pub enum Scope {
    /// The event's own thread (track).
    #[serde(rename = "t")]
    Thread,
}

/// The details (`args`) of a span or an instant, per kind of event.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Args {
    /// None: no `args` is written.
    None,
    /// A migration piece.
    Migration {
        /// First byte address, hexadecimal.
        addr: String,
        /// Pages.
        pages: u64,
        /// Bytes.
        bytes: u64,
        /// Source: 0 or a GPU id, hexadecimal.
        from: String,
        /// Destination: 0 or a GPU id, hexadecimal.
        to: String,
        /// 0, or minus the errno.
        error: i32,
        /// The id of its move in `usvmMoves` (when the record still holds it).
        #[serde(rename = "move", skip_serializing_if = "Option::is_none")]
        move_id: Option<u64>,
        /// Why it moved, in words (with its move).
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
    },
    /// What a CPU fault or a SET_ATTR moved (a span of the `CPU faults` or `SET_ATTR` track).
    Cause {
        /// The cause in words.
        cause: String,
        /// The move's id in `usvmMoves`.
        #[serde(rename = "move")]
        move_id: u64,
        /// First byte address of what moved, hexadecimal.
        addr: String,
        /// Bytes that moved.
        bytes: u64,
        /// Where they went: 0 or a GPU id, hexadecimal.
        to: String,
    },
    /// A CPU fault that migrated data back to RAM.
    CpuFault {
        /// The page's byte address, hexadecimal.
        addr: String,
        /// Where the data was: a GPU id, hexadecimal.
        from: String,
    },
    /// A GPU retry fault.
    GpuFault {
        /// The page's byte address, hexadecimal.
        addr: String,
    },
    /// A fatal GPU VM fault.
    VmFault {
        /// The process name.
        task: String,
    },
    /// An unmap from a GPU.
    Unmap {
        /// First byte address, hexadecimal.
        addr: String,
        /// Pages.
        pages: u64,
        /// The kernel's trigger number.
        trigger: u32,
    },
    /// A queue eviction.
    Eviction {
        /// The kernel's trigger number.
        trigger: u32,
    },
}

impl Args {
    fn is_none(&self) -> bool {
        matches!(self, Args::None)
    }
}

/// A counter's series as a JSON object, in their order.
fn series<S: Serializer>(v: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, x)| (k, x)))
}

fn gpu_tid(i: usize, track: u64) -> u64 {
    100 * (i as u64 + 1) + track
}

pub(crate) fn hex(v: impl std::fmt::LowerHex) -> String {
    format!("{v:#x}")
}

/// The metadata events of a track: its name and its place (its thread id).
pub(crate) fn thread(tid: u64, name: String) -> [Event; 2] {
    [
        Event::Metadata { meta: Meta::ThreadName { name }, pid: PID, tid: Some(tid) },
        Event::Metadata { meta: Meta::ThreadSortIndex { sort_index: tid }, pid: PID, tid: Some(tid) },
    ]
}

/// Builds the trace of `rec`.
pub fn build(rec: &Record) -> Trace {
    let us = |ns: u64| ns.saturating_sub(rec.t0) as f64 / 1e3;
    let span = |t0: u64, t1: u64| (us(t0), us(t1) - us(t0));
    let index: HashMap<u32, usize> = rec.gpus.iter().enumerate().map(|(i, g)| (g.0, i)).collect();
    let name_of = |g: GpuId| format!("GPU {:#x}", g.0);
    let mut out: Vec<Event> =
        vec![Event::Metadata { meta: Meta::ProcessName { name: "usvm" }, pid: PID, tid: None }];
    out.extend(thread(CPU_TID, "CPU faults".into()));
    let mut migr: Vec<(MigrateSpan, usize)> = Vec::new();
    let mut gpu_faults: Vec<FaultSpan> = Vec::new();
    let mut cpu_faults: Vec<(u64, u64, u32)> = Vec::new();
    let mut queues: Vec<usize> = vec![0; rec.gpus.len()];
    for k in &rec.kernels {
        if let Some(&i) = index.get(&k.gpu.0) {
            queues[i] = queues[i].max(k.queue + 1);
        }
    }
    for (i, &g) in rec.gpus.iter().enumerate() {
        out.extend(thread(gpu_tid(i, COPY), format!("{} copy engine", name_of(g))));
        out.extend(thread(gpu_tid(i, FAULTS), format!("{} faults", name_of(g))));
        out.extend(thread(gpu_tid(i, SCHED), format!("{} scheduler", name_of(g))));
        for q in 0..queues[i].max(1) {
            out.extend(thread(gpu_tid(i, QUEUE0 + q as u64), format!("{} queue {q}", name_of(g))));
        }
    }
    let mut open_migr: HashMap<(u64, u32, u32), u64> = HashMap::new();
    let mut open_fault: HashMap<(u64, u32), u64> = HashMap::new();
    let mut open_evict: HashMap<u32, (u64, u32)> = HashMap::new();
    for ev in &rec.events {
        let gi = ev.kind.gpu().and_then(|g| index.get(&g.0).copied());
        let instant =
            |name, tid, args| Event::Instant { s: Scope::Thread, name, pid: PID, tid, ts: us(ev.ns), args };
        match &ev.kind {
            EventKind::MigrateStart { start, from, to, trigger, .. } => {
                open_migr.insert((*start, *from, *to), ev.ns);
                if *trigger == MigrateTrigger::PagefaultCpu {
                    cpu_faults.push((ev.ns, *start, *from));
                }
            }
            EventKind::MigrateEnd { start, npages, from, to, trigger, error } => {
                let Some(i) = gi else { continue };
                let began = open_migr.remove(&(*start, *from, *to)).unwrap_or(ev.ns);
                let (ts, dur) = span(began, ev.ns);
                let dir = if *to != 0 { "h2d" } else { "d2h" };
                let tid = gpu_tid(i, COPY);
                let m = MigrateSpan {
                    page: *start,
                    npages: *npages,
                    from: *from,
                    to: *to,
                    ns: (began, ev.ns),
                    tid,
                };
                migr.push((m, out.len()));
                out.push(Event::Complete {
                    name: format!("{dir} {}", trigger_name(*trigger)),
                    cat: "migrate",
                    pid: PID,
                    tid: gpu_tid(i, COPY),
                    ts,
                    dur,
                    args: Args::Migration {
                        addr: hex(start << 12),
                        pages: *npages,
                        bytes: npages * 4096,
                        from: hex(*from),
                        to: hex(*to),
                        error: *error,
                        move_id: None,
                        cause: None,
                    },
                });
            }
            EventKind::PageFaultStart { addr, gpu, .. } => {
                open_fault.insert((*addr, gpu.0), ev.ns);
            }
            EventKind::PageFaultEnd { addr, gpu, migrated } => {
                let Some(i) = gi else { continue };
                let began = open_fault.remove(&(*addr, gpu.0)).unwrap_or(ev.ns);
                let (ts, dur) = span(began, ev.ns);
                gpu_faults.push(FaultSpan {
                    page: *addr,
                    gpu: gpu.0,
                    ns: (began, ev.ns),
                    tid: gpu_tid(i, FAULTS),
                });
                out.push(Event::Complete {
                    name: if *migrated { "gpu fault (migrated)" } else { "gpu fault (mapped)" }.into(),
                    cat: "fault",
                    pid: PID,
                    tid: gpu_tid(i, FAULTS),
                    ts,
                    dur,
                    args: Args::GpuFault { addr: hex(addr << 12) },
                });
            }
            EventKind::VmFault { task, .. } => {
                let Some(i) = gi else { continue };
                out.push(instant(
                    "fatal GPU VM fault",
                    gpu_tid(i, FAULTS),
                    Args::VmFault { task: task.clone() },
                ));
            }
            EventKind::UnmapFromGpu { start, npages, trigger, .. } => {
                let Some(i) = gi else { continue };
                let args = Args::Unmap { addr: hex(start << 12), pages: *npages, trigger: trigger.code() };
                out.push(instant("unmap from GPU", gpu_tid(i, FAULTS), args));
            }
            EventKind::QueueEviction { gpu, trigger } => {
                open_evict.entry(gpu.0).or_insert((ev.ns, trigger.code()));
            }
            EventKind::QueueRestore { gpu, rescheduled } => {
                let Some(i) = gi else { continue };
                if *rescheduled {
                    out.push(instant("restore rescheduled", gpu_tid(i, SCHED), Args::None));
                } else if let Some((t, code)) = open_evict.remove(&gpu.0) {
                    let (ts, dur) = span(t, ev.ns);
                    out.push(Event::Complete {
                        name: "queues evicted".into(),
                        cat: "queue",
                        pid: PID,
                        tid: gpu_tid(i, SCHED),
                        ts,
                        dur,
                        args: Args::Eviction { trigger: code },
                    });
                }
            }
            _ => {}
        }
    }
    flows::trace_events(rec, &migr, &gpu_faults, &cpu_faults, &mut out);
    for k in &rec.kernels {
        let Some(&i) = index.get(&k.gpu.0) else { continue };
        let (ts, dur) = span(k.start_ns, k.end_ns);
        out.push(Event::Complete {
            name: k.name.into(),
            cat: "kernel",
            pid: PID,
            tid: gpu_tid(i, QUEUE0 + k.queue as u64),
            ts,
            dur,
            args: Args::None,
        });
    }
    let series = |v: &[u64], f: fn(u64) -> f64| -> Vec<(String, f64)> {
        rec.gpus.iter().zip(v).map(|(g, &x)| (name_of(*g), f(x))).collect()
    };
    for s in &rec.samples {
        let ts = us(s.ns);
        out.push(Event::Counter { name: "VRAM used (MiB)", pid: PID, ts, args: series(&s.vram_used, mib) });
        out.push(Event::Counter {
            name: "resident pages",
            pid: PID,
            ts,
            args: series(&s.resident_pages, |x| x as f64),
        });
    }
    Trace {
        trace_events: out,
        display_time_unit: "ms",
        other_data: OtherData { generator: "usvm", clock: "CLOCK_BOOTTIME", t0_ns: rec.t0 },
        usvm_moves: rec.moves.iter().map(MoveRec::of).collect(),
        usvm_ranges: rec.end_ranges.iter().map(RangeRec::of).collect(),
        usvm_findings: rec.findings.iter().map(FindingRec::of).collect(),
    }
}

/// Writes the trace of `rec` to `path`.
pub fn write(rec: &Record, path: &Path) -> anyhow::Result<()> {
    let trace = build(rec);
    let f =
        std::fs::File::create(path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(f), &trace)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{KernelSpan, Sample};
    use serde_json::{Value, json};
    use usvm::{Event as SvmEvent, EvictTrigger, UnmapTrigger};

    const G: GpuId = GpuId(0x1111);

    fn at(ns: u64, kind: EventKind) -> SvmEvent {
        SvmEvent { ns, pid: 7, kind }
    }

    /// A record with one event of every kind the trace shows, 1 us apart from t0 = 1 ms.
    fn record() -> Record {
        let t0 = 1_000_000;
        let us = |n: u64| t0 + n * 1000;
        let (start, npages) = (0x7f00_0000, 512);
        let events = vec![
            at(
                us(1),
                EventKind::MigrateStart {
                    start,
                    npages,
                    from: G.0,
                    to: 0,
                    prefetch_loc: 0,
                    preferred_loc: G.0,
                    trigger: MigrateTrigger::PagefaultCpu,
                },
            ),
            at(
                us(3),
                EventKind::MigrateEnd {
                    start,
                    npages,
                    from: G.0,
                    to: 0,
                    trigger: MigrateTrigger::PagefaultCpu,
                    error: 0,
                },
            ),
            at(us(4), EventKind::PageFaultStart { addr: start, gpu: G, write: true }),
            at(us(6), EventKind::PageFaultEnd { addr: start, gpu: G, migrated: true }),
            at(us(7), EventKind::VmFault { gpu: G, task: "7:app".into() }),
            at(
                us(8),
                EventKind::UnmapFromGpu { start, npages: 16, gpu: G, trigger: UnmapTrigger::UnmapFromCpu },
            ),
            at(us(9), EventKind::QueueEviction { gpu: G, trigger: EvictTrigger::Svm }),
            at(us(10), EventKind::QueueRestore { gpu: G, rescheduled: true }),
            at(us(12), EventKind::QueueRestore { gpu: G, rescheduled: false }),
        ];
        Record {
            t0,
            t1: us(20),
            gpus: vec![G],
            events,
            kernels: vec![KernelSpan { gpu: G, queue: 1, name: "scale", start_ns: us(13), end_ns: us(18) }],
            samples: vec![Sample {
                ns: us(19),
                vram_used: vec![3 << 19],
                resident_pages: vec![384],
                ranges: vec![],
            }],
            ..Record::default()
        }
    }

    #[test]
    fn every_event_kind_has_its_phase_and_fields() {
        let v = serde_json::to_value(build(&record())).unwrap();
        assert_eq!(v["displayTimeUnit"], "ms");
        assert_eq!(
            v["otherData"],
            json!({"generator": "usvm", "clock": "CLOCK_BOOTTIME", "t0_ns": 1_000_000})
        );
        let events = v["traceEvents"].as_array().unwrap();
        let addr = "0x7f000000000";
        for want in [
            json!({"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "usvm"}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "CPU faults"}}),
            json!({"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": 1, "args": {"sort_index": 1}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 101, "args": {"name": "GPU 0x1111 copy engine"}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 102, "args": {"name": "GPU 0x1111 faults"}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 103, "args": {"name": "GPU 0x1111 scheduler"}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 110, "args": {"name": "GPU 0x1111 queue 0"}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 111, "args": {"name": "GPU 0x1111 queue 1"}}),
            json!({"ph": "i", "s": "t", "name": "cpu fault", "pid": 1, "tid": 1, "ts": 1.0,
                   "args": {"addr": addr, "from": "0x1111"}}),
            json!({"ph": "X", "name": "d2h cpu fault", "cat": "migrate", "pid": 1, "tid": 101, "ts": 1.0, "dur": 2.0,
                   "args": {"addr": addr, "pages": 512, "bytes": 2 << 20, "from": "0x1111", "to": "0x0", "error": 0}}),
            json!({"ph": "X", "name": "gpu fault (migrated)", "cat": "fault", "pid": 1, "tid": 102, "ts": 4.0,
                   "dur": 2.0, "args": {"addr": addr}}),
            json!({"ph": "i", "s": "t", "name": "fatal GPU VM fault", "pid": 1, "tid": 102, "ts": 7.0,
                   "args": {"task": "7:app"}}),
            json!({"ph": "i", "s": "t", "name": "unmap from GPU", "pid": 1, "tid": 102, "ts": 8.0,
                   "args": {"addr": addr, "pages": 16, "trigger": 2}}),
            json!({"ph": "i", "s": "t", "name": "restore rescheduled", "pid": 1, "tid": 103, "ts": 10.0}),
            json!({"ph": "X", "name": "queues evicted", "cat": "queue", "pid": 1, "tid": 103, "ts": 9.0, "dur": 3.0,
                   "args": {"trigger": 0}}),
            json!({"ph": "X", "name": "scale", "cat": "kernel", "pid": 1, "tid": 111, "ts": 13.0, "dur": 5.0}),
            json!({"ph": "C", "name": "VRAM used (MiB)", "pid": 1, "ts": 19.0, "args": {"GPU 0x1111": 1.5}}),
            json!({"ph": "C", "name": "resident pages", "pid": 1, "ts": 19.0, "args": {"GPU 0x1111": 384.0}}),
        ] {
            assert!(events.contains(&want), "no {want} in {}", Value::Array(events.clone()));
        }
        // 1 process name, 2 metadata events for each of 6 tracks, 8 events, 2 counters.
        assert_eq!(events.len(), 1 + 12 + 8 + 2);
    }

    #[test]
    fn counter_series_keep_the_gpu_order() {
        let mut rec = record();
        rec.gpus = vec![GpuId(0x2222), G];
        rec.samples[0].vram_used = vec![1 << 20, 2 << 20];
        let text = serde_json::to_string(&build(&rec)).unwrap();
        assert!(text.contains(r#""args":{"GPU 0x2222":1.0,"GPU 0x1111":2.0}"#), "{text}");
    }
}
