//! `--trace FILE`: the run as a Chrome-trace JSON file (Perfetto, chrome://tracing).
//!
//! One process, `usvm`, with these tracks (thread ids):
//! - `CPU faults` (1): an instant per CPU fault that migrated data back to RAM;
//! - per GPU `i` (ids from 100 * (i + 1)): `copy engine` (migration spans, one per VMA
//!   piece, with their trigger, pages and errno), `faults` (GPU retry fault spans, fatal
//!   faults and GPU unmaps as instants), `scheduler` (queue eviction spans, restore
//!   retries as instants) and one track per queue (kernel spans);
//! - counter tracks `VRAM used (MiB)` and `resident pages`, one series per GPU.

use crate::record::Record;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use usvm::{EventKind, GpuId, MigrateTrigger};

const CPU_TID: u64 = 1;
const COPY: u64 = 1;
const FAULTS: u64 = 2;
const SCHED: u64 = 3;
const QUEUE0: u64 = 10;

fn gpu_tid(i: usize, track: u64) -> u64 {
    100 * (i as u64 + 1) + track
}

fn trigger_name(t: MigrateTrigger) -> &'static str {
    match t {
        MigrateTrigger::Prefetch => "prefetch",
        MigrateTrigger::PagefaultGpu => "gpu fault",
        MigrateTrigger::PagefaultCpu => "cpu fault",
        MigrateTrigger::TtmEviction => "eviction",
        _ => "other",
    }
}

