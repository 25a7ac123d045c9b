//! `usvm run WORKLOAD --record FILE` and `usvm replay FILE`, end to end: the same counts
//! on every replay of a single-threaded trace, the table, the JSON and the oversubscription
//! curve under both policies and two VRAM sizes, and damaged traces refused in one line.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn usvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usvm")).args(args).output().expect("the usvm binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = usvm(args);
    assert!(out.status.success(), "usvm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The error of a failing command (checked to be one line, and no panic).
fn fails(args: &[&str]) -> String {
    let out = usvm(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "usvm {args:?} should have failed cleanly: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, not {err}");
    err
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON object per line")).collect()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("usvm-replay-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Records `usvm run ARGS` into a fresh file; returns its path.
fn record(name: &str, args: &[&str]) -> String {
    let f = tmp(name).join("run.usvmrec").to_string_lossy().to_string();
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--record", &f]);
    let text = ok(&all);
    assert!(text.contains(&format!("record: {f} (")), "{text}");
    f
}

const COUNTS: [&str; 6] =
    ["gpu_faults", "cpu_faults", "bytes_to_vram", "bytes_to_ram", "bytes_evicted", "errors"];

/// A sweep over a working set 1.5 times the recorded VRAM, replayed three times at two VRAM
/// sizes: every count is the same each time, and the smaller VRAM evicts.
#[test]
fn a_single_threaded_trace_replays_to_the_same_counts_every_time() {
    let f = record("same", &["oversub", "--gpus", "1", "--vram", "8M", "--size", "12M", "--iterations", "2"]);
    let runs: Vec<Vec<Value>> = (0..3)
        .map(|_| json_lines(&ok(&["replay", &f, "--policy", "kernel", "--vram", "4M,16M", "--json"])))
        .collect();
    for rows in &runs {
        assert_eq!(rows.len(), 2);
        for (r, first) in rows.iter().zip(&runs[0]) {
            for k in COUNTS {
                assert_eq!(r[k], first[k], "{k}: {r} against {first}");
            }
        }
    }
    let (small, large) = (&runs[0][0], &runs[0][1]);
    assert_eq!(small["vram"], 4 << 20);
    assert!(small["bytes_evicted"].as_u64().unwrap() > 0, "{small}");
    assert_eq!(large["bytes_evicted"], 0, "{large}");
    assert!(small["gpu_faults"].as_u64().unwrap() > large["gpu_faults"].as_u64().unwrap());
    assert_eq!(small["errors"], 0);
}

/// Both policies, two VRAM sizes: four rows in order, in the table and as JSON, and the
/// curve with a line of two points per policy.
#[test]
fn replay_prints_a_row_per_policy_and_vram_with_json_and_a_plot() {
    let f = record("grid", &["stream", "--gpus", "2", "--size", "8M", "--iterations", "2"]);
    let text = ok(&["replay", &f, "--policy", "kernel,adaptive", "--vram", "4M,16M"]);
    assert!(text.starts_with("replay of stream (2 GPUs, XNACK on"), "{text}");
    for col in ["policy", "gpu faults", "cpu faults", "to vram", "to ram", "evicted", "wall s", "GB/s"] {
        assert!(text.contains(col), "no column {col}: {text}");
    }
    for col in ["mi210", "mi250x", "h100", "findings"] {
        assert!(text.contains(col), "no column {col}: {text}");
    }
    let rows: Vec<&str> =
        text.lines().filter(|l| l.starts_with("kernel ") || l.starts_with("adaptive ")).collect();
    assert_eq!(rows.len(), 4, "{text}");
    let dir = tmp("grid-plot");
    let d = dir.to_string_lossy().to_string();
    let json = json_lines(&ok(&[
        "replay",
        &f,
        "--policy",
        "kernel,adaptive",
        "--vram",
        "4M,16M",
        "--json",
        "--plot",
        &d,
    ]));
    let keys: Vec<(String, u64)> = json
        .iter()
        .map(|r| (r["policy"].as_str().unwrap().to_string(), r["vram"].as_u64().unwrap()))
        .collect();
    let (k, a) = ("kernel".to_string(), "adaptive".to_string());
    assert_eq!(keys, [(k.clone(), 4 << 20), (k, 16 << 20), (a.clone(), 4 << 20), (a, 16 << 20)]);
    for r in &json {
        assert!(r["wall_seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["throughput_gbps"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["bytes_accessed"], json[0]["bytes_accessed"]);
        assert!(r["bytes_to_vram"].as_u64().unwrap() > 0, "the GPUs faulted their parts in: {r}");
        for p in ["mi210", "mi250x", "h100"] {
            assert!(r["modeled_seconds"][p].as_f64().unwrap() > 0.0, "{p}: {r}");
        }
        assert!(r["findings"].is_array(), "{r}");
    }
    let svg = std::fs::read_to_string(dir.join("oversubscription.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let lines: Vec<usize> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") != Some("#000000"))
        .map(|n| n.attribute("points").unwrap().split_whitespace().count())
        .collect();
    assert_eq!(lines, [2, 2], "a line of two points per policy");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).map(str::trim).collect();
    for want in ["kernel", "adaptive", "VRAM per GPU (MiB)", "GB/s"] {
        assert!(texts.contains(&want), "no {want:?} in {texts:?}");
    }
}

/// A trace cut short, a byte changed, another file, another version, no file: each is one
/// line naming the problem, exit code 1, never a panic.
#[test]
fn damaged_traces_are_one_clear_error() {
    let f = record("damaged", &["pingpong", "--gpus", "1", "--size", "2M", "--iterations", "2"]);
    let bytes = std::fs::read(&f).unwrap();
    let dir = tmp("damaged-copies");
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p.to_string_lossy().to_string()
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let mut version = bytes.clone();
    version[8] = 9;
    for (path, want) in [
        (write("cut", &bytes[..bytes.len() * 2 / 3]), "truncated"),
        (write("cut-end", &bytes[..bytes.len() - 1]), "truncated"),
        (write("flipped", &flipped), "corrupt"),
        (write("version", &version), "version 9"),
        (write("other", b"{\"traceEvents\": []}"), "not a usvm replay trace"),
        ("/nonexistent/run.usvmrec".to_string(), "cannot read"),
    ] {
        let err = fails(&["replay", &path, "--policy", "kernel"]);
        assert!(err.contains(want) && err.contains("error"), "{path}: wanted {want:?} in {err}");
    }
    let bad = usvm(&["replay", &f, "--policy", "fastest"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown policy 'fastest'"));
    assert!(
        fails(&["run", "stress", "--record", &write("s", b"")]).contains("--record does not apply to stress")
    );
}

#[test]
fn replay_and_record_have_help() {
    let text = ok(&["replay", "--help"]);
    for w in ["--policy", "--vram", "--repeat", "--json", "--plot", "kernel,adaptive"] {
        assert!(text.contains(w), "replay --help mentions {w}: {text}");
    }
    let run = ok(&["run", "--help"]);
    assert!(run.contains("--record") && run.contains("--policy"), "{run}");
}
