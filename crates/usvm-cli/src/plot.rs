//! `--plot DIR`: SVG plots of a run, drawn with `plotters`' SVG backend (text is left to
//! the SVG viewer: no font is read or rasterized):
//! - `vram.svg`: VRAM in use over time, a line per GPU;
//! - `faults.svg`: GPU and CPU fault rates over time;
//! - `residency.svg`: a heat map of where each range's data is over time (rows: ranges,
//!   columns: time, colour: the GPU holding the pages, its strength the fraction in VRAM;
//!   grey: system memory).

use crate::record::{Record, Sample};
use crate::units::mib;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};
use usvm::{EventKind, GpuId, MigrateTrigger};

/// Plot size in pixels.
const W: u32 = 800;
const H: u32 = 360;
/// Width of the legend, right of the chart: room for 24 characters of legend text
/// (`legend_fits` checks every label).
const LEGEND_W: u32 = 200;
/// Where a legend's labels start, from its left edge.
const LEGEND_TEXT_X: i32 = 28;
/// Time bins of the fault-rate plot.
const FAULT_BINS: usize = 60;
/// Most rows and columns of the heat map.
const HEAT_ROWS: usize = 64;
const HEAT_COLS: usize = 200;
/// Series colours (GPU i, or series i).
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
/// System memory in the heat map.
const GREY: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
/// The font of every text; its size in plotters' units (the SVG's is 1/1.24 of it).
const FONT: &str = "sans-serif";
const TEXT: f64 = 15.0;
const TITLE: f64 = 18.0;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn gpu_name(g: GpuId) -> String {
    format!("GPU {:#x}", g.0)
}

fn seconds(rec: &Record, ns: u64) -> f64 {
    ns.saturating_sub(rec.t0) as f64 / 1e9
}

/// Draws a plot titled `title` on a fresh SVG document: `draw` gets the chart's area
/// (left) and the legend's (right). Returns the document.
fn svg(title: &str, draw: impl FnOnce(&Area, &Area) -> anyhow::Result<()>) -> anyhow::Result<String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, TITLE))?;
        let (chart, legend) = body.split_horizontally(W - LEGEND_W);
        draw(&chart, &legend)?;
        root.present()?;
    }
    text.push('\n');
    Ok(text)
}

/// A tick label: the value to 6 decimals at most, without trailing zeros ("0", "2.5").
fn tick(v: &f64) -> String {
    let r = (v * 1e6).round() / 1e6;
    format!("{}", if r == 0.0 { 0.0 } else { r })
}

/// A chart over `x` and `y` with axes, ticks, light grid lines and the axes' titles.
fn chart<'a, 'b>(
    area: &'a Area<'b>,
    x: Range<f64>,
    y: Range<f64>,
    xdesc: &str,
    ydesc: &str,
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut c = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    c.configure_mesh()
        .x_desc(xdesc)
        .y_desc(ydesc)
        .x_labels(6)
        .y_labels(6)
        .max_light_lines(0)
        .bold_line_style(RGBColor(0xee, 0xee, 0xee))
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FONT, TEXT))
        .axis_desc_style((FONT, TEXT))
        .draw()?;
    Ok(c)
}

/// A legend: a swatch and a label per entry, top to bottom.
fn legend(area: &Area, entries: &[(RGBColor, String)]) -> anyhow::Result<()> {
    for (k, (c, label)) in entries.iter().enumerate() {
        let y = 12 + 18 * k as i32;
        area.draw(&Rectangle::new([(10, y), (22, y + 12)], c.filled()))?;
        area.draw(&Text::new(label.as_str(), (LEGEND_TEXT_X, y), (FONT, TEXT)))?;
    }
    Ok(())
}

/// A line through `pts` (data coordinates); none when empty.
fn line(c: &mut Chart, pts: Vec<(f64, f64)>, col: RGBColor) -> anyhow::Result<()> {
    if !pts.is_empty() {
        c.draw_series(LineSeries::new(pts, col.stroke_width(2)))?;
    }
    Ok(())
}

