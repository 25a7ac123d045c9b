//! `usvm doctor`: what this machine gives usvm and what follows from it (the library's
//! [`usvm::doctor`] finds it; this module shows it as text or `--json`), ending with a
//! verdict. Fails (non-zero exit) when usvm cannot run here.

use crate::run::Machine;
use anyhow::{Result, bail};
use serde_json::{Value, json};
use usvm::doctor::{self, Check, Config, Report};

/// `usvm doctor` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// The emulated machine whose GPUs are explained and checked live.
    #[command(flatten)]
    pub machine: Machine,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Width of the text report.
const WIDTH: usize = 100;
/// Where the findings' text starts.
const INDENT: usize = 25;

/// Examines the machine, prints the report, and fails when usvm cannot run here.
pub fn run(a: &DoctorArgs) -> Result<()> {
    let m = &a.machine;
    if m.gpus == 0 || m.gpus > 16 {
        bail!("--gpus must be between 1 and 16, not {}", m.gpus);
    }
    let cfg = Config { gpus: m.gpus, vram_bytes: m.vram, xnack: m.xnack, granularity: m.granularity };
    let r = doctor::examine(&cfg);
    if a.json {
        println!("{}", serde_json::to_string(&to_json(&r))?);
    } else {
        print!("{}", render(&r));
    }
    if !r.can_run() {
        bail!("{}", r.verdict());
    }
    Ok(())
}

/// `text`'s words; a `quoted command` is one word.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for w in text.split(' ') {
        match out.last_mut() {
            Some(last) if open => {
                last.push(' ');
                last.push_str(w);
            }
            _ => out.push(w.to_string()),
        }
        open ^= w.matches('`').count() % 2 == 1;
    }
    out
}

/// `text` cut into lines of at most `width - indent` characters at spaces (never inside a
/// `quoted command`), every line but the first indented by `indent`.
pub fn wrap(text: &str, indent: usize, width: usize) -> String {
    let room = width.saturating_sub(indent).max(20);
    let mut lines: Vec<String> = vec![String::new()];
    for word in words(text) {
        let word = word.as_str();
        let cur = lines.last_mut().expect("one line at least");
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > room {
            lines.push(word.to_string());
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    lines.join(&format!("\n{}", " ".repeat(indent)))
}

fn render_check(c: &Check) -> String {
    let pad = " ".repeat(INDENT);
    let mut out = format!("  {:<5} {:<17}{}\n", c.level.name(), c.topic, wrap(&c.found, INDENT, WIDTH));
    out += &format!("{pad}{}\n", wrap(&c.meaning, INDENT, WIDTH));
    if let Some(fix) = &c.fix {
        out += &format!("{pad}{}\n", wrap(&format!("-> {fix}"), INDENT, WIDTH));
    }
    out
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let c = &r.config;
    let mut out = format!(
        "usvm doctor: Linux {}; {} GPU(s) x {} VRAM, XNACK {}, granularity {}\n",
        r.kernel.release,
        c.gpus,
        crate::units::bytes(c.vram_bytes),
        if c.xnack { "on" } else { "off" },
        c.granularity
    );
    out += &format!("mode: {}\n\n", wrap(&r.mode_line(), 6, WIDTH));
    for check in &r.checks {
        out += &render_check(check);
    }
    out += "\nemulated GPUs\n";
    for (i, g) in r.gpus.iter().enumerate() {
        let xnack = if g.xnack { "on" } else { "off" };
        out += &format!("  {:#x}  {:>9} VRAM  XNACK {xnack}\n", g.id.0, crate::units::bytes(g.vram_bytes));
        // XNACK is the process's mode: the same words for every GPU, shown once.
        let next = r.gpus.get(i + 1);
        if next.is_none_or(|n| n.meaning != g.meaning) {
            out += &format!("{}{}\n", " ".repeat(4), wrap(&g.meaning, 4, WIDTH));
        }
    }
    out += &format!("\nverdict: {}\n", wrap(&r.verdict(), 9, WIDTH));
    out
}

fn outcome(r: &std::result::Result<(), String>) -> Value {
    match r {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e }),
    }
}

