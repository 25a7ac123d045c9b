//! The `usvm` binary, end to end: every subcommand at small sizes, its JSON, the trace
//! file, the plots, and the errors.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn usvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_usvm")).args(args).output().expect("the usvm binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = usvm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "usvm {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The one-line error of a failing command.
fn fails(args: &[&str]) -> String {
    let out = usvm(args);
    assert!(!out.status.success(), "usvm {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("valid JSON"))
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("usvm-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Checks the summary's fields and that nothing mismatched; returns it.
fn check_summary<'a>(v: &'a Value, workload: &str, gpus: usize) -> &'a Value {
    assert_eq!(v["workload"], workload);
    assert_eq!(v["outcome"]["mismatches"], 0, "{v}");
    assert!(v["outcome"]["bytes_verified"].as_u64().unwrap() > 0);
    assert!(v["outcome"]["operations"].as_u64().unwrap() > 0);
    assert_eq!(v["gpus"].as_array().unwrap().len(), gpus);
    for g in v["gpus"].as_array().unwrap().iter().chain([&v["total"]]) {
        for k in ["cpu_faults", "gpu_faults", "queue_evictions", "vram_peak", "failed_migrations"] {
            assert!(g[k].is_u64(), "{k} in {g}");
        }
        for dir in ["h2d", "d2h"] {
            for t in ["prefetch", "gpu_fault", "cpu_fault", "eviction", "total"] {
                assert!(g[dir][t]["pages"].is_u64() && g[dir][t]["bytes"].is_u64(), "{dir}.{t}");
            }
        }
        assert!(g["throughput_gbps"].is_number());
        // Failed migrations, broken down by errno with a reason: the counts add up.
        let failures = g["failures"].as_array().expect("failures by errno");
        let sum: u64 = failures.iter().map(|f| f["count"].as_u64().unwrap()).sum();
        assert_eq!(sum, g["failed_migrations"].as_u64().unwrap(), "{g}");
        for f in failures {
            assert!(
                f["errno"].as_i64().unwrap() > 0 && f["name"].is_string() && f["reason"].is_string(),
                "{f}"
            );
        }
    }
    assert!(v["top_ranges"].is_array());
    v
}

#[test]
fn every_workload_runs_small_with_xnack_on_and_off() {
    for (w, size, gpus) in [
        ("stream", "8M", "2"),
        ("stencil", "8M", "2"),
        ("random", "8M", "2"),
        ("oversub", "24M", "2"),
        ("pingpong", "2M", "2"),
        ("stream", "4M", "1"),
        ("handoff", "4M", "1"),
        ("early-prefetch", "4M", "1"),
        ("finegrain", "4M", "1"),
    ] {
        for xnack in ["on", "off"] {
            let text = ok(&[
                "run",
                w,
                "--gpus",
                gpus,
                "--vram",
                "8M",
                "--size",
                size,
                "--iterations",
                "2",
                "--xnack",
                xnack,
                "--json",
            ]);
            let lines = json_lines(&text);
            assert_eq!(lines.len(), 1, "{text}");
            let s = check_summary(&lines[0], w, gpus.parse().unwrap());
            assert_eq!(s["settings"]["xnack"], xnack == "on");
            let total = &s["total"];
            let h2d = total["h2d"]["total"]["bytes"].as_u64().unwrap();
            if w != "pingpong" || xnack == "on" {
                assert!(h2d > 0, "{w} xnack {xnack}: nothing migrated to VRAM: {s}");
            }
            // finegrain prefetches: its GPU never faults.
            if xnack == "on" && w != "finegrain" {
                assert!(total["gpu_faults"].as_u64().unwrap() > 0, "{w}: no GPU fault");
                assert!(total["h2d"]["gpu_fault"]["bytes"].as_u64().unwrap() > 0);
            }
            if w == "oversub" {
                assert!(total["d2h"]["eviction"]["bytes"].as_u64().unwrap() > 0, "no eviction: {s}");
                assert_eq!(total["vram_peak"], total["vram_bytes"]);
            }
        }
    }
}

#[test]
fn text_summary_has_the_tables() {
    let text = ok(&["run", "stream", "--size", "4M", "--iterations", "1"]);
    for want in ["== stream", "mismatches 0 (ok)", "gpu faults", "h2d gpu fault", "total", "top ranges"] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn events_are_printed_live_in_kfd_smi_text() {
    let text = ok(&["run", "stream", "--size", "4M", "--iterations", "1", "--events"]);
    let events: Vec<&str> = text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_hexdigit())).collect();
    // MIGRATE_START: "5 <ns> -<pid> @<page>(<npages>) <from>-><to> <prefetch>:<preferred> <trigger>"
    let start = events.iter().find(|l| l.starts_with("5 ")).expect("a MIGRATE_START line");
    let f: Vec<&str> = start.split(' ').collect();
    assert_eq!(f.len(), 7, "{start}");
    assert!(
        f[1].parse::<u64>().is_ok() && f[2].starts_with('-') && f[3].starts_with('@') && f[4].contains("->")
    );
    assert!(events.iter().any(|l| l.starts_with("7 ")), "a PAGE_FAULT_START line");
    assert!(events.iter().any(|l| l.starts_with("6 ")), "a MIGRATE_END line");
    // With --json the events go to standard error and standard output stays JSON.
    let out = usvm(&["run", "stream", "--size", "4M", "--iterations", "1", "--events", "--json"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(json_lines(&stdout).len(), stdout.lines().count());
    assert!(String::from_utf8_lossy(&out.stderr).lines().any(|l| l.starts_with("5 ")));
}

#[test]
fn trace_file_is_chrome_trace_json_with_the_tracks() {
    let dir = tmp("trace");
    let path = dir.join("run.json");
    ok(&[
        "run",
        "oversub",
        "--vram",
        "8M",
        "--size",
        "24M",
        "--iterations",
        "2",
        "--trace",
        path.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("valid JSON");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    let tracks: Vec<String> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "CPU faults",
        "GPU 0x1111 copy engine",
        "GPU 0x1111 queue 0",
        "GPU 0x1111 faults",
        "GPU 0x2222 copy engine",
        "GPU 0x2222 queue 0",
    ] {
        assert!(tracks.iter().any(|t| t == want), "no track {want:?} in {tracks:?}");
    }
    let has =
        |ph: &str, cat: &str| events.iter().any(|e| e["ph"] == ph && (cat.is_empty() || e["cat"] == cat));
    assert!(has("X", "migrate"), "migration spans");
    assert!(has("X", "kernel"), "kernel spans");
    assert!(has("X", "fault"), "GPU fault spans");
    assert!(events.iter().any(|e| e["ph"] == "C" && e["name"] == "VRAM used (MiB)"), "VRAM counter track");
    assert!(
        events.iter().any(|e| e["ph"] == "C" && e["name"] == "resident pages"),
        "residency counter track"
    );
    assert!(events.iter().any(|e| e["ph"] == "X" && e["name"] == "d2h eviction"), "eviction spans");
    for e in events.iter().filter(|e| e["ph"] != "M") {
        assert!(e["ts"].as_f64().unwrap() >= 0.0 && e["pid"] == 1, "{e}");
        if e["ph"] == "X" {
            assert!(e["dur"].as_f64().unwrap() >= 0.0, "{e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The texts of an SVG document, trimmed.
fn svg_texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().into())
        .collect()
}

/// The data lines of a plot (polylines not in the axes' black): colour (lower case) and
/// number of points.
fn svg_series(doc: &roxmltree::Document) -> Vec<(String, usize)> {
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .map(|n| (n.attribute("stroke").unwrap_or("").to_lowercase(), n.attribute("points").unwrap_or("")))
        .filter(|(c, _)| c != "#000000")
        .map(|(c, p)| (c, p.split_whitespace().count()))
        .collect()
}

/// How many rectangles are filled with `fill` (lower case).
fn svg_rects(doc: &roxmltree::Document, fill: &str) -> usize {
    doc.descendants()
        .filter(|n| {
            n.has_tag_name("rect") && n.attribute("fill").is_some_and(|f| f.eq_ignore_ascii_case(fill))
        })
        .count()
}

#[test]
fn plots_are_valid_svg() {
    let dir = tmp("plots");
    let text = ok(&["run", "stream", "--size", "8M", "--iterations", "2", "--plot", dir.to_str().unwrap()]);
    let (blue, orange) = ("#1f77b4", "#ff7f0e");
    let mut samples = 0;
    for (name, title, ylabel, legend) in [
        ("vram.svg", "VRAM in use", "MiB", &["GPU 0x1111", "GPU 0x2222"][..]),
        ("faults.svg", "Fault rate", "faults / s", &["GPU faults", "CPU faults (migrating)"]),
        (
            "residency.svg",
            "Range residency (rows: ranges by address; colour: GPU, grey: RAM)",
            "ranges",
            &["GPU 0x1111", "GPU 0x2222", "system memory"],
        ),
    ] {
        let p = dir.join(name);
        assert!(text.contains(p.to_str().unwrap()), "the summary names {name}");
        let svg = std::fs::read_to_string(&p).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert!(root.descendants().any(|n| n.tag_name().name() == "path" || n.tag_name().name() == "rect"));
        let texts = svg_texts(&doc);
        for want in [title, "time (s)", ylabel].iter().chain(legend) {
            assert!(texts.iter().any(|t| t == want), "{name}: no text {want:?} in {texts:?}");
        }
        assert!(texts.iter().any(|t| t == "0"), "{name}: tick labels in {texts:?}");
        let series = svg_series(&doc);
        match name {
            // A line per GPU through every sample.
            "vram.svg" => {
                assert_eq!(series.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), [blue, orange], "{name}");
                samples = series[0].1;
                assert!(samples >= 2 && series[1].1 == samples, "{name}: {series:?}");
            }
            // GPU and CPU faults, 60 bins each.
            "faults.svg" => assert_eq!(series, [(blue.into(), 60), (orange.into(), 60)], "{name}"),
            // Grey cells, rows x columns (a column per sample up to 200), both GPUs.
            _ => {
                assert!(series.is_empty(), "{name}: {series:?}");
                let grey = svg_rects(&doc, "#dddddd") - 1;
                assert!(grey >= 1, "{name}: no cell");
                if samples <= 200 {
                    assert_eq!(grey % samples, 0, "{name}: {grey} cells for {samples} columns");
                }
                // Both GPUs appear in the heat map (more than their legend's swatch).
                assert!(svg_rects(&doc, blue) > 1 && svg_rects(&doc, orange) > 1, "{name}: both GPUs");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smi_prints_snapshots() {
    let idle = json_lines(&ok(&["smi", "--json", "--gpus", "3", "--vram", "64M"]));
    assert_eq!(idle.len(), 1);
    let gpus = idle[0]["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 3);
    assert_eq!(gpus[0]["vram_total"], 64 << 20);
    assert_eq!(gpus[0]["vram_used"], 0);
    let table = ok(&["smi"]);
    assert!(table.contains("vram total") && table.contains("0x1111"), "{table}");
    let lines = json_lines(&ok(&["run", "stream", "--size", "8M", "--iterations", "2", "--smi", "--json"]));
    let whens: Vec<&str> = lines.iter().filter_map(|l| l["smi"].as_str()).collect();
    assert_eq!(whens, ["half way", "at the end"]);
    let half = lines.iter().find(|l| l["smi"] == "half way").unwrap();
    assert!(half["gpus"][0]["resident_pages"].as_u64().unwrap() > 0, "data in VRAM half way: {half}");
    assert!(lines.iter().any(|l| l["workload"] == "stream"));
}

#[test]
fn bench_quick_json_lines() {
    let lines = json_lines(&ok(&["bench", "--quick", "--json", "--filter", "set_attr"]));
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["name"], "set_attr_1e6_vs_1e3");
    for k in ["value", "floor", "ratio"] {
        assert!(l[k].as_f64().unwrap() > 0.0, "{k}: {l}");
    }
    assert!(l["unit"].is_string());
    let table = ok(&["bench", "--quick", "--filter", "set_attr"]);
    assert!(table.contains("benchmark") && table.contains("set_attr_1e6_vs_1e3"));
}

#[test]
fn demo_runs_to_its_summary() {
    let text = ok(&["demo"]);
    for want in ["[1]", "[8]", "[13]", "Summary of the whole demo", "mismatches 0 (ok)", "top ranges"] {
        assert!(text.contains(want), "missing {want:?}");
    }
}

#[test]
fn bad_input_is_one_clear_error_line() {
    for (args, want) in [
        (&["run", "stream", "--size", "12X"][..], "bad size '12X'"),
        (&["run", "stream", "--size", "0"][..], "must be more than 0"),
        (&["run", "nosuch"][..], "invalid value 'nosuch'"),
        (&["run", "stream", "--xnack", "maybe"][..], "neither on nor off"),
        (&["run", "stream", "--gpus", "0"][..], "--gpus must be between 1 and 16"),
        (&["run", "stencil", "--gpus", "1", "--size", "8M"][..], "at least 2 GPUs"),
        (&["run", "stream", "--size", "5000"][..], "multiple of 4 KiB"),
        (&["run", "stream", "--iterations", "0"][..], "at least 1"),
        (&["bench", "--filter", "nosuch"][..], "no benchmark matches"),
        (&["doctor", "--gpus", "0"][..], "--gpus must be between 1 and 16"),
        (&["run", "stream", "--fix"][..], "--fix applies to the workloads that show a pattern"),
        (&["explain", "/nonexistent/trace.json", "0x1000"][..], "cannot read /nonexistent/trace.json"),
        (&["explain", "/dev/null", "0xzz"][..], "bad address '0xzz'"),
        (&["explain", "/dev/null", "0x1000"][..], "is not a usvm trace"),
    ] {
        let err = fails(args);
        let first = err.lines().next().unwrap_or("");
        assert!(first.contains("error"), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["demo", "--help"],
        &["run", "--help"],
        &["smi", "--help"],
        &["bench", "--help"],
        &["doctor", "--help"],
        &["explain", "--help"],
    ] {
        let text = ok(args);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let run = ok(&["run", "--help"]);
    for w in [
        "stream",
        "stencil",
        "random",
        "oversub",
        "pingpong",
        "handoff",
        "early-prefetch",
        "finegrain",
        "--events",
        "--trace",
        "--plot",
        "--smi",
        "--explain",
        "--fix",
    ] {
        assert!(run.contains(w), "run --help mentions {w}");
    }
}

/// The soak of the reliability issue: a 60-second `usvm run stress` (XNACK on), then a
/// shorter one with XNACK off; every byte verified, no mismatch.
#[test]
fn stress_soak_loses_nothing() {
    for (xnack, seconds) in [("on", "60"), ("off", "10")] {
        let text = ok(&[
            "run",
            "stress",
            "--vram",
            "16M",
            "--size",
            "48M",
            "--seconds",
            seconds,
            "--xnack",
            xnack,
            "--json",
        ]);
        let lines = json_lines(&text);
        let s = check_summary(&lines[0], "stress", 2);
        let o = &s["outcome"];
        assert!(o["operations"].as_u64().unwrap() > 100_000, "{o}");
        assert!(o["bytes_verified"].as_u64().unwrap() > 48 << 20, "{o}");
        // It runs as long as asked, not half as long again (a GPU kernel started before the
        // deadline used to sweep the whole working set first).
        let (took, asked) = (s["seconds"].as_f64().unwrap(), seconds.parse::<f64>().unwrap());
        assert!(took >= asked && took <= asked * 1.25 + 5.0, "asked {asked} s, took {took} s");
        if xnack == "on" {
            let t = &s["total"];
            assert!(t["gpu_faults"].as_u64().unwrap() > 0 && t["cpu_faults"].as_u64().unwrap() > 0, "{t}");
            assert!(t["d2h"]["eviction"]["bytes"].as_u64().unwrap() > 0, "oversubscribed: {t}");
        }
        eprintln!("stress xnack {xnack}: {o}");
    }
}

/// `usvm doctor` on this machine, which runs usvm (the tests need it): exit 0, a verdict that
/// says so, every finding, each GPU's XNACK mode and what follows; `--json` carries it all.
#[test]
fn doctor_says_usvm_can_run_here() {
    let text = ok(&["doctor"]);
    assert!(text.lines().any(|l| l.starts_with("verdict: usvm can run here")), "{text}");
    for want in [
        "mode: ",
        "kernel",
        "userfaultfd",
        "features",
        "MOVE",
        "read(2)/write(2)",
        "doorbells",
        "huge pages",
        "cgroup",
        "XNACK-off limit",
        "RLIMIT_AS",
        "RLIMIT_MEMLOCK",
        "live check",
        "0x1111",
        "0x2222",
        "XNACK on: a GPU access to memory not mapped for it is a retry fault",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    let off = ok(&["doctor", "--gpus", "1", "--vram", "64M", "--xnack", "off"]);
    assert!(off.contains("XNACK off: a GPU access to memory not mapped for it is a fatal fault"), "{off}");
    assert!(off.contains("prefetch or map") && !off.contains("0x2222"), "{off}");

    let v: Value = serde_json::from_str(ok(&["doctor", "--json"]).trim()).expect("one JSON object");
    assert_eq!(v["can_run"], true, "{v}");
    assert!(v["verdict"].as_str().unwrap().starts_with("usvm can run here"));
    assert!(["all faults", "user-mode faults only"].contains(&v["mode"].as_str().unwrap()));
    assert!(v["kernel"]["release"].is_string() && v["kernel"]["version"].is_array());
    let u = &v["userfaultfd"];
    let feature = |name: &str| u["features"].as_array().unwrap().iter().find(|f| f["name"] == name).cloned();
    assert_eq!(feature("MOVE").unwrap()["present"], true);
    assert_eq!(feature("MOVE").unwrap()["need"], "required");
    assert!(feature("SIGBUS").is_some() && feature("WP").is_some());
    assert_eq!(u["missing_required"].as_array().unwrap().len(), 0);
    assert!(u["euid"].is_u64() && u["doorbell"]["ok"].is_boolean());
    assert!(v["thp"]["enabled"].is_string() || v["thp"]["enabled"].is_null());
    let m = &v["memory"];
    let physical = m["physical_bytes"].as_u64().unwrap();
    assert_eq!(m["xnack_off_limit_bytes"].as_u64().unwrap(), physical / 16 * 15);
    assert_eq!(m["vram_total_bytes"], 2 * (256u64 << 20));
    assert!(m["cgroup"].is_object() || m["cgroup"].is_null());
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.iter().map(|g| g["id"].as_u64().unwrap()).collect::<Vec<_>>(), [0x1111, 0x2222]);
    assert!(
        gpus.iter().all(|g| g["xnack"] == true && g["meaning"].as_str().unwrap().starts_with("XNACK on"))
    );
    for step in ["build", "to_vram", "gpu_read", "cpu_fault"] {
        assert_eq!(v["live"][step]["ok"], true, "{step}: {}", v["live"]);
    }
    for c in v["checks"].as_array().unwrap() {
        assert!(["ok", "note", "warn"].contains(&c["level"].as_str().unwrap()), "{c}");
        assert!(c["topic"].is_string() && c["found"].is_string() && c["meaning"].is_string(), "{c}");
    }
}

/// Where usvm cannot run, `usvm doctor` says what to change and exits non-zero: here an
/// address-space limit (1 GB) smaller than the emulated VRAM (2 x 1 GiB).
#[test]
fn doctor_fails_where_usvm_cannot_run() {
    let out = Command::new("sh")
        .args([
            "-c",
            "ulimit -v 1000000 && exec \"$0\" doctor --gpus 2 --vram 1G",
            env!("CARGO_BIN_EXE_usvm"),
        ])
        .output()
        .expect("sh runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("verdict: usvm cannot run here:"), "{stdout}");
    assert!(stdout.contains("FAIL  RLIMIT_AS") && stdout.contains("ulimit -v unlimited"), "{stdout}");
    assert!(stderr.contains("error: usvm cannot run here"), "{stderr}");
}

/// The findings of a `--explain --json` summary.
fn findings(s: &Value) -> &Vec<Value> {
    s["findings"].as_array().unwrap_or_else(|| panic!("--explain puts findings in the summary: {s}"))
}

/// `[start, end)` of the workload's first buffer.
fn first_buffer(s: &Value) -> (u64, u64) {
    let b = &s["buffers"][0];
    let start = b["start"].as_u64().expect("the summary lists the buffers");
    (start, start + b["size"].as_u64().unwrap())
}

/// `usvm run WORKLOAD --gpus 1 --vram 16M ARGS --explain --json` (and `--fix`): its summary.
fn explained(w: &str, args: &[&str], fix: bool) -> Value {
    let mut a = vec!["run", w, "--gpus", "1", "--vram", "16M", "--explain", "--json"];
    a.extend(args);
    if fix {
        a.push("--fix");
    }
    let lines = json_lines(&ok(&a));
    check_summary(&lines[0], w, 1).clone()
}

/// Each workload that shows a pattern (XNACK on): `--explain` finds it on the workload's
/// buffer (one finding per range, or one per GPU, together covering the buffer) with the
/// advice that names the attribute and the range; `--fix`, which follows that advice, leaves
/// nothing to explain.
#[test]
fn each_pattern_is_explained_on_its_buffer_and_following_the_advice_removes_it() {
    for (w, args, kind, advice) in [
        (
            "handoff",
            &["--size", "4M", "--iterations", "8"][..],
            "ping-pong",
            "set ACCESS_IN_PLACE for GPU 0x1111 on {range}: it moved CPU<->GPU",
        ),
        (
            "early-prefetch",
            &["--size", "4M", "--iterations", "3"],
            "wasted prefetch",
            "drop the PREFETCH_LOC to GPU 0x1111 on {range} (or prefetch it right before the kernel that uses it)",
        ),
        (
            "oversub",
            &["--size", "24M", "--iterations", "2"],
            "evicted while hot",
            "give the hot data PREFERRED_LOC on GPU 0x1111 and the cold data PREFERRED_LOC system memory",
        ),
        (
            "finegrain",
            &["--size", "4M", "--iterations", "2"],
            "fault storm",
            "raise GRANULARITY from 0 to 9 on {range}: ",
        ),
    ] {
        let s = explained(w, args, false);
        let (start, end) = first_buffer(&s);
        let mine: Vec<&Value> = findings(&s).iter().filter(|f| f["kind"] == kind).collect();
        assert!(!mine.is_empty(), "{w}: no {kind} in {}", s["findings"]);
        let mut spans: Vec<(u64, u64)> = mine
            .iter()
            .map(|f| {
                let a = f["start"].as_u64().unwrap();
                (a, a + f["len"].as_u64().unwrap())
            })
            .collect();
        spans.sort();
        assert_eq!((spans[0].0, spans[spans.len() - 1].1), (start, end), "{w}: {kind} on {spans:x?}");
        assert!(spans.windows(2).all(|p| p[0].1 == p[1].0), "{w}: {kind} on {spans:x?}");
        for f in &mine {
            let (memory, got) = (f["memory"].as_str().unwrap(), f["advice"].as_str().unwrap());
            assert!(memory.starts_with(&format!("[{:#x}, +", f["start"].as_u64().unwrap())), "{f}");
            assert!(got.contains(&advice.replace("{range}", memory)), "{w}: advice {got:?}");
            assert!(f["count"].as_u64().unwrap() >= 1, "{f}");
        }
        let fixed = explained(w, args, true);
        assert_eq!(findings(&fixed).len(), 0, "{w} --fix: {}", fixed["findings"]);
        eprintln!("{w}: {:.3} s, with --fix {:.3} s", s["seconds"], fixed["seconds"]);
    }
    let text = ok(&[
        "run",
        "finegrain",
        "--gpus",
        "1",
        "--vram",
        "16M",
        "--size",
        "2M",
        "--iterations",
        "1",
        "--explain",
    ]);
    let table = text.split_once("why data moved: 1 finding(s), worst first\n").expect("the findings table").1;
    assert!(table.starts_with("kind ") && table.lines().next().unwrap().ends_with("count  advice"), "{text}");
    assert!(table.lines().nth(2).unwrap().starts_with("fault storm  [0x"), "{text}");
}

/// A workload that prefetches what its kernels use (`stream`, XNACK off) has nothing to
/// explain.
#[test]
fn stream_with_prefetches_has_nothing_to_explain() {
    let lines = json_lines(&ok(&["run", "stream", "--xnack", "off", "--explain", "--json"]));
    let s = check_summary(&lines[0], "stream", 2);
    assert!(s["total"]["h2d"]["prefetch"]["bytes"].as_u64().unwrap() > 0, "it prefetched: {s}");
    assert_eq!(findings(s).len(), 0, "{}", s["findings"]);
    let text = ok(&["run", "stream", "--xnack", "off", "--size", "8M", "--explain"]);
    assert!(text.contains("why data moved: nothing to change"), "{text}");
}

/// The X span of `e`'s track that encloses `e`'s time (the innermost), as Perfetto binds
/// flow events.
fn enclosing<'a>(spans: &[&'a Value], e: &Value) -> Option<&'a Value> {
    let t = e["ts"].as_f64().unwrap();
    spans
        .iter()
        .filter(|x| x["tid"] == e["tid"])
        .filter(|x| {
            let (ts, dur) = (x["ts"].as_f64().unwrap(), x["dur"].as_f64().unwrap());
            ts <= t && t <= ts + dur
        })
        .max_by(|a, b| a["ts"].as_f64().unwrap().total_cmp(&b["ts"].as_f64().unwrap()))
        .copied()
}

/// The flow arrows of a trace as (name, the span they start in, the span they end in), each
/// checked: one start and one end per id with the same name and category, the end bound to
/// its enclosing slice (`bp: "e"`), both inside a span of their track, the end on a
/// migration.
fn arrows(events: &[Value]) -> Vec<(String, String, String)> {
    let spans: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    let ends: std::collections::HashMap<u64, &Value> =
        events.iter().filter(|e| e["ph"] == "f").map(|e| (e["id"].as_u64().unwrap(), e)).collect();
    let starts: Vec<&Value> = events.iter().filter(|e| e["ph"] == "s").collect();
    assert_eq!(starts.len(), ends.len());
    starts
        .iter()
        .map(|s| {
            let f = ends[&s["id"].as_u64().unwrap()];
            assert!(f["name"] == s["name"] && f["cat"] == s["cat"] && f["bp"] == "e", "{s} {f}");
            let from = enclosing(&spans, s).unwrap_or_else(|| panic!("no span around {s}"));
            let to = enclosing(&spans, f).unwrap_or_else(|| panic!("no span around {f}"));
            assert_eq!(to["cat"], "migrate", "{f} ends in {to}");
            let name = |x: &Value| x["name"].as_str().unwrap().to_string();
            (name(s), name(from), name(to))
        })
        .collect()
}

/// The trace links every migration to its cause (flow arrows from the GPU fault, the CPU
/// fault or the SET_ATTR; an eviction to the migration that needed the room and to the fault
/// that brought the data back), stores the causal record after the keys the viewers read,
/// and `usvm explain` tells the chain of moves of a page from it.
#[test]
fn the_trace_links_migrations_to_their_causes_and_explain_reads_it() {
    let dir = tmp("explain");
    let path = dir.join("t.json");
    let p = path.to_str().unwrap();
    let small = ["--gpus", "1", "--vram", "8M", "--size", "2M", "--iterations", "2", "--trace", p, "--json"];
    // CPU faults: the hand-off.
    ok(&[&["run", "handoff"][..], &small].concat());
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let found = arrows(v["traceEvents"].as_array().unwrap());
    assert!(
        found.iter().any(|(n, from, to)| n == "cause" && from == "cpu read fault" && to == "d2h cpu fault")
    );
    assert!(
        found
            .iter()
            .any(|(n, from, to)| n == "cause" && from.starts_with("gpu fault") && to == "h2d gpu fault")
    );

    // Prefetches, evictions and faults bringing evicted data back: the early prefetch.
    let s = &json_lines(&ok(&[&["run", "early-prefetch"][..], &small].concat()))[0];
    let raw = std::fs::read_to_string(&path).unwrap();
    let at = |k: &str| raw.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("no {k}"));
    assert!(at("traceEvents") < at("otherData") && at("otherData") < at("usvmMoves"), "viewers' keys first");
    assert!(at("usvmMoves") < at("usvmRanges") && at("usvmRanges") < at("usvmFindings"));
    let v: Value = serde_json::from_str(&raw).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let ids: std::collections::HashSet<u64> =
        v["usvmMoves"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    for e in events.iter().filter(|e| e["ph"] == "X" && e["cat"] == "migrate") {
        assert!(ids.contains(&e["args"]["move"].as_u64().unwrap_or(0)), "{e}");
        assert!(e["args"]["cause"].is_string(), "{e}");
    }
    assert!(events.iter().any(|e| e["ph"] == "M" && e["args"]["name"] == "SET_ATTR"), "a SET_ATTR track");
    let found = arrows(events);
    for want in [
        ("cause", "SET_ATTR PREFETCH_LOC", "h2d prefetch"),
        ("cause", "SET_ATTR PREFETCH_LOC", "d2h prefetch"),
        ("cause", "gpu fault (migrated)", "h2d gpu fault"),
        ("made room for", "d2h eviction", "h2d gpu fault"),
        ("brought back", "d2h eviction", "h2d gpu fault"),
    ] {
        assert!(found.iter().any(|(n, f, t)| (n.as_str(), f.as_str(), t.as_str()) == want), "no {want:?}");
    }
    let kinds: Vec<&Value> = v["usvmFindings"].as_array().unwrap().iter().map(|f| &f["kind"]).collect();
    assert!(kinds.iter().any(|k| *k == "wasted prefetch"), "{kinds:?}");

    // Why is a byte of the input where it is.
    let (start, _) = first_buffer(s);
    let addr = format!("{:#x}", start + 0x1234);
    let text = ok(&["explain", p, &addr]);
    for want in [
        format!("{addr} is in page {:#x} of the range [{start:#x}, +2 MiB)", start + 0x1000),
        "prefetched to GPU 0x1111 (SET_ATTR PREFETCH_LOC)".into(),
        "evicted from GPU 0x1111 to make room for [".into(),
        "pulled into GPU 0x1111 by a GPU 0x1111 ".into(),
        "now: in system memory (since #".into(),
        "finding: wasted prefetch on".into(),
    ] {
        assert!(text.contains(&want), "no {want:?} in\n{text}");
    }
    let j: Value = serde_json::from_str(ok(&["explain", p, &addr, "--json"]).trim()).unwrap();
    assert_eq!(j["page"], start + 0x1000);
    let moves = j["moves"].as_array().unwrap();
    assert!(moves.len() >= 4, "{j}");
    assert!(moves.windows(2).all(|m| m[0]["at_ns"].as_u64() <= m[1]["at_ns"].as_u64()), "oldest first");
    let back =
        moves.iter().find(|m| m["cause"]["kind"] == "gpu_fault" && m["linked"].is_u64()).expect("a refault");
    let why = back["why"].as_str().unwrap();
    assert!(why.contains(&format!(" ms after it was evicted from there (#{})", back["linked"])), "{why}");
    let last = moves.last().unwrap();
    assert_eq!(
        (last["why"].as_str().unwrap(), &j["now"]["since"]),
        ("prefetched to system memory (SET_ATTR PREFETCH_LOC)", &last["id"])
    );
    assert_eq!(j["now"]["location"], "sysmem");
    assert!(fails(&["explain", p, "0x1000"]).contains("is in no SVM range of this run"));
    let _ = std::fs::remove_dir_all(&dir);
}
