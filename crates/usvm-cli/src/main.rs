//! `usvm`: the command line of the usvm shared-virtual-memory library.
//!
//! - `usvm demo`: a guided run of the seed on two emulated GPUs.
//! - `usvm run WORKLOAD`: a built-in workload, ending with a summary; `--events`,
//!   `--trace FILE`, `--plot DIR`, `--smi`, `--json`, `--explain` (why data moved: the
//!   patterns found, each with one change), `--fix` (follow that change).
//! - `usvm run WORKLOAD --record FILE` / `usvm replay FILE --policy kernel,adaptive --vram
//!   64M,128M`: record what a workload does to memory, replay it under other policies and
//!   VRAM sizes, with the time each would take on named machines.
//! - `usvm explain TRACE ADDR`: why the data at ADDR is where it is, from a saved trace: the
//!   chain of moves of its page with their causes.
//! - `usvm smi`: the per-GPU snapshot of a fresh instance.
//! - `usvm bench [--quick] [--json]`: benchmarks, each against a floor measured in the
//!   same run.
//! - `usvm doctor [--json]`: what this machine gives usvm (userfaultfd features and
//!   privilege, huge pages, memory limits, each GPU's XNACK mode), with a verdict; exits
//!   non-zero when usvm cannot run here.
//!
//! Logging goes through `tracing`; set `RUST_LOG` (e.g. `RUST_LOG=usvm=debug`).

mod bench;
mod demo;
mod doctor;
mod explain;
mod flows;
mod os;
mod plot;
mod progress;
mod record;
mod replay;
mod run;
mod smi;
mod summary;
mod table;
mod trace;
mod units;
mod why;
mod workload;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "usvm", version, about = "User-space shared virtual memory between CPUs and emulated GPUs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A guided run of the seed: two emulated GPUs, SET_ATTR / GET_ATTR, migrations both
    /// ways, and a closing summary.
    Demo,
    /// Runs a built-in workload and ends with a summary of faults, migrations and VRAM.
    Run(run::RunArgs),
    /// Why is the data at ADDR where it is: the moves of its page in a trace written by
    /// `usvm run ... --trace FILE`, oldest first, each with its cause, then where it is now.
    Explain(explain::ExplainArgs),
    /// Replays a trace written by `usvm run WORKLOAD --record FILE` on real memory under
    /// every combination of --policy and --vram: one table row each (faults, bytes each
    /// way, evictions, wall time, throughput, modeled time on named machines, findings).
    Replay(replay::ReplayArgs),
    /// Prints the per-GPU snapshot (VRAM, BOs, pages, queues) of a fresh instance.
    Smi {
        #[command(flatten)]
        machine: run::Machine,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reports what this machine gives usvm and what follows (userfaultfd features and
    /// privilege, huge pages, memory limits, each GPU's XNACK mode), checks it live, and ends
    /// with a verdict; exits non-zero when usvm cannot run here.
    Doctor(doctor::DoctorArgs),
    /// Runs the benchmarks; each prints its ratio against a floor measured in the same run.
    Bench {
        /// Smaller sizes and fewer repetitions (every benchmark still runs).
        #[arg(long)]
        quick: bool,
        /// One JSON object per line: {"name","value","unit","floor","ratio"}.
        #[arg(long)]
        json: bool,
        /// Run only the benchmarks whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Run each benchmark with the causal record off, then on, and print the cost of
        /// recording (the ratio of the two values; goal: within 5 %).
        #[arg(long)]
        history_cost: bool,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed standard error (`usvm ... 2>&1 | head`) must not turn into a panic.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo => demo::run(),
        Cmd::Run(a) => run::run(&a),
        Cmd::Explain(a) => explain::run(&a),
        Cmd::Replay(a) => replay::run(&a),
        Cmd::Smi { machine, json } => machine.build().map(|svm| smi::print(&svm, "idle", json)),
        Cmd::Doctor(a) => doctor::run(&a),
        Cmd::Bench { quick, json, filter, history_cost: false } => bench::run(quick, json, filter.as_deref()),
        Cmd::Bench { quick, json, filter, history_cost: true } => {
            bench::history_cost(quick, json, filter.as_deref())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usvm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
