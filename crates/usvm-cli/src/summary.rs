//! The closing summary of a run, computed from its [`Record`]: per GPU and in total, CPU
//! and GPU faults, pages and bytes migrated each way split by trigger, effective migration
//! throughput, queue evictions, VRAM peak, and the ranges that moved the most.

use crate::record::Record;
use crate::table::Table;
use crate::units::bytes;
use serde::Serialize;
use std::collections::HashMap;
use usvm::{EventKind, MigrateTrigger, RangeInfo, Svm};

/// How many ranges the summary lists.
pub const TOP_RANGES: usize = 5;

/// Pages and bytes.
#[derive(Serialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    /// Pages.
    pub pages: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Volume {
    fn add(&mut self, pages: u64) {
        self.pages += pages;
        self.bytes += pages * 4096;
    }

    fn merge(&mut self, o: Volume) {
        self.pages += o.pages;
        self.bytes += o.bytes;
    }
}

/// One direction of migration, split by trigger.
#[derive(Serialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ByTrigger {
    /// Explicit prefetches (PREFETCH_LOC, and the seed's PREFERRED_LOC change).
    pub prefetch: Volume,
    /// GPU retry faults.
    pub gpu_fault: Volume,
    /// CPU page faults.
    pub cpu_fault: Volume,
    /// VRAM pressure (TTM eviction).
    pub eviction: Volume,
    /// All of the above.
    pub total: Volume,
}

impl ByTrigger {
    fn add(&mut self, trigger: MigrateTrigger, pages: u64) {
        match trigger {
            MigrateTrigger::Prefetch => self.prefetch.add(pages),
            MigrateTrigger::PagefaultGpu => self.gpu_fault.add(pages),
            MigrateTrigger::PagefaultCpu => self.cpu_fault.add(pages),
            MigrateTrigger::TtmEviction => self.eviction.add(pages),
            // A trigger newer than this summary: counted in the total only.
            _ => {}
        }
        self.total.add(pages);
    }

    fn merge(&mut self, o: &ByTrigger) {
        self.prefetch.merge(o.prefetch);
        self.gpu_fault.merge(o.gpu_fault);
        self.cpu_fault.merge(o.cpu_fault);
        self.eviction.merge(o.eviction);
        self.total.merge(o.total);
    }
}

/// The figures of one GPU (or of all of them).
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct GpuFigures {
    /// The GPU id (0 for the total).
    pub gpu: u32,
    /// CPU faults that brought data back from this GPU's VRAM.
    pub cpu_faults: u64,
    /// GPU retry faults handled for this GPU.
    pub gpu_faults: u64,
    /// Migrations into VRAM (host to device).
    pub h2d: ByTrigger,
    /// Migrations out of VRAM (device to host).
    pub d2h: ByTrigger,
    /// Migration pieces that failed (their data stayed where it was).
    pub failed_migrations: u64,
    /// Time spent migrating, in seconds (migration start to end, summed).
    pub migration_seconds: f64,
    /// Bytes migrated per second spent migrating (GB/s, 1e9 bytes).
    pub throughput_gbps: f64,
    /// Queue evictions.
    pub queue_evictions: u64,
    /// The most VRAM held at once (bytes).
    pub vram_peak: u64,
    /// The VRAM size (bytes).
    pub vram_bytes: u64,
}

/// A range and the bytes that moved in or out of it.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct TopRange {
    /// First byte address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Bytes migrated, both ways.
    pub bytes_migrated: u64,
    /// Where its data is at the end.
    pub location: String,
}

/// What the workload reports of itself.
#[derive(Serialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Operations done (workload-specific: kernel launches, increments, sweeps).
    pub operations: u64,
    /// Bytes compared against the expected values.
    pub bytes_verified: u64,
    /// Words that differed from the expected values (anything but 0 is a bug).
    pub mismatches: u64,
    /// Operations that returned an error and changed nothing (allowed: e.g. a GPU access
    /// that gave up while two GPUs pulled the same range back and forth).
    pub errors: u64,
}

