//! `--plot DIR`: SVG plots of a run, written by hand (no plotting dependency):
//! - `vram.svg`: VRAM in use over time, a line per GPU;
//! - `faults.svg`: GPU and CPU fault rates over time;
//! - `residency.svg`: a heat map of where each range's data is over time (rows: ranges,
//!   columns: time, colour: the GPU holding the pages, its strength the fraction in VRAM;
//!   grey: system memory).

use crate::record::{Record, Sample};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use usvm::{EventKind, GpuId, MigrateTrigger};

/// Plot size in pixels.
const W: f64 = 800.0;
const H: f64 = 360.0;
/// Margins: left, right, top, bottom.
const ML: f64 = 70.0;
const MR: f64 = 150.0;
const MT: f64 = 30.0;
const MB: f64 = 45.0;
/// Time bins of the fault-rate plot.
const FAULT_BINS: usize = 60;
/// Most rows and columns of the heat map.
const HEAT_ROWS: usize = 64;
const HEAT_COLS: usize = 200;
/// Series colours (GPU i, or series i).
const COLORS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG document with a plot frame.
struct Svg {
    body: String,
}

impl Svg {
    fn new(title: &str) -> Self {
        let mut body = String::new();
        let _ = write!(
            body,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(body, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = write!(
            body,
            r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{}</text>"#,
            W / 2.0,
            esc(title)
        );
        Svg { body }
    }

    /// Axes with labels and a few ticks; `x1`, `y1`: the axis maxima.
    fn axes(&mut self, xlabel: &str, ylabel: &str, x1: f64, y1: f64) {
        let (x0p, y0p, x1p, y1p) = (ML, H - MB, W - MR, MT);
        let _ = write!(self.body, r#"<path d="M{x0p} {y1p} V{y0p} H{x1p}" stroke="black" fill="none"/>"#);
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let x = x0p + f * (x1p - x0p);
            let y = y0p - f * (y0p - y1p);
            let _ = write!(
                self.body,
                r#"<text x="{x}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>"#,
                y0p + 15.0,
                fmt_num(f * x1),
                x0p - 5.0,
                y + 4.0,
                fmt_num(f * y1)
            );
        }
        let _ = write!(
            self.body,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (x0p + x1p) / 2.0,
            H - 8.0,
            esc(xlabel)
        );
        let _ = write!(
            self.body,
            r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
            (y0p + y1p) / 2.0,
            (y0p + y1p) / 2.0,
            esc(ylabel)
        );
    }

    /// A line through `pts` (data coordinates) scaled to the axes `x1`, `y1`.
    fn line(&mut self, pts: &[(f64, f64)], x1: f64, y1: f64, color: &str) {
        if pts.is_empty() {
            return;
        }
        let mut d = String::new();
        for (k, (x, y)) in pts.iter().enumerate() {
            let px = ML + x / x1.max(1e-12) * (W - MR - ML);
            let py = H - MB - y / y1.max(1e-12) * (H - MB - MT);
            let _ = write!(d, "{}{px:.1} {py:.1} ", if k == 0 { "M" } else { "L" });
        }
        let _ = write!(
            self.body,
            r#"<path d="{}" stroke="{color}" stroke-width="1.5" fill="none"/>"#,
            d.trim_end()
        );
    }

    fn legend(&mut self, k: usize, color: &str, label: &str) {
        let y = MT + 10.0 + 18.0 * k as f64;
        let x = W - MR + 10.0;
        let _ = write!(
            self.body,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            x + 18.0,
            y,
            esc(label)
        );
    }

    fn finish(mut self) -> String {
        self.body += "</svg>\n";
        self.body
    }
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn gpu_name(g: GpuId) -> String {
    format!("GPU {:#x}", g.0)
}

fn seconds(rec: &Record, ns: u64) -> f64 {
    ns.saturating_sub(rec.t0) as f64 / 1e9
}

/// VRAM in use over time.
pub fn vram(rec: &Record, vram_bytes: u64) -> String {
    let dur = seconds(rec, rec.t1).max(1e-3);
    let ymax = (vram_bytes as f64 / (1u64 << 20) as f64).max(1.0);
    let mut svg = Svg::new("VRAM in use");
    svg.axes("time (s)", "MiB", dur, ymax);
    for (i, &g) in rec.gpus.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rec
            .samples
            .iter()
            .map(|s: &Sample| (seconds(rec, s.ns), s.vram_used[i] as f64 / (1u64 << 20) as f64))
            .collect();
        svg.line(&pts, dur, ymax, COLORS[i % COLORS.len()]);
        svg.legend(i, COLORS[i % COLORS.len()], &gpu_name(g));
    }
    svg.finish()
}

/// GPU and CPU fault rates over time (faults per second, in bins).
pub fn faults(rec: &Record) -> String {
    let dur = seconds(rec, rec.t1).max(1e-3);
    let bin = dur / FAULT_BINS as f64;
    let mut gpu = vec![0u64; FAULT_BINS];
    let mut cpu = vec![0u64; FAULT_BINS];
    for ev in &rec.events {
        let b = ((seconds(rec, ev.ns) / bin) as usize).min(FAULT_BINS - 1);
        match &ev.kind {
            EventKind::PageFaultStart { .. } => gpu[b] += 1,
            EventKind::MigrateStart { trigger: MigrateTrigger::PagefaultCpu, .. } => cpu[b] += 1,
            _ => {}
        }
    }
    let rate = |v: &[u64]| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(k, &n)| ((k as f64 + 0.5) * bin, n as f64 / bin)).collect()
    };
    let (g, c) = (rate(&gpu), rate(&cpu));
    let ymax = g.iter().chain(&c).map(|p| p.1).fold(1.0, f64::max);
    let mut svg = Svg::new("Fault rate");
    svg.axes("time (s)", "faults / s", dur, ymax);
    svg.line(&g, dur, ymax, COLORS[0]);
    svg.line(&c, dur, ymax, COLORS[1]);
    svg.legend(0, COLORS[0], "GPU faults");
    svg.legend(1, COLORS[1], "CPU faults (migrating)");
    svg.finish()
}