/// VRAM in use over time.
pub fn vram(rec: &Record, vram_bytes: u64) -> anyhow::Result<String> {
    let dur = seconds(rec, rec.t1).max(1e-3);
    let ymax = mib(vram_bytes).max(1.0);
    svg("VRAM in use", |area, key| {
        let mut c = chart(area, 0.0..dur, 0.0..ymax, "time (s)", "MiB")?;
        for i in 0..rec.gpus.len() {
            let pts =
                rec.samples.iter().map(|s: &Sample| (seconds(rec, s.ns), mib(s.vram_used[i]))).collect();
            line(&mut c, pts, color(i))?;
        }
        let names: Vec<_> = rec.gpus.iter().enumerate().map(|(i, &g)| (color(i), gpu_name(g))).collect();
        legend(key, &names)
    })
}

/// GPU and CPU fault rates over time (faults per second, in bins).
pub fn faults(rec: &Record) -> anyhow::Result<String> {
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
    // 5% above the highest rate, so that its line does not run along the frame.
    let ymax = g.iter().chain(&c).map(|p| p.1).fold(1.0, f64::max) * 1.05;
    svg("Fault rate", |area, key| {
        let mut ch = chart(area, 0.0..dur, 0.0..ymax, "time (s)", "faults / s")?;
        line(&mut ch, g, color(0))?;
        line(&mut ch, c, color(1))?;
        legend(key, &[(color(0), "GPU faults".into()), (color(1), "CPU faults (migrating)".into())])
    })
}

/// The heat map's rows: the ranges of the last sample that had any, by address, grouped
/// into at most `HEAT_ROWS` address intervals.
fn heat_rows(rec: &Record) -> Vec<(usize, usize)> {
    let Some(s) = rec.samples.iter().rev().find(|s| !s.ranges.is_empty()) else { return Vec::new() };
    let per = s.ranges.len().div_ceil(HEAT_ROWS);
    s.ranges
        .chunks(per)
        .map(|c| (c[0].start, c.last().map(|r| r.start + r.size).unwrap_or(c[0].start)))
        .collect()
}

/// Pages of the address interval `[a, b)` in each GPU's VRAM at sample `s` (a range's
/// VRAM pages spread evenly over it).
fn pages_in_vram(rec: &Record, s: &Sample, (a, b): (usize, usize)) -> Vec<f64> {
    let mut in_gpu = vec![0f64; rec.gpus.len()];
    for rg in s.ranges.iter().filter(|rg| rg.start < b && rg.start + rg.size > a) {
        let Some(g) = rg.gpu else { continue };
        let Some(i) = rec.gpus.iter().position(|&x| x == g) else { continue };
        let overlap = (rg.start + rg.size).min(b) - rg.start.max(a);
        in_gpu[i] += rg.vram_pages as f64 * overlap as f64 / rg.size as f64;
    }
    in_gpu
}

/// Where each range's data is over time: a cell per row (ranges, the lowest addresses on
/// top) and column (at most `HEAT_COLS` groups of samples, each over the time it covers,
/// shown by its middle sample): grey, overlaid with the colour of the GPU holding most of
/// the row's pages, as strong as the fraction of them in its VRAM.
pub fn residency(rec: &Record) -> anyhow::Result<String> {
    let dur = seconds(rec, rec.t1).max(1e-3);
    let rows = heat_rows(rec);
    let nrows = rows.len();
    let chunks: Vec<&[Sample]> = rec.samples.chunks(rec.samples.len().div_ceil(HEAT_COLS).max(1)).collect();
    // Column c spans [edge[c], edge[c + 1]): from its first sample to the next column's.
    let edges: Vec<f64> = std::iter::once(0.0)
        .chain(chunks.iter().skip(1).map(|c| seconds(rec, c[0].ns).min(dur)))
        .chain([dur])
        .collect();
    let mut cells = Vec::new();
    for (c, chunk) in chunks.iter().enumerate() {
        let s = &chunk[chunk.len() / 2];
        for (r, &row) in rows.iter().enumerate() {
            let y = (nrows - r) as f64;
            let rect = [(edges[c], y - 1.0), (edges[c + 1], y)];
            cells.push(Rectangle::new(rect, GREY.filled()));
            let in_gpu = pages_in_vram(rec, s, row);
            if let Some((i, &p)) = in_gpu.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))
                && p > 0.0
            {
                let row_pages = ((row.1 - row.0) / 4096).max(1) as f64;
                cells.push(Rectangle::new(rect, color(i).mix((p / row_pages).clamp(0.15, 1.0)).filled()));
            }
        }
    }
    svg("Range residency (rows: ranges by address; colour: GPU, grey: RAM)", |area, key| {
        let mut ch = chart(area, 0.0..dur, 0.0..nrows.max(1) as f64, "time (s)", "ranges")?;
        ch.draw_series(cells)?;
        let mut names: Vec<_> = rec.gpus.iter().enumerate().map(|(i, &g)| (color(i), gpu_name(g))).collect();
        names.push((GREY, "system memory".into()));
        legend(key, &names)
    })
}

