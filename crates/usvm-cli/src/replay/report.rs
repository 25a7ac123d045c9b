//! What `usvm replay` prints: one table row per (policy, VRAM) replay, or one JSON object
//! per row (`--json`), and the oversubscription curve (`--plot DIR`).

use super::format::Header;
use super::model::{Compute, PROFILES, modeled};
use super::play::Played;
use crate::table::Table;
use crate::units::{bytes, mib};
use crate::why::FindingRec;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file `--plot` writes into its directory.
pub const CURVE_FILE: &str = "oversubscription.svg";

/// One replay as printed: what it measured and what the profiles make of it.
#[derive(Serialize, Debug, Clone)]
pub struct Row {
    /// `kernel` or `adaptive`.
    pub policy: String,
    /// VRAM per GPU (bytes).
    pub vram: u64,
    /// Wall time of the replay on this machine (seconds).
    pub wall_seconds: f64,
    /// Bytes the trace's accesses touch.
    pub bytes_accessed: u64,
    /// `bytes_accessed` per wall second (GB/s, 1e9 bytes).
    pub throughput_gbps: f64,
    /// GPU retry faults.
    pub gpu_faults: u64,
    /// CPU faults that brought data back from VRAM.
    pub cpu_faults: u64,
    /// Bytes migrated to VRAM.
    pub bytes_to_vram: u64,
    /// Bytes migrated to system memory.
    pub bytes_to_ram: u64,
    /// Of those, bytes evicted to make room in VRAM.
    pub bytes_evicted: u64,
    /// Failed calls and kernels.
    pub errors: u64,
    /// Modeled seconds per hardware profile (`mi210`, `mi250x`, `h100`).
    pub modeled_seconds: BTreeMap<String, f64>,
    /// What `Svm::diagnose` found, worst first.
    pub findings: Vec<FindingRec>,
}

impl Row {
    /// The row of a replay of a trace whose accesses touch `accessed` bytes.
    pub fn of(p: Played, accessed: u64, c: &Compute) -> Row {
        let modeled_seconds = PROFILES.iter().map(|pr| (pr.key.to_string(), modeled(pr, c, &p))).collect();
        Row {
            policy: p.policy.name().to_string(),
            vram: p.vram,
            wall_seconds: p.wall_s,
            bytes_accessed: accessed,
            throughput_gbps: if p.wall_s > 0.0 { accessed as f64 / p.wall_s / 1e9 } else { 0.0 },
            gpu_faults: p.gpu_faults,
            cpu_faults: p.cpu_faults,
            bytes_to_vram: p.to_vram,
            bytes_to_ram: p.to_ram,
            bytes_evicted: p.evicted,
            errors: p.errors,
            modeled_seconds,
            findings: p.findings,
        }
    }
}

/// Seconds with three decimals.
fn secs(s: f64) -> String {
    format!("{s:.3}")
}

/// The findings in a few words: "ping-pong x12, fault storm x3", or "none".
fn findings(list: &[FindingRec]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter().map(|f| format!("{} x{}", f.kind, f.count)).collect::<Vec<_>>().join(", ")
}

/// The line above the table: the trace and what it holds.
pub fn describe(h: &Header, records: usize, threads: usize, kernels: usize, accessed: u64) -> String {
    let gpus = if h.gpus == 1 { "1 GPU".to_string() } else { format!("{} GPUs", h.gpus) };
    format!(
        "replay of {} ({gpus}, XNACK {}, granularity {}; recorded with {} VRAM per GPU, policy {}): \
         {records} records, {threads} CPU thread(s), {kernels} kernels, {} accessed\n",
        h.workload,
        if h.xnack { "on" } else { "off" },
        h.granularity,
        bytes(h.vram),
        h.policy,
        bytes(accessed),
    )
}

/// The table, and what its modeled columns mean.
pub fn render(rows: &[Row]) -> String {
    let mut head = vec![
        "policy",
        "vram",
        "gpu faults",
        "cpu faults",
        "to vram",
        "to ram",
        "evicted",
        "errors",
        "wall s",
        "GB/s",
    ];
    head.extend(PROFILES.iter().map(|p| p.key));
    head.push("findings");
    let mut t = Table::new(&head);
    for r in rows {
        let mut cells = vec![
            r.policy.clone(),
            bytes(r.vram),
            r.gpu_faults.to_string(),
            r.cpu_faults.to_string(),
            bytes(r.bytes_to_vram),
            bytes(r.bytes_to_ram),
            bytes(r.bytes_evicted),
            r.errors.to_string(),
            secs(r.wall_seconds),
            format!("{:.2}", r.throughput_gbps),
        ];
        cells.extend(PROFILES.iter().map(|p| secs(r.modeled_seconds[p.key])));
        cells.push(findings(&r.findings));
        t.row(cells);
    }
    let mut out = t.render();
    out += "\nwall s: this machine's CPU emulating the GPUs; GB/s: bytes accessed per wall second.\n";
    out += "modeled seconds (link bandwidth, fault latency, recorded compute x profile factor; \
            figures in docs/DESIGN.md):\n";
    for p in &PROFILES {
        out += &format!("  {:<7} {}\n", p.key, p.name);
    }
    out
}

/// Writes the oversubscription curve (throughput against VRAM, a line per policy) into
/// `dir`; returns its path.
pub fn plot(rows: &[Row], dir: &Path) -> anyhow::Result<PathBuf> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let pt = (mib(r.vram), r.throughput_gbps);
        match series.iter_mut().find(|s| s.0 == r.policy) {
            Some(s) => s.1.push(pt),
            None => series.push((r.policy.clone(), vec![pt])),
        }
    }
    for s in &mut series {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let text = crate::plot::curve("Throughput against VRAM size", "VRAM per GPU (MiB)", "GB/s", &series)?;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(CURVE_FILE);
    std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}