/// Where each range's data is over time.
pub fn residency(rec: &Record) -> String {
    let mut svg = Svg::new("Range residency (rows: ranges by address; colour: GPU, grey: RAM)");
    let dur = seconds(rec, rec.t1).max(1e-3);
    // Rows: the ranges of the last sample that had any, grouped to at most HEAT_ROWS.
    let last = rec.samples.iter().rev().find(|s| !s.ranges.is_empty());
    let rows: Vec<(usize, usize)> = match last {
        Some(s) => {
            let per = s.ranges.len().div_ceil(HEAT_ROWS);
            s.ranges
                .chunks(per)
                .map(|c| (c[0].start, c.last().map(|r| r.start + r.size).unwrap_or(c[0].start)))
                .collect()
        }
        None => Vec::new(),
    };
    svg.axes("time (s)", "ranges", dur, rows.len() as f64);
    let cols = rec.samples.len().clamp(1, HEAT_COLS);
    let (pw, ph) = (W - MR - ML, H - MB - MT);
    let (cw, rh) = (pw / cols as f64, ph / rows.len().max(1) as f64);
    for (c, chunk) in rec.samples.chunks(rec.samples.len().div_ceil(cols).max(1)).enumerate() {
        let s = &chunk[chunk.len() / 2];
        for (r, &(a, b)) in rows.iter().enumerate() {
            // Pages of the row in each GPU's VRAM, spread evenly over each range.
            let mut in_gpu = vec![0f64; rec.gpus.len()];
            for rg in s.ranges.iter().filter(|rg| rg.start < b && rg.start + rg.size > a) {
                let Some(g) = rg.gpu else { continue };
                let Some(i) = rec.gpus.iter().position(|&x| x == g) else { continue };
                let overlap = (rg.start + rg.size).min(b) - rg.start.max(a);
                in_gpu[i] += rg.vram_pages as f64 * overlap as f64 / rg.size as f64;
            }
            let row_pages = ((b - a) / 4096).max(1) as f64;
            let (x, y) = (ML + c as f64 * cw, MT + r as f64 * rh);
            let _ = write!(
                svg.body,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#dddddd"/>"##,
                cw + 0.3,
                rh + 0.3
            );
            if let Some((i, &p)) = in_gpu.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))
                && p > 0.0
            {
                let _ = write!(
                    svg.body,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="{:.2}"/>"#,
                    cw + 0.3,
                    rh + 0.3,
                    COLORS[i % COLORS.len()],
                    (p / row_pages).clamp(0.15, 1.0)
                );
            }
        }
    }
    for (i, &g) in rec.gpus.iter().enumerate() {
        svg.legend(i, COLORS[i % COLORS.len()], &gpu_name(g));
    }
    svg.legend(rec.gpus.len(), "#dddddd", "system memory");
    svg.finish()
}

/// Writes the three plots into `dir` (created when missing); returns their paths.
pub fn write_all(rec: &Record, vram_bytes: u64, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for (name, text) in
        [("vram.svg", vram(rec, vram_bytes)), ("faults.svg", faults(rec)), ("residency.svg", residency(rec))]
    {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        paths.push(p);
    }
    Ok(paths)
}
