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

/// Failed migration pieces of one errno.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The errno (positive; MIGRATE_END carries it negated).
    pub errno: i32,
    /// Its name ("EBUSY").
    pub name: String,
    /// What it means for a migration, and what became of the data.
    pub reason: String,
    /// Pieces that failed with it.
    pub count: u64,
    /// Of them, pieces on their way to VRAM.
    pub to_vram: u64,
    /// Of them, pieces on their way to system memory.
    pub to_ram: u64,
    /// Pages those pieces covered.
    pub pages: u64,
}

/// The name of a migration errno and what it means (the library's errors: `Error::errno`).
pub fn failure_reason(errno: i32) -> (&'static str, &'static str) {
    match errno {
        libc::EBUSY => (
            "EBUSY",
            "pages busy: pinned, or shared with a child after fork (UFFDIO_MOVE cannot take them); \
             they stayed where they were",
        ),
        libc::EAGAIN => (
            "EAGAIN",
            "raced with the application's munmap / mremap / MADV_DONTNEED of SVM memory (the \
             kernel refuses page moves until usvm has read that event); the fault is served again",
        ),
        libc::ENOMEM => ("ENOMEM", "memory short: no VRAM for the range, or no RAM for the way back"),
        libc::ENOSPC => ("ENOSPC", "VRAM full: eviction could not make room"),
        libc::EFAULT => ("EFAULT", "memory unmapped (or made inaccessible) before it moved"),
        libc::ENOENT => ("ENOENT", "pages gone: unmapped while they moved"),
        libc::EEXIST => ("EEXIST", "the destination was populated meanwhile (the application touched it)"),
        libc::EINVAL => ("EINVAL", "the mapping changed under the move (protection, flags or size)"),
        libc::EIO => ("EIO", "a copy-engine chunk failed; its pages stayed where they were"),
        libc::ETIME => ("ETIME", "timed out waiting for the memory to settle"),
        libc::EDEADLK => ("EDEADLK", "given up to avoid a deadlock; retried later"),
        libc::ENODEV => ("ENODEV", "the GPU's queue is gone"),
        _ => ("other", "another error (see the errno)"),
    }
}

fn add_failure(list: &mut Vec<Failure>, errno: i32, to_vram: bool, pages: u64, count: u64) {
    let i = match list.iter().position(|f| f.errno == errno) {
        Some(i) => i,
        None => {
            let (name, reason) = failure_reason(errno);
            list.push(Failure {
                errno,
                name: name.to_string(),
                reason: reason.to_string(),
                count: 0,
                to_vram: 0,
                to_ram: 0,
                pages: 0,
            });
            list.len() - 1
        }
    };
    let f = &mut list[i];
    f.count += count;
    f.pages += pages;
    if to_vram {
        f.to_vram += count;
    } else {
        f.to_ram += count;
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
    /// The failed pieces by errno, most frequent first.
    pub failures: Vec<Failure>,
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
    /// The workload's buffers, in the order it allocated them.
    pub buffers: Vec<BufferSpan>,
    /// With `--explain`: what `Svm::diagnose` found, worst first, each with its advice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<crate::why::FindingRec>>,
}

/// A buffer of the workload.
#[derive(Serialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct BufferSpan {
    /// First byte address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
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
                    add_failure(&mut per[g].failures, -*error, *to != 0, *npages, 1);
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
    for f in &mut per {
        f.failures.sort_by_key(|x| (std::cmp::Reverse(x.count), x.errno));
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
        for x in &f.failures {
            add_failure(&mut total.failures, x.errno, true, x.pages, x.to_vram);
            add_failure(&mut total.failures, x.errno, false, 0, x.to_ram);
        }
        total.migration_seconds += f.migration_seconds;
        total.queue_evictions += f.queue_evictions;
        total.vram_peak += f.vram_peak;
        total.vram_bytes += f.vram_bytes;
    }
    total.failures.sort_by_key(|x| (std::cmp::Reverse(x.count), x.errno));
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
        buffers: Vec::new(),
        findings: None,
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

/// The failed migrations by errno, as a table (nothing when none failed).
fn failures(list: &[Failure]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let mut out = "\nfailed migrations by cause (their data stayed where it was)\n".to_string();
    let mut t = Table::new(&["errno", "pieces", "to vram", "to ram", "size", "why"]);
    for f in list {
        t.row(vec![
            f.name.clone(),
            f.count.to_string(),
            f.to_vram.to_string(),
            f.to_ram.to_string(),
            bytes(f.pages * 4096),
            f.reason.clone(),
        ]);
    }
    out += &t.render();
    out
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
    out += &failures(&s.total.failures);
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
    if let Some(f) = &s.findings {
        out += &crate::why::render_findings(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use usvm::{Event, GpuId};

    fn end(start: u64, npages: u64, from: u32, to: u32, error: i32) -> Event {
        let trigger = MigrateTrigger::PagefaultCpu;
        Event { ns: 1, pid: 1, kind: EventKind::MigrateEnd { start, npages, from, to, trigger, error } }
    }

    /// Failed pieces are counted by errno, per GPU and in total, most frequent first, with
    /// their direction, size and reason; a success is no failure.
    #[test]
    fn failed_migrations_by_errno() {
        let svm = Svm::builder().gpus(2).vram_bytes(8 << 20).build().unwrap();
        let [a, b] = [0x1111, 0x2222];
        let rec = Record {
            t0: 0,
            t1: 1,
            gpus: vec![GpuId(a), GpuId(b)],
            events: vec![
                end(0x100, 512, a, 0, -libc::EAGAIN),
                end(0x300, 16, 0, a, -libc::EBUSY),
                end(0x400, 16, 0, b, -libc::EBUSY),
                end(0x500, 8, b, 0, -libc::EBUSY),
                end(0x600, 8, b, 0, 0),
            ],
            ..Record::default()
        };
        let s = summarize("t", Settings::default(), Outcome::default(), &rec, &svm, &[]);
        assert_eq!(s.total.failed_migrations, 4);
        let t: Vec<_> = s
            .total
            .failures
            .iter()
            .map(|f| (f.name.as_str(), f.count, f.to_vram, f.to_ram, f.pages))
            .collect();
        assert_eq!(t, [("EBUSY", 3, 2, 1, 40), ("EAGAIN", 1, 0, 1, 512)]);
        assert!(s.total.failures[0].reason.contains("fork"));
        let g1: Vec<_> = s.gpus[1].failures.iter().map(|f| (f.errno, f.count)).collect();
        assert_eq!(g1, [(libc::EBUSY, 2)]);
        let text = render(&s);
        assert!(text.contains("failed migrations by cause"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("EAGAIN") && l.contains("munmap")), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["total"]["failures"][0]["name"], "EBUSY");
        assert_eq!(json["total"]["failures"][1]["errno"], libc::EAGAIN);
        assert_eq!(failure_reason(12345).0, "other");
    }
}