fn sys_error(e: Option<(&str, i32)>) -> Value {
    match e {
        None => Value::Null,
        Some((call, errno)) => json!({ "call": call, "errno": errno, "text": doctor::errno_name(errno) }),
    }
}

/// The report as one JSON object.
pub fn to_json(r: &Report) -> Value {
    let u = &r.uffd;
    let m = &r.memory;
    let features: Vec<Value> = u
        .features
        .iter()
        .map(|f| {
            json!({ "name": f.name, "bit": f.bit, "present": f.present,
                    "need": format!("{:?}", f.need).to_lowercase(), "used_for": f.used_for })
        })
        .collect();
    let checks: Vec<Value> = r
        .checks
        .iter()
        .map(|c| {
            json!({ "topic": c.topic, "level": c.level.name().to_lowercase(), "found": c.found,
                    "meaning": c.meaning, "fix": c.fix })
        })
        .collect();
    let gpus: Vec<Value> = r
        .gpus
        .iter()
        .map(|g| json!({ "id": g.id.0, "vram_bytes": g.vram_bytes, "xnack": g.xnack, "meaning": g.meaning }))
        .collect();
    let l = &r.live;
    json!({
        "can_run": r.can_run(),
        "verdict": r.verdict(),
        "mode": u.mode.name(),
        "mode_line": r.mode_line(),
        "config": { "gpus": r.config.gpus, "vram_bytes": r.config.vram_bytes,
                    "xnack": r.config.xnack, "granularity": r.config.granularity },
        "kernel": { "release": r.kernel.release, "version": r.kernel.version.map(|(a, b, c)| [a, b, c]),
                    "move_needs": format!("{}.{}", doctor::MOVE_MIN_KERNEL.0, doctor::MOVE_MIN_KERNEL.1) },
        "userfaultfd": {
            "all_faults_error": sys_error(u.all_faults_error),
            "user_mode_error": sys_error(u.user_mode_error),
            "feature_bits": u.feature_bits,
            "features": features,
            "missing_required": u.missing_required(),
            "unprivileged_userfaultfd": u.unprivileged_sysctl,
            "euid": u.euid,
            "cap_sys_ptrace": u.cap_sys_ptrace,
            "doorbell": outcome(&u.doorbell),
        },
        "thp": { "enabled": r.thp.enabled, "defrag": r.thp.defrag },
        "memory": {
            "physical_bytes": m.physical_bytes,
            "cgroup": m.cgroup.as_ref().map(|c| json!({ "version": c.version, "path": c.path, "limit_bytes": c.limit })),
            "rlimit_as": m.rlimit_as,
            "rlimit_memlock": m.rlimit_memlock,
            "xnack_off_limit_bytes": m.xnack_off_limit,
            "vram_total_bytes": m.vram_total,
        },
        "gpus": gpus,
        "live": { "build": outcome(&l.build), "to_vram": outcome(&l.to_vram), "gpu_read": outcome(&l.gpu_read),
                  "cpu_fault": outcome(&l.cpu_fault), "kernel_fault": outcome(&l.kernel_fault), "millis": l.millis },
        "checks": checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_cuts_at_spaces_and_indents() {
        let w = wrap("aaa bbb ccc ddd", 4, 31);
        assert_eq!(w, "aaa bbb ccc ddd");
        let w = wrap(&"word ".repeat(12), 2, 24);
        assert!(w.lines().all(|l| l.chars().count() <= 24), "{w}");
        assert!(w.lines().skip(1).all(|l| l.starts_with("  w")), "{w}");
        assert_eq!(w.split_whitespace().count(), 12);
        let w = wrap("or run `sysctl -w vm.x=1` now, or `a b`", 0, 20);
        assert_eq!(w, "or run\n`sysctl -w vm.x=1`\nnow, or `a b`");
    }
}
