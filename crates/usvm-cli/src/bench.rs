//! `usvm bench`: every benchmark of the project, each printed as a ratio against a floor
//! measured in the same run (these machines are noisy; absolute times mean little).

use crate::table::Table;
use anyhow::{Result, bail};
use serde::Serialize;
use std::time::{Duration, Instant};
use usvm::{Attr, Svm};

/// One result line: `{"name","value","unit","floor","ratio"}`.
#[derive(Serialize, Debug, Clone)]
pub struct BenchLine {
    /// Benchmark name (stable: other issues and scripts refer to it).
    pub name: &'static str,
    /// The measured value.
    pub value: f64,
    /// Unit of `value` and `floor`.
    pub unit: &'static str,
    /// The floor measured in the same run.
    pub floor: f64,
    /// `value / floor` (what the goal of each benchmark is stated in).
    pub ratio: f64,
}

impl BenchLine {
    /// A line from a value and its floor; the ratio is `value / floor`.
    fn new(name: &'static str, unit: &'static str, value: f64, floor: f64) -> Self {
        BenchLine { name, value, unit, floor, ratio: value / floor }
    }

    /// A line from a measured [`usvm::bench::Ratio`].
    fn of(name: &'static str, unit: &'static str, r: usvm::bench::Ratio) -> Self {
        Self::new(name, unit, r.value, r.floor)
    }
}

type BenchFn = fn(bool) -> Result<BenchLine>;

/// Every benchmark, by name.
const BENCHES: &[(&str, BenchFn)] = &[
    ("copy_engine", copy_engine),
    ("prefetch_to_vram", prefetch_to_vram),
    ("prefetch_to_sysmem", prefetch_to_sysmem),
    ("cpu_fault_4k", cpu_fault_4k),
    ("cpu_fault_stream_2m", cpu_fault_stream_2m),
    ("gpu_fault_stream", gpu_fault_stream),
    ("oversub_1_5x", oversub_1_5x),
    ("set_attr_1e6_vs_1e3", set_attr_scaling),
    ("sdma_copy", sdma_copy),
    ("isa_copy", isa_copy),
    ("c_get_attr", c_get_attr),
    ("adaptive_pingpong", adaptive_pingpong),
    ("adaptive_pingpong_pages", adaptive_pingpong_pages),
    ("adaptive_stream_cpu", adaptive_stream_cpu),
    ("adaptive_stream_gpu", adaptive_stream_gpu),
    ("adaptive_oversub_hotset", adaptive_oversub_hotset),
];

/// Runs the benchmarks and prints them.
pub fn run(quick: bool, json: bool, filter: Option<&str>) -> Result<()> {
    let chosen: Vec<_> = BENCHES.iter().filter(|(n, _)| filter.is_none_or(|f| n.contains(f))).collect();
    if chosen.is_empty() {
        bail!(
            "no benchmark matches {:?}; known: {}",
            filter.unwrap_or(""),
            BENCHES.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
        );
    }
    let mut t = Table::new(&["benchmark", "value", "floor", "unit", "ratio"]);
    let bar = crate::progress::bar("bench");
    bar.set_length(chosen.len() as u64);
    for (name, f) in chosen {
        bar.set_message(name.to_string());
        let line = f(quick)?;
        bar.inc(1);
        if json {
            crate::progress::print_line(&bar, false, &serde_json::to_string(&line)?);
        } else {
            t.row(vec![
                line.name.to_string(),
                format!("{:.1}", line.value),
                format!("{:.1}", line.floor),
                line.unit.to_string(),
                format!("{:.3}", line.ratio),
            ]);
        }
    }
    bar.finish_and_clear();
    if !json {
        crate::progress::out(&t.render());
    }
    Ok(())
}