/// A line chart of `series` (a label and its points, x ascending), both axes from 0 and 5%
/// past the largest value: a coloured line with a dot on each point per series, and a
/// legend of the labels.
pub fn curve(
    title: &str,
    xdesc: &str,
    ydesc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<String> {
    let pts = || series.iter().flat_map(|s| s.1.iter());
    let xmax = (pts().map(|p| p.0).fold(0.0, f64::max) * 1.05).max(1e-3);
    let ymax = (pts().map(|p| p.1).fold(0.0, f64::max) * 1.05).max(1e-3);
    svg(title, |area, key| {
        let mut c = chart(area, 0.0..xmax, 0.0..ymax, xdesc, ydesc)?;
        for (i, (_, p)) in series.iter().enumerate() {
            line(&mut c, p.clone(), color(i))?;
            c.draw_series(p.iter().map(|&q| Circle::new(q, 3, color(i).filled())))?;
        }
        let names: Vec<_> = series.iter().enumerate().map(|(i, s)| (color(i), s.0.clone())).collect();
        legend(key, &names)
    })
}

/// Writes the three plots into `dir` (created when missing); returns their paths.
pub fn write_all(rec: &Record, vram_bytes: u64, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for (name, text) in [
        ("vram.svg", vram(rec, vram_bytes)?),
        ("faults.svg", faults(rec)?),
        ("residency.svg", residency(rec)?),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
        paths.push(p);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RangeSample;
    use usvm::Event;

    const G: [GpuId; 2] = [GpuId(0x1111), GpuId(0x2222)];
    const MIB: usize = 1 << 20;

    /// One second, two GPUs, four samples; two 2 MiB ranges: the first moves into GPU
    /// 0x1111's VRAM (half, then all of it), the second stays in RAM. One GPU fault at
    /// 0.1 s, one CPU fault at 0.9 s.
    fn record() -> Record {
        let range = |start: usize, gpu: Option<GpuId>, vram_pages: usize| RangeSample {
            start,
            size: 2 * MIB,
            gpu,
            vram_pages,
        };
        let sample = |ms: u64, pages: usize| Sample {
            ns: ms * 1_000_000,
            vram_used: vec![(pages * 4096) as u64, 0],
            resident_pages: vec![pages as u64, 0],
            ranges: vec![
                range(0x10_0000_0000, (pages > 0).then_some(G[0]), pages),
                range(0x10_0020_0000, None, 0),
            ],
        };
        let ev = |ms: u64, kind| Event { ns: ms * 1_000_000, pid: 1, kind };
        Record {
            t0: 0,
            t1: 1_000_000_000,
            gpus: G.to_vec(),
            events: vec![
                ev(100, EventKind::PageFaultStart { addr: 0x10_0000, gpu: G[0], write: false }),
                ev(
                    900,
                    EventKind::MigrateStart {
                        start: 0x10_0000,
                        npages: 512,
                        from: G[0].0,
                        to: 0,
                        prefetch_loc: 0,
                        preferred_loc: 0,
                        trigger: MigrateTrigger::PagefaultCpu,
                    },
                ),
            ],
            kernels: Vec::new(),
            samples: vec![sample(0, 0), sample(250, 256), sample(500, 512), sample(750, 0)],
            ..Record::default()
        }
    }

    /// The document's texts, trimmed.
    fn texts(doc: &roxmltree::Document) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(|t| t.trim().to_string())
            .collect()
    }

    /// The data lines (polylines not drawn in black, the axes' colour): colour, points.
    fn series(doc: &roxmltree::Document) -> Vec<(String, Vec<(f64, f64)>)> {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") != Some("#000000"))
            .map(|n| {
                let pts = n.attribute("points").unwrap().split_whitespace().map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                });
                (n.attribute("stroke").unwrap().to_lowercase(), pts.collect())
            })
            .collect()
    }

    /// Rectangles filled with `fill` (lower case): their opacities.
    fn rects(doc: &roxmltree::Document, fill: &str) -> Vec<f64> {
        doc.descendants()
            .filter(|n| {
                n.has_tag_name("rect") && n.attribute("fill").map(str::to_lowercase).as_deref() == Some(fill)
            })
            .map(|n| n.attribute("opacity").unwrap().parse().unwrap())
            .collect()
    }

    fn check_frame(doc: &roxmltree::Document, title: &str, ylabel: &str, legend: &[&str]) {
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert_eq!(doc.root_element().attribute("width"), Some("800"));
        let t = texts(doc);
        for want in [title, "time (s)", ylabel].iter().chain(legend) {
            assert!(t.iter().any(|x| x == want), "no text {want:?} in {t:?}");
        }
        assert!(t.iter().any(|x| x == "0"), "tick labels: {t:?}");
    }

    #[test]
    fn vram_has_a_line_per_gpu_through_every_sample() {
        let text = vram(&record(), 4 * MIB as u64).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        check_frame(&doc, "VRAM in use", "MiB", &["GPU 0x1111", "GPU 0x2222"]);
        let s = series(&doc);
        assert_eq!(s.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["#1f77b4", "#ff7f0e"]);
        assert!(s.iter().all(|x| x.1.len() == 4), "{s:?}");
        // GPU 0x1111: 0, 1, 2, 0 MiB of 4: the third point is highest (smallest y), the
        // second half way up; GPU 0x2222 stays on the x axis.
        let y: Vec<f64> = s[0].1.iter().map(|p| p.1).collect();
        assert!(y[0] == y[3] && y[2] < y[1] && y[1] < y[0], "{y:?}");
        assert!((y[0] - y[1] - (y[1] - y[2])).abs() <= 1.0, "linear: {y:?}");
        assert!(s[1].1.iter().all(|p| p.1 == y[0]));
        assert!(s[0].1.windows(2).all(|w| w[0].0 < w[1].0), "time goes right");
    }

    #[test]
    fn faults_has_a_binned_rate_per_kind() {
        let text = faults(&record()).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        check_frame(&doc, "Fault rate", "faults / s", &["GPU faults", "CPU faults (migrating)"]);
        let s = series(&doc);
        assert_eq!(s.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["#1f77b4", "#ff7f0e"]);
        for (k, (_, pts)) in s.iter().enumerate() {
            assert_eq!(pts.len(), FAULT_BINS);
            let base = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            let peaks: Vec<usize> = (0..FAULT_BINS).filter(|&b| pts[b].1 < base).collect();
            // The GPU fault at 0.1 s falls in bin 6, the CPU fault at 0.9 s in bin 54.
            assert_eq!(peaks, [[6], [54]][k], "{pts:?}");
        }
    }

    #[test]
    fn residency_has_a_cell_per_row_and_column() {
        let text = residency(&record()).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        check_frame(
            &doc,
            "Range residency (rows: ranges by address; colour: GPU, grey: RAM)",
            "ranges",
            &["GPU 0x1111", "GPU 0x2222", "system memory"],
        );
        // 2 rows x 4 columns of grey, and the legend's swatch.
        assert_eq!(rects(&doc, "#dddddd").len(), 2 * 4 + 1);
        // The first range: half in VRAM, then all of it; plus the legend's swatch.
        assert_eq!(rects(&doc, "#1f77b4"), [0.5, 1.0, 1.0]);
        assert_eq!(rects(&doc, "#ff7f0e"), [1.0]);
    }

    /// The texts of the document with their x, anchor and font size (SVG units).
    fn placed_texts(doc: &roxmltree::Document) -> Vec<(String, f64, String, f64)> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| {
                let num = |a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
                let anchor = n.attribute("text-anchor").unwrap_or("start").to_string();
                (n.text().unwrap_or("").trim().to_string(), num("x"), anchor, num("font-size"))
            })
            .collect()
    }

    /// No text runs past the right edge (the fault plot's legend was cut off): every label
    /// that starts at its x ends before the 800-pixel edge, at a generous 0.6 em per
    /// character (DejaVu Sans, a wide face, averages about 0.55 on these labels).
    #[test]
    fn legend_fits() {
        let rec = record();
        for text in [vram(&rec, 4 * MIB as u64).unwrap(), faults(&rec).unwrap(), residency(&rec).unwrap()] {
            let doc = roxmltree::Document::parse(&text).unwrap();
            for (t, x, anchor, size) in placed_texts(&doc) {
                let width = t.chars().count() as f64 * size * 0.6;
                let right = match anchor.as_str() {
                    "start" => x + width,
                    "middle" => x + width / 2.0,
                    _ => x,
                };
                assert!(right <= W as f64 - 4.0, "{t:?} ends at {right:.0}");
            }
        }
    }

    /// Tick labels of integer values are integers ("48", not "48.0"), and the others have
    /// no trailing zeros.
    #[test]
    fn ticks_print_integers_as_integers() {
        for (v, want) in
            [(48.0, "48"), (0.0, "0"), (-0.0, "0"), (2.5, "2.5"), (0.1 + 0.2, "0.3"), (1e6, "1000000")]
        {
            assert_eq!(tick(&v), want);
        }
        let rec = record();
        for text in [vram(&rec, 4 * MIB as u64).unwrap(), faults(&rec).unwrap(), residency(&rec).unwrap()] {
            let doc = roxmltree::Document::parse(&text).unwrap();
            for t in texts(&doc).iter().filter(|t| t.parse::<f64>().is_ok()) {
                assert!(!t.contains('.') || !t.ends_with('0'), "tick {t:?}");
            }
        }
    }

    /// A curve has a line per series through each of its points, with its legend, the
    /// axes' titles, and the larger value higher up.
    #[test]
    fn curve_has_a_line_per_series() {
        let s = vec![
            ("kernel".to_string(), vec![(4.0, 1.0), (8.0, 2.0), (16.0, 4.0)]),
            ("adaptive".to_string(), vec![(4.0, 2.0), (8.0, 3.0), (16.0, 4.5)]),
        ];
        let text = curve("Oversubscription", "VRAM (MiB)", "GB/s", &s).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        let t = texts(&doc);
        for want in ["Oversubscription", "VRAM (MiB)", "GB/s", "kernel", "adaptive", "0"] {
            assert!(t.iter().any(|x| x == want), "no text {want:?} in {t:?}");
        }
        let lines = series(&doc);
        assert_eq!(lines.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["#1f77b4", "#ff7f0e"]);
        for (_, pts) in &lines {
            assert_eq!(pts.len(), 3);
            assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1), "{pts:?}");
        }
        assert!(lines[1].1[0].1 < lines[0].1[0].1, "adaptive's first point is higher");
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("circle")).count(), 6);
        // Nothing to plot still makes a document.
        roxmltree::Document::parse(&curve("t", "x", "y", &[]).unwrap()).unwrap();
    }

    #[test]
    fn empty_record_still_plots() {
        let rec = Record { gpus: G.to_vec(), ..Record::default() };
        for text in [vram(&rec, 1 << 30).unwrap(), faults(&rec).unwrap(), residency(&rec).unwrap()] {
            roxmltree::Document::parse(&text).unwrap();
        }
    }
}
