//! `usvm run WORKLOAD`: runs a built-in workload on a fresh instance, records it, and ends
//! with a summary (text or `--json`), optionally the live event stream (`--events`), a
//! Chrome trace (`--trace`), SVG plots (`--plot`), SMI snapshots (`--smi`) and why data
//! moved (`--explain`: `Svm::diagnose`'s findings with their advice).

use crate::record::{Live, Record, Recorder};
use crate::replay::{Capture, format};
use crate::summary::{self, BufferSpan, Settings, Summary};
use crate::why::FindingRec;
use crate::workload::{Ctx, HalfWay, Workload};
use crate::{plot, progress, smi, trace};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;
use usvm::{Policy, Svm};

/// The settings of the emulated machine, shared by `run` and `smi`.
#[derive(clap::Args, Debug, Clone)]
pub struct Machine {
    /// Emulated GPUs.
    #[arg(long, default_value_t = 2)]
    pub gpus: usize,
    /// VRAM per GPU (e.g. 256M, 1G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub vram: u64,
    /// XNACK (GPU retry faults): on or off.
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set, value_name = "on|off")]
    pub xnack: bool,
    /// Default migration granularity, log2 of pages (9: 2 MiB).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u8).range(0..=30))]
    pub granularity: u8,
}

impl Machine {
    /// Builds the instance (under the kernel's policy).
    pub fn build(&self) -> Result<Svm> {
        self.build_with(Policy::Kernel)
    }

    /// Builds the instance under `policy`.
    pub fn build_with(&self, policy: Policy) -> Result<Svm> {
        if self.gpus == 0 || self.gpus > 16 {
            bail!("--gpus must be between 1 and 16, not {}", self.gpus);
        }
        Svm::builder()
            .gpus(self.gpus)
            .vram_bytes(self.vram)
            .xnack(self.xnack)
            .default_granularity(self.granularity)
            .policy(policy)
            .build()
            .context("cannot build the emulated GPUs")
    }
}

/// `usvm run` options.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    #[command(flatten)]
    pub machine: Machine,
    /// Working-set size (default: 64M; pingpong 8M; oversub 1.5x the VRAM of all GPUs).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Iterations (default: per workload).
    #[arg(long)]
    pub iterations: Option<u64>,
    /// How long the stress workload runs (seconds).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seed of the workload's data and random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Print every event as it happens, in the KFD SMI text format (to standard error
    /// with --json).
    #[arg(long)]
    pub events: bool,
    /// Write a Chrome-trace JSON file (open it in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Write SVG plots (VRAM use, fault rate, residency heat map) into this directory.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Print the per-GPU SMI snapshot half way through the run and at its end.
    #[arg(long)]
    pub smi: bool,
    /// End with why data moved: the patterns found in the causal record (ping-pong, wasted
    /// prefetch, hot data evicted, fault storm), each with the memory, how often, and one
    /// change that removes it (`--json`: the summary's `findings`).
    #[arg(long)]
    pub explain: bool,
    /// Follow the advice of the workload's finding (handoff: ACCESS_IN_PLACE for the GPU;
    /// early-prefetch: prefetch right before the kernel; oversub: PREFERRED_LOC on the GPU
    /// for the part that fits, system memory for the rest; finegrain: GRANULARITY 9).
    #[arg(long)]
    pub fix: bool,
    /// The placement policy: kernel (exactly the kernel's behaviour) or adaptive.
    #[arg(long, default_value = "kernel", value_parser = crate::replay::parse_policy)]
    pub policy: Policy,
    /// Record what the workload does (every allocation, SET_ATTR, CPU and GPU access range
    /// in order per thread, kernel launches, timestamps) into FILE, for `usvm replay FILE`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

/// Parses a size: a number with an optional K, M, G or T suffix (powers of 1024), with
/// or without "iB" / "B".
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let bad = || format!("bad size '{s}': use a number with an optional K, M, G or T suffix, e.g. 64M");
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let v = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if v == 0 {
        return Err(format!("bad size '{s}': must be more than 0"));
    }
    Ok(v)
}

fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        _ => Err(format!("'{s}' is neither on nor off")),
    }
}

/// The working-set size and iterations of a run, after checking the options.
fn checked(a: &RunArgs) -> Result<(u64, u64)> {
    let size = a.size.unwrap_or_else(|| a.workload.default_size(a.machine.vram, a.machine.gpus));
    if !size.is_multiple_of(4096) {
        bail!("--size must be a multiple of 4 KiB, not {size}");
    }
    let iterations = a.iterations.unwrap_or_else(|| a.workload.default_iterations());
    if iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    if a.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if a.fix && !a.workload.has_fix() {
        bail!(
            "--fix applies to the workloads that show a pattern ({}), not to {}",
            Workload::with_fix().join(", "),
            a.workload.name()
        );
    }
    if a.record.is_some() && a.workload == Workload::Stress {
        bail!(
            "--record does not apply to stress: its threads race against the clock (--seconds) and it \
             maps and drops memory behind usvm's back, so no replay could follow it; record another workload"
        );
    }
    Ok((size, iterations))
}