/// `usvm bench --history-cost`: every chosen benchmark with the causal record off, then on,
/// alternating, three rounds each (in one run); a line per benchmark: the median of its
/// ratio (against its own floor, measured in the same run: the machine's noise partly
/// cancels) with recording on and off, and the cost, oriented so that above 1 means
/// recording costs (goal <= 1.05).
pub fn history_cost(quick: bool, json: bool, filter: Option<&str>) -> Result<()> {
    /// Rounds of (off, on) per benchmark, alternating; the medians are compared.
    const ROUNDS: usize = 3;
    let chosen: Vec<_> = BENCHES.iter().filter(|(n, _)| filter.is_none_or(|f| n.contains(f))).collect();
    let mut t = Table::new(&["benchmark", "ratio, record on", "ratio, record off", "cost"]);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, f) in chosen {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        let mut unit = "";
        for _ in 0..ROUNDS {
            usvm::history::set_record_by_default(false);
            off.push(f(quick)?.ratio);
            usvm::history::set_record_by_default(true);
            let l = f(quick)?;
            unit = l.unit;
            on.push(l.ratio);
        }
        let (on, off) = (median(on), median(off));
        // Lower is better for times (us, ns/call), higher for throughputs (GB/s).
        let cost = if matches!(unit, "us" | "ns/call") { on / off } else { off / on };
        let line = BenchLine { name, value: on, unit: "ratio", floor: off, ratio: cost };
        if json {
            crate::progress::out(&serde_json::to_string(&line)?);
        } else {
            t.row(vec![(*name).to_string(), format!("{on:.3}"), format!("{off:.3}"), format!("{cost:.3}")]);
        }
    }
    if !json {
        crate::progress::out(&t.render());
    }
    Ok(())
}