/// The run's settings, as the summary shows them.
#[derive(Serialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct Settings {
    /// GPUs.
    pub gpus: usize,
    /// VRAM per GPU (bytes).
    pub vram: u64,
    /// XNACK mode.
    pub xnack: bool,
    /// Default granularity (log2 pages).
    pub granularity: u8,
    /// Working set (bytes).
    pub size: u64,
    /// Iterations.
    pub iterations: u64,
}

/// The closing summary of a run.
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// The workload.
    pub workload: String,
    /// Its settings.
    pub settings: Settings,
    /// Wall time (seconds).
    pub seconds: f64,
    /// What the workload did and checked.
    pub outcome: Outcome,
    /// CPU faults usvm resolved (first touches of empty pages included).
    pub cpu_faults_total: u64,
    /// Events recorded.
    pub events: u64,
    /// Per GPU, in index order.
    pub gpus: Vec<GpuFigures>,
    /// All GPUs together.
    pub total: GpuFigures,
    /// The ranges that moved the most bytes, most first.
    pub top_ranges: Vec<TopRange>,
}

/// Builds the summary of a finished run.
pub fn summarize(
    name: &str,
    settings: Settings,
    outcome: Outcome,
    rec: &Record,
    svm: &Svm,
    ranges: &[RangeInfo],
) -> Summary {
    let index: HashMap<u32, usize> = rec.gpus.iter().enumerate().map(|(i, g)| (g.0, i)).collect();
    let mut per: Vec<GpuFigures> =
        rec.gpus.iter().map(|g| GpuFigures { gpu: g.0, ..Default::default() }).collect();
    let mut open: HashMap<(u64, u32, u32), u64> = HashMap::new();
    let mut moved_at: Vec<(u64, u64)> = Vec::new();
    for ev in &rec.events {
        match &ev.kind {
            EventKind::MigrateStart { start, from, to, trigger, .. } => {
                open.insert((*start, *from, *to), ev.ns);
                if *trigger == MigrateTrigger::PagefaultCpu
                    && let Some(&g) = index.get(from)
                {
                    per[g].cpu_faults += 1;
                }
            }
            EventKind::MigrateEnd { start, npages, from, to, trigger, error } => {
                let gpu = if *to != 0 { *to } else { *from };
                let Some(&g) = index.get(&gpu) else { continue };
                if let Some(t) = open.remove(&(*start, *from, *to)) {
                    per[g].migration_seconds += ev.ns.saturating_sub(t) as f64 / 1e9;
                }
                if *error != 0 {
                    per[g].failed_migrations += 1;
                    continue;
                }
                if *to != 0 {
                    per[g].h2d.add(*trigger, *npages);
                } else {
                    per[g].d2h.add(*trigger, *npages);
                }
                moved_at.push((*start, *npages));
            }
            EventKind::PageFaultStart { gpu, .. } => {
                if let Some(&g) = index.get(&gpu.0) {
                    per[g].gpu_faults += 1;
                }
            }
            EventKind::QueueEviction { gpu, .. } => {
                if let Some(&g) = index.get(&gpu.0) {
                    per[g].queue_evictions += 1;
                }
            }
            _ => {}
        }
    }
    for (f, snap) in per.iter_mut().zip(svm.smi()) {
        f.vram_peak = snap.vram_peak;
        f.vram_bytes = snap.vram_bytes;
        f.throughput_gbps = throughput(f.h2d.total.bytes + f.d2h.total.bytes, f.migration_seconds);
    }
    let mut total = GpuFigures::default();
    for f in &per {
        total.cpu_faults += f.cpu_faults;
        total.gpu_faults += f.gpu_faults;
        total.h2d.merge(&f.h2d);
        total.d2h.merge(&f.d2h);
        total.failed_migrations += f.failed_migrations;
        total.migration_seconds += f.migration_seconds;
        total.queue_evictions += f.queue_evictions;
        total.vram_peak += f.vram_peak;
        total.vram_bytes += f.vram_bytes;
    }
    total.throughput_gbps =
        throughput(total.h2d.total.bytes + total.d2h.total.bytes, total.migration_seconds);
    Summary {
        workload: name.to_string(),
        settings,
        seconds: rec.t1.saturating_sub(rec.t0) as f64 / 1e9,
        outcome,
        cpu_faults_total: svm.cpu_faults(),
        events: rec.events.len() as u64,
        gpus: per,
        total,
        top_ranges: top_ranges(ranges, &moved_at),
    }
}