/// The recorder of `--record` (off without it).
fn capture(a: &RunArgs, svm: &Svm, size: u64, iterations: u64) -> Result<Capture> {
    let Some(path) = &a.record else { return Ok(Capture::off()) };
    let m = &a.machine;
    let header = format::Header {
        workload: a.workload.name().into(),
        gpus: m.gpus as u32,
        vram: m.vram,
        xnack: m.xnack,
        granularity: m.granularity,
        policy: a.policy.name().into(),
        size,
        iterations,
        seed: a.seed,
        fix: a.fix,
    };
    Capture::to_file(path, &header, svm.gpu_ids())
}

/// The event recorder of a run: sampling for `--trace` and `--plot`, live events with
/// `--events` (printed around the progress bar).
fn recorder(a: &RunArgs, svm: &Arc<Svm>, bar: &indicatif::ProgressBar) -> Result<Recorder> {
    let live = match (a.events, a.json) {
        (false, _) => Live::Off,
        (true, false) => Live::Stdout,
        (true, true) => Live::Stderr,
    };
    let printer = bar.clone();
    Ok(Recorder::start(
        svm.clone(),
        a.trace.is_some() || a.plot.is_some(),
        a.plot.is_some(),
        live,
        move |to, line| progress::print_line(&printer, to == Live::Stderr, &line),
    )?)
}

/// Runs a workload and reports; fails (non-zero exit) when any word mismatched.
pub fn run(a: &RunArgs) -> Result<()> {
    let svm = Arc::new(a.machine.build_with(a.policy)?);
    let (size, iterations) = checked(a)?;
    let cap = capture(a, &svm, size, iterations)?;
    let bar = progress::bar(a.workload.name());
    let rec = recorder(a, &svm, &bar)?;
    let json = a.json;
    let on_half: Option<HalfWay> =
        if a.smi { Some(Box::new(move |svm: &Svm| smi::print(svm, "half way", json))) } else { None };
    let mut ctx =
        Ctx::new(svm.clone(), size as usize, iterations, a.seed, rec.kernel_log(), bar.clone(), on_half);
    ctx.seconds = a.seconds;
    ctx.fix = a.fix;
    ctx.capture = cap.clone();
    let result = a.workload.run(&mut ctx);
    bar.finish_and_clear();
    let mut record = rec.finish();
    let ranges = svm.ranges();
    if a.trace.is_some() || a.explain {
        record.moves = svm.history(0, usize::MAX);
        record.findings = svm.diagnose();
        record.end_ranges = ranges.clone();
    }
    let buffers = ctx.buffer_spans();
    let end_smi = a.smi.then(|| smi::text(&svm, "at the end", a.json));
    drop(ctx);
    let outcome = result.with_context(|| format!("the {} workload failed", a.workload.name()))?;
    let written = cap.finish()?;
    let settings = Settings {
        gpus: a.machine.gpus,
        vram: a.machine.vram,
        xnack: a.machine.xnack,
        granularity: a.machine.granularity,
        size,
        iterations,
    };
    let mut s: Summary = summary::summarize(a.workload.name(), settings, outcome, &record, &svm, &ranges);
    s.buffers =
        buffers.iter().map(|&(start, size)| BufferSpan { start: start as u64, size: size as u64 }).collect();
    if a.explain {
        s.findings = Some(record.findings.iter().map(FindingRec::of).collect());
    }
    report(a, &s, &record, written)?;
    if let Some(t) = end_smi {
        progress::out(&t);
    }
    if s.outcome.mismatches > 0 {
        bail!("{} word(s) did not hold the expected value", s.outcome.mismatches);
    }
    Ok(())
}

/// Writes the trace and plots, and prints the summary (and where the files went).
fn report(a: &RunArgs, s: &Summary, record: &Record, written: Option<crate::replay::Written>) -> Result<()> {
    if let Some(path) = &a.trace {
        trace::write(record, path)?;
    }
    let plots = match &a.plot {
        Some(dir) => plot::write_all(record, a.machine.vram, dir)?,
        None => Vec::new(),
    };
    if a.json {
        progress::out(&format!("{}\n", serde_json::to_string(s)?));
        return Ok(());
    }
    let mut text = summary::render(s);
    if let Some(path) = &a.trace {
        text += &format!("trace: {}\n", path.display());
    }
    for p in &plots {
        text += &format!("plot: {}\n", p.display());
    }
    if let Some(w) = written {
        text += &format!(
            "record: {} ({} records, {}; replay it with `usvm replay {}`)\n",
            w.path.display(),
            w.records,
            crate::units::bytes(w.bytes),
            w.path.display()
        );
    }
    progress::out(&text);
    Ok(())
}