/// Median of the per-call time of `batches` batches of `calls` calls of `f`.
fn median_ns_per_call(batches: usize, calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut per: Vec<f64> = (0..batches)
        .map(|b| {
            let t = Instant::now();
            for i in 0..calls {
                f(b * calls + i);
            }
            t.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    per.sort_by(f64::total_cmp);
    per[per.len() / 2]
}

/// An instance holding `n` ranges (one page each, in a mapping of their own) and a
/// separate 2 MiB range: returns the instance, its buffers and the 2 MiB range's address.
fn instance_with_ranges(n: usize) -> Result<(Svm, Vec<usvm::SvmBuffer>, usize)> {
    // 64 MiB of VRAM: 2 MiB maximum range size, so a 2 MiB SET never creates two ranges.
    let svm = Svm::builder().gpus(2).vram_bytes(64 << 20).build()?;
    // Every other page gets granularity 0, which splits the 2 MiB gap ranges page by page.
    let many = svm.alloc(2 * n * 4096)?;
    svm.set_attr(many.addr(), many.len(), &[])?;
    for i in 0..n {
        svm.set_attr(many.addr() + 2 * i * 4096, 4096, &[Attr::Granularity(0)])?;
    }
    let target = svm.alloc(2 << 20)?;
    svm.set_attr(target.addr(), target.len(), &[])?;
    let addr = target.addr();
    let total = svm.range_count();
    if total < 2 * n {
        bail!("expected at least {} ranges, got {total}", 2 * n);
    }
    Ok((svm, vec![many, target], addr))
}

/// `set_attr_1e6_vs_1e3`: time per SET_ATTR on a 2 MiB interval with 1e6 ranges in the
/// instance, against the same with 1e3 ranges. Goal: ratio <= 3.
fn set_attr_scaling(quick: bool) -> Result<BenchLine> {
    let (batches, calls) = if quick { (5, 2000) } else { (11, 10000) };
    let measure = |n: usize| -> Result<f64> {
        let (svm, _bufs, addr) = instance_with_ranges(n / 2)?;
        let ns = median_ns_per_call(batches, calls, |i| {
            let g = 3 + (i % 2) as u32; // alternate, so every call changes the range
            svm.set_attr(addr, 2 << 20, &[Attr::Granularity(g)]).expect("set_attr");
        });
        std::thread::sleep(Duration::from_millis(1));
        Ok(ns)
    };
    let floor = measure(1_000)?;
    let value = measure(1_000_000)?;
    Ok(BenchLine::new("set_attr_1e6_vs_1e3", "ns/call", value, floor))
}

/// `copy_engine`: 256 MiB system memory -> VRAM through the copy engine, against a
/// single-thread memcpy of the same size in the same run. Goal: ratio >= 0.7.
fn copy_engine(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = if quick { (64 << 20, 5) } else { (256 << 20, 9) };
    let r = usvm::bench::copy_engine(bytes, reps)?;
    Ok(BenchLine::of("copy_engine", "GB/s", r))
}

/// Size and repetitions of the migration benchmarks.
fn mig_size(quick: bool) -> (usize, usize) {
    if quick { (64 << 20, 3) } else { (256 << 20, 5) }
}

/// `prefetch_to_vram`: 256 MiB populated range to VRAM, throughput / memcpy. Goal >= 0.6.
fn prefetch_to_vram(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = mig_size(quick);
    let (up, _) = usvm::bench::prefetch(bytes, reps)?;
    Ok(BenchLine::of("prefetch_to_vram", "GB/s", up))
}

/// `prefetch_to_sysmem`: the same range back to RAM, throughput / memcpy. Goal >= 0.6.
fn prefetch_to_sysmem(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = mig_size(quick);
    let (_, down) = usvm::bench::prefetch(bytes, reps)?;
    Ok(BenchLine::of("prefetch_to_sysmem", "GB/s", down))
}

/// `cpu_fault_4k`: median latency of a CPU fault on a VRAM page (granularity 0) / median
/// bare userfaultfd round trip. Goal <= 1.5.
fn cpu_fault_4k(quick: bool) -> Result<BenchLine> {
    let r = usvm::bench::cpu_fault_4k(if quick { 500 } else { 2000 })?;
    Ok(BenchLine::of("cpu_fault_4k", "us", r))
}

/// `cpu_fault_stream_2m`: CPU reads of a 256 MiB VRAM-resident range with 2 MiB granules,
/// throughput / memcpy. Goal >= 0.5.
fn cpu_fault_stream_2m(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = mig_size(quick);
    let r = usvm::bench::cpu_fault_stream(bytes, reps)?;
    Ok(BenchLine::of("cpu_fault_stream_2m", "GB/s", r))
}

/// `gpu_fault_stream`: a GPU kernel streams a 256 MiB system-resident range with XNACK on,
/// driven by GPU faults; throughput / (prefetch + the same stream). Goal >= 0.6.
fn gpu_fault_stream(quick: bool) -> Result<BenchLine> {
    let r = usvm::bench::gpu_fault_stream(if quick { 64 << 20 } else { 256 << 20 })?;
    Ok(BenchLine::of("gpu_fault_stream", "GB/s", r))
}

/// `oversub_1_5x`: a kernel sweeping 1.5x VRAM, throughput / the same sweep over 0.5x VRAM.
/// Goal >= 0.4.
fn oversub_1_5x(quick: bool) -> Result<BenchLine> {
    let r = usvm::bench::oversub(if quick { 32 << 20 } else { 128 << 20 })?;
    Ok(BenchLine::of("oversub_1_5x", "GB/s", r))
}

/// `isa_copy`: a dispatch of gfx90a machine code (64-lane waves copying a dword per lane,
/// as kfdtest's CopyDwordIsa does per wave) over 64 MiB in system memory, against memcpy
/// of the same size in the same run. No goal yet.
fn isa_copy(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = if quick { (8 << 20, 3) } else { (64 << 20, 3) };
    Ok(BenchLine::of("isa_copy", "GB/s", usvm::bench::isa_copy(bytes, reps)?))
}

/// `sdma_copy`: COPY_LINEAR of 256 MiB between two VRAM-resident SVM ranges through an SDMA
/// queue (ring, doorbell, read pointer), throughput / memcpy of the same size. Goal >= 0.7.
fn sdma_copy(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = if quick { (64 << 20, 3) } else { (256 << 20, 5) };
    let r = usvm::bench::sdma_copy(bytes, reps)?;
    Ok(BenchLine::of("sdma_copy", "GB/s", r))
}

/// `c_get_attr`: time per `hsaKmtSVMGetAttr` call (the C entry point, node ids) against
/// the Rust `Svm::get_attr` of the same query on the same range, in the same run.
/// Goal <= 1.2.
fn c_get_attr(quick: bool) -> Result<BenchLine> {
    use hsakmt::types::{HSA_SVM_ATTRIBUTE, HSAKMT_STATUS_KERNEL_ALREADY_OPENED, HSAKMT_STATUS_SUCCESS};
    use usvm::{Location, uapi};
    let (batches, calls) = if quick { (5, 20_000) } else { (11, 100_000) };
    let opened = hsakmt::hsaKmtOpenKFD();
    if opened != HSAKMT_STATUS_SUCCESS && opened != HSAKMT_STATUS_KERNEL_ALREADY_OPENED {
        bail!("hsaKmtOpenKFD failed with status {opened}");
    }
    let k = usvm::kfd::current()?;
    let svm = k.svm();
    let g = svm.gpu_ids()[0];
    let node = k.node_of_gpu(g).expect("a GPU node");
    let buf = svm.alloc(2 << 20)?;
    svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g), Attr::PreferredLoc(Location::Gpu(g))])?;
    let c_query = [
        HSA_SVM_ATTRIBUTE { r#type: uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, value: 0 },
        HSA_SVM_ATTRIBUTE { r#type: uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, value: 0 },
        HSA_SVM_ATTRIBUTE { r#type: uapi::KFD_IOCTL_SVM_ATTR_ACCESS, value: node },
        HSA_SVM_ATTRIBUTE { r#type: uapi::KFD_IOCTL_SVM_ATTR_GRANULARITY, value: 0 },
    ];
    let rust_query = [
        Attr::PreferredLoc(Location::Undefined),
        Attr::PrefetchLoc(Location::Undefined),
        Attr::Access(g),
        Attr::Granularity(0),
    ];
    let (addr, len) = (buf.addr(), buf.len());
    // Alternate the two, batch by batch, so that both see the same machine.
    let (mut c_ns, mut rust_ns) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        c_ns.push(median_ns_per_call(1, calls, |_| {
            let mut q = c_query;
            // SAFETY: `q` is an array of four attributes, alive for the call.
            let s =
                unsafe { hsakmt::hsaKmtSVMGetAttr(addr as *mut libc::c_void, len as u64, 4, q.as_mut_ptr()) };
            assert_eq!(s, HSAKMT_STATUS_SUCCESS);
            std::hint::black_box(&q);
        }));
        rust_ns.push(median_ns_per_call(1, calls, |_| {
            let mut q = rust_query;
            svm.get_attr(addr, len, &mut q).expect("get_attr");
            std::hint::black_box(&q);
        }));
    }
    drop(buf);
    drop(k);
    hsakmt::hsaKmtCloseKFD();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(BenchLine::new("c_get_attr", "ns/call", median(c_ns), median(rust_ns)))
}

fn pingpong_size(quick: bool) -> (usize, usize) {
    // 1 MiB of shared counters: the kernel's policy pays a fixed ~2.5 ms per turn (two
    // faults and migrations), the adaptive one a system call per GPU access to the pinned
    // pages, so the ratio falls with the size (DESIGN.md, "Placement policy").
    if quick { (1 << 20, 100) } else { (1 << 20, 300) }
}

/// CPU/GPU ping-pong: throughput under the adaptive policy over the kernel's (goal >= 3).
fn adaptive_pingpong(quick: bool) -> Result<BenchLine> {
    let (bytes, turns) = pingpong_size(quick);
    Ok(BenchLine::of("adaptive_pingpong", "Mops/s", usvm::bench::policy::pingpong(bytes, turns)?.0))
}

/// The same ping-pong: pages migrated under the adaptive policy over the kernel's (goal
/// <= 0.1).
fn adaptive_pingpong_pages(quick: bool) -> Result<BenchLine> {
    let (bytes, turns) = pingpong_size(quick);
    Ok(BenchLine::of("adaptive_pingpong_pages", "pages", usvm::bench::policy::pingpong(bytes, turns)?.1))
}

fn stream_size(quick: bool) -> (usize, usize) {
    if quick { (16 << 20, 3) } else { (64 << 20, 5) }
}

/// CPU stream at granularity 0 through VRAM-resident data, fault-driven under the adaptive
/// policy, over prefetch + stream (goal >= 0.9).
fn adaptive_stream_cpu(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = stream_size(quick);
    Ok(BenchLine::of("adaptive_stream_cpu", "GB/s", usvm::bench::policy::stream(true, bytes, reps)?))
}

/// The GPU's stream through RAM-resident data, as `adaptive_stream_cpu` (goal >= 0.9).
fn adaptive_stream_gpu(quick: bool) -> Result<BenchLine> {
    let (bytes, reps) = stream_size(quick);
    Ok(BenchLine::of("adaptive_stream_gpu", "GB/s", usvm::bench::policy::stream(false, bytes, reps)?))
}

/// Random accesses with a hot set over 1.5x the VRAM: adaptive over kernel (goal >= 1.5).
fn adaptive_oversub_hotset(quick: bool) -> Result<BenchLine> {
    let (vram, accesses) = if quick { (24 << 20, 4000) } else { (96 << 20, 16000) };
    Ok(BenchLine::of("adaptive_oversub_hotset", "GB/s", usvm::bench::policy::oversub_hotset(vram, accesses)?))
}
