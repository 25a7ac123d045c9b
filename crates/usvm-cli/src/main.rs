//! `usvm`: the command line of the usvm shared-virtual-memory library.
//!
//! - `usvm demo`: a guided tour of the SVM attribute API on two emulated GPUs.
//! - `usvm bench [--quick] [--json]`: benchmarks, each against a floor measured in the
//!   same run.

mod bench;
mod demo;
mod table;

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
    /// A guided run: two emulated GPUs, a buffer, SET_ATTR / GET_ATTR and the range table.
    Demo,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo => demo::run(),
        Cmd::Bench { quick, json, filter } => bench::run(quick, json, filter.as_deref()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usvm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