/// Builds the trace's JSON value.
pub fn build(rec: &Record) -> Value {
    let us = |ns: u64| ns.saturating_sub(rec.t0) as f64 / 1e3;
    let index: HashMap<u32, usize> = rec.gpus.iter().enumerate().map(|(i, g)| (g.0, i)).collect();
    let name_of = |g: GpuId| format!("GPU {:#x}", g.0);
    let mut out: Vec<Value> = Vec::new();
    let thread = |tid: u64, name: String, out: &mut Vec<Value>| {
        out.push(json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": name}}));
        out.push(json!({"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": tid, "args": {"sort_index": tid}}));
    };
    out.push(json!({"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "usvm"}}));
    thread(CPU_TID, "CPU faults".into(), &mut out);
    let mut queues: Vec<usize> = vec![0; rec.gpus.len()];
    for k in &rec.kernels {
        if let Some(&i) = index.get(&k.gpu.0) {
            queues[i] = queues[i].max(k.queue + 1);
        }
    }
    for (i, &g) in rec.gpus.iter().enumerate() {
        thread(gpu_tid(i, COPY), format!("{} copy engine", name_of(g)), &mut out);
        thread(gpu_tid(i, FAULTS), format!("{} faults", name_of(g)), &mut out);
        thread(gpu_tid(i, SCHED), format!("{} scheduler", name_of(g)), &mut out);
        for q in 0..queues[i].max(1) {
            thread(gpu_tid(i, QUEUE0 + q as u64), format!("{} queue {q}", name_of(g)), &mut out);
        }
    }
    let mut open_migr: HashMap<(u64, u32, u32), u64> = HashMap::new();
    let mut open_fault: HashMap<(u64, u32), u64> = HashMap::new();
    let mut open_evict: HashMap<u32, (u64, u32)> = HashMap::new();
    for ev in &rec.events {
        let gi = ev.kind.gpu().and_then(|g| index.get(&g.0).copied());
        match &ev.kind {
            EventKind::MigrateStart { start, from, to, trigger, .. } => {
                open_migr.insert((*start, *from, *to), ev.ns);
                if *trigger == MigrateTrigger::PagefaultCpu {
                    out.push(json!({"ph": "i", "s": "t", "name": "cpu fault", "pid": 1, "tid": CPU_TID,
                        "ts": us(ev.ns), "args": {"addr": format!("{:#x}", start << 12), "from": format!("{from:#x}")}}));
                }
            }
            EventKind::MigrateEnd { start, npages, from, to, trigger, error } => {
                let Some(i) = gi else { continue };
                let t = open_migr.remove(&(*start, *from, *to)).unwrap_or(ev.ns);
                let dir = if *to != 0 { "h2d" } else { "d2h" };
                out.push(
                    json!({"ph": "X", "name": format!("{dir} {}", trigger_name(*trigger)), "cat": "migrate",
                    "pid": 1, "tid": gpu_tid(i, COPY), "ts": us(t), "dur": us(ev.ns) - us(t),
                    "args": {"addr": format!("{:#x}", start << 12), "pages": npages, "bytes": npages * 4096,
                             "from": format!("{from:#x}"), "to": format!("{to:#x}"), "error": error}}),
                );
            }
            EventKind::PageFaultStart { addr, gpu, .. } => {
                open_fault.insert((*addr, gpu.0), ev.ns);
            }
            EventKind::PageFaultEnd { addr, gpu, migrated } => {
                let Some(i) = gi else { continue };
                let t = open_fault.remove(&(*addr, gpu.0)).unwrap_or(ev.ns);
                out.push(json!({"ph": "X", "name": if *migrated { "gpu fault (migrated)" } else { "gpu fault (mapped)" },
                    "cat": "fault", "pid": 1, "tid": gpu_tid(i, FAULTS), "ts": us(t), "dur": us(ev.ns) - us(t),
                    "args": {"addr": format!("{:#x}", addr << 12)}}));
            }
            EventKind::VmFault { task, .. } => {
                let Some(i) = gi else { continue };
                out.push(json!({"ph": "i", "s": "t", "name": "fatal GPU VM fault", "pid": 1,
                    "tid": gpu_tid(i, FAULTS), "ts": us(ev.ns), "args": {"task": task}}));
            }
            EventKind::UnmapFromGpu { start, npages, trigger, .. } => {
                let Some(i) = gi else { continue };
                out.push(json!({"ph": "i", "s": "t", "name": "unmap from GPU", "pid": 1,
                    "tid": gpu_tid(i, FAULTS), "ts": us(ev.ns),
                    "args": {"addr": format!("{:#x}", start << 12), "pages": npages, "trigger": trigger.code()}}));
            }
            EventKind::QueueEviction { gpu, trigger } => {
                open_evict.entry(gpu.0).or_insert((ev.ns, trigger.code()));
            }
            EventKind::QueueRestore { gpu, rescheduled } => {
                let Some(i) = gi else { continue };
                if *rescheduled {
                    out.push(json!({"ph": "i", "s": "t", "name": "restore rescheduled", "pid": 1,
                        "tid": gpu_tid(i, SCHED), "ts": us(ev.ns)}));
                } else if let Some((t, code)) = open_evict.remove(&gpu.0) {
                    out.push(json!({"ph": "X", "name": "queues evicted", "cat": "queue", "pid": 1,
                        "tid": gpu_tid(i, SCHED), "ts": us(t), "dur": us(ev.ns) - us(t), "args": {"trigger": code}}));
                }
            }
            _ => {}
        }
    }
    for k in &rec.kernels {
        let Some(&i) = index.get(&k.gpu.0) else { continue };
        out.push(json!({"ph": "X", "name": k.name, "cat": "kernel", "pid": 1,
            "tid": gpu_tid(i, QUEUE0 + k.queue as u64), "ts": us(k.start_ns), "dur": us(k.end_ns) - us(k.start_ns)}));
    }
    for s in &rec.samples {
        let series = |v: &[u64], scale: f64| -> Value {
            let m: serde_json::Map<String, Value> =
                rec.gpus.iter().zip(v).map(|(g, &x)| (name_of(*g), json!(x as f64 / scale))).collect();
            Value::Object(m)
        };
        out.push(json!({"ph": "C", "name": "VRAM used (MiB)", "pid": 1, "ts": us(s.ns),
            "args": series(&s.vram_used, (1u64 << 20) as f64)}));
        out.push(json!({"ph": "C", "name": "resident pages", "pid": 1, "ts": us(s.ns),
            "args": series(&s.resident_pages, 1.0)}));
    }
    json!({"traceEvents": out, "displayTimeUnit": "ms",
           "otherData": {"generator": "usvm", "clock": "CLOCK_BOOTTIME", "t0_ns": rec.t0}})
}

/// Writes the trace of `rec` to `path`.
pub fn write(rec: &Record, path: &Path) -> anyhow::Result<()> {
    let v = build(rec);
    let f =
        std::fs::File::create(path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(f), &v)?;
    Ok(())
}
