//! Record and replay: `usvm run W --record FILE` writes what a workload did to shared
//! virtual memory ([`capture`], in the [`format`] of a trace file); `usvm replay FILE`
//! does it again on real memory under every combination of `--policy` and `--vram`
//! ([`play`]), and prints one table row per replay with the time it would take on real
//! machines ([`model`], [`report`]).

mod capture;
mod decode;
pub mod format;
#[cfg(test)]
mod format_tests;
pub mod model;
mod play;
mod report;

pub use capture::{Capture, Written};

use crate::progress;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use usvm::Policy;

/// `usvm replay` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// A trace written by `usvm run WORKLOAD --record FILE`.
    pub file: PathBuf,
    /// The placement policies to replay under, comma separated (kernel, adaptive).
    #[arg(long, value_delimiter = ',', default_value = "kernel,adaptive", value_parser = parse_policy)]
    pub policy: Vec<Policy>,
    /// VRAM sizes per GPU to replay with, comma separated (e.g. 64M,128M,256M; default:
    /// the recorded size).
    #[arg(long, value_delimiter = ',', value_parser = crate::run::parse_size)]
    pub vram: Vec<u64>,
    /// Replays of each combination; its row is the one of median wall time (the counts of
    /// a single-threaded trace are the same in all of them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// One JSON object per replay, one per line.
    #[arg(long)]
    pub json: bool,
    /// Write the oversubscription curve (throughput against VRAM size, a line per policy)
    /// into this directory as oversubscription.svg.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

/// A policy's name on the command line.
pub fn parse_policy(s: &str) -> std::result::Result<Policy, String> {
    Policy::from_name(s.trim()).ok_or_else(|| format!("unknown policy '{s}': use kernel or adaptive"))
}

/// Reads and checks a trace file.
pub fn load(path: &std::path::Path) -> Result<format::Trace> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    format::decode(&bytes).with_context(|| format!("cannot replay {}", path.display()))
}

/// Every (policy, VRAM) combination, policies first, `--repeat` times each: a row each, of
/// the replay of median wall time.
fn replays(
    a: &ReplayArgs,
    plan: &play::Plan,
    compute: &model::Compute,
    vrams: &[u64],
) -> Result<Vec<report::Row>> {
    let bar = progress::bar("replay");
    bar.set_length((a.policy.len() * vrams.len()) as u64 * a.repeat as u64);
    let mut rows = Vec::new();
    for &p in &a.policy {
        for &v in vrams {
            let what = format!("{} {}", p.name(), crate::units::bytes(v));
            bar.set_message(what.clone());
            let mut runs = Vec::new();
            for _ in 0..a.repeat {
                runs.push(play::play(plan, p, v).with_context(|| format!("replaying under {what}"))?);
                bar.inc(1);
            }
            runs.sort_by(|x, y| x.wall_s.total_cmp(&y.wall_s));
            let median = runs.swap_remove(runs.len() / 2);
            rows.push(report::Row::of(median, plan.bytes_accessed, compute));
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// `usvm replay`: every (policy, VRAM) combination, in that order, then the output.
pub fn run(a: &ReplayArgs) -> Result<()> {
    let trace = load(&a.file)?;
    let plan = play::Plan::of(&trace);
    let compute = model::Compute::of(&trace);
    let vrams = if a.vram.is_empty() { vec![trace.header.vram] } else { a.vram.clone() };
    if vrams.iter().any(|&v| v < 4096) {
        bail!("--vram must be at least 4 KiB");
    }
    let rows = replays(a, &plan, &compute, &vrams)?;
    let plotted = a.plot.as_deref().map(|dir| report::plot(&rows, dir)).transpose()?;
    if a.json {
        let mut out = String::new();
        for r in &rows {
            out += &serde_json::to_string(r)?;
            out.push('\n');
        }
        progress::out(&out);
    } else {
        let kernels = trace.recs.iter().filter(|r| matches!(r.op, format::Op::Launch { .. })).count();
        let mut out =
            report::describe(&trace.header, trace.recs.len(), plan.threads(), kernels, plan.bytes_accessed);
        out += &report::render(&rows);
        if let Some(p) = plotted {
            out += &format!("plot: {}\n", p.display());
        }
        progress::out(&out);
    }
    Ok(())
}