fn throughput(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { bytes as f64 / seconds / 1e9 } else { 0.0 }
}

/// The ranges (as they are when the workload ends) that the most migrated bytes fell into.
fn top_ranges(ranges: &[RangeInfo], moved: &[(u64, u64)]) -> Vec<TopRange> {
    let mut bytes = vec![0u64; ranges.len()];
    for &(page, npages) in moved {
        let addr = (page << 12) as usize;
        let i = ranges.partition_point(|r| r.start + r.size <= addr);
        if i < ranges.len() && ranges[i].start <= addr {
            bytes[i] += npages * 4096;
        }
    }
    let mut order: Vec<usize> = (0..ranges.len()).filter(|&i| bytes[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(bytes[i]));
    order
        .into_iter()
        .take(TOP_RANGES)
        .map(|i| TopRange {
            start: ranges[i].start as u64,
            size: ranges[i].size as u64,
            bytes_migrated: bytes[i],
            location: ranges[i].actual_loc.to_string(),
        })
        .collect()
}

/// The summary as text tables.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let st = &s.settings;
    out += &format!(
        "\n== {}: {} GPU(s) x {} VRAM, XNACK {}, granularity {}, working set {}, {} iteration(s), {:.2} s\n",
        s.workload,
        st.gpus,
        bytes(st.vram),
        if st.xnack { "on" } else { "off" },
        st.granularity,
        bytes(st.size),
        st.iterations,
        s.seconds
    );
    let o = &s.outcome;
    out += &format!(
        "operations {}, errors {}, bytes verified {}, mismatches {}{}\n\n",
        o.operations,
        o.errors,
        bytes(o.bytes_verified),
        o.mismatches,
        if o.mismatches == 0 { " (ok)" } else { "  <-- DATA MISMATCH" }
    );
    let mut t = Table::new(&[
        "gpu",
        "cpu faults",
        "gpu faults",
        "h2d prefetch",
        "h2d gpu fault",
        "d2h cpu fault",
        "d2h prefetch",
        "d2h eviction",
        "h2d total",
        "d2h total",
        "GB/s",
        "q evictions",
        "vram peak",
    ]);
    let row = |name: String, f: &GpuFigures| {
        vec![
            name,
            f.cpu_faults.to_string(),
            f.gpu_faults.to_string(),
            bytes(f.h2d.prefetch.bytes),
            bytes(f.h2d.gpu_fault.bytes),
            bytes(f.d2h.cpu_fault.bytes),
            bytes(f.d2h.prefetch.bytes),
            bytes(f.d2h.eviction.bytes),
            bytes(f.h2d.total.bytes),
            bytes(f.d2h.total.bytes),
            format!("{:.2}", f.throughput_gbps),
            f.queue_evictions.to_string(),
            format!("{} / {}", bytes(f.vram_peak), bytes(f.vram_bytes)),
        ]
    };
    for f in &s.gpus {
        t.row(row(format!("{:#x}", f.gpu), f));
    }
    t.row(row("total".into(), &s.total));
    out += &t.render();
    out += &format!(
        "CPU faults resolved (first touches included): {}; events: {}; failed migrations: {}\n",
        s.cpu_faults_total, s.events, s.total.failed_migrations
    );
    if !s.top_ranges.is_empty() {
        out += "\ntop ranges by migrated bytes\n";
        let mut t = Table::new(&["start", "size", "migrated", "location now"]);
        for r in &s.top_ranges {
            t.row(vec![
                format!("{:#x}", r.start),
                bytes(r.size),
                bytes(r.bytes_migrated),
                r.location.clone(),
            ]);
        }
        out += &t.render();
    }
    out
}
