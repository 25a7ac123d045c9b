//! The C test suite of `libhsakmt.so`: each program of `tests/c/` is compiled by the system
//! C compiler (`cc`) against the crate's header and the shared library cargo built together
//! with this test (the lib target is a cdylib, so `cargo test -p usvm-hsakmt` builds it, into
//! `target/<profile>/deps/`), then run; it must exit with status 0. One `#[test]` per
//! program (some run twice, on different emulated machines), so they run in parallel.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The C programs of `tests/c/` (each must have a test below).
const PROGRAMS: &[&str] =
    &["faults", "fork", "memory", "open_close", "pm4_dispatch", "sdma", "smi", "stubs", "svm_attr", "xnack"];

/// Longest a program may run (each takes well under 5 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The newest modification time under `path` (a file or a directory tree).
fn newest(path: &Path) -> Option<(SystemTime, PathBuf)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return Some((meta.modified().ok()?, path.to_path_buf()));
    }
    std::fs::read_dir(path).ok()?.flatten().filter_map(|e| newest(&e.path())).max_by_key(|(t, _)| *t)
}

/// The directory holding the `libhsakmt.so` built with this test. `cargo test` builds the
/// lib target (a cdylib among its crate types) into `target/<profile>/deps/`, the directory
/// of this test executable, and does not copy it up to `target/<profile>/` (only `cargo
/// build` does: that copy may be from an older build), so `deps/` comes first. Panics when
/// the library is missing, or older than a source it is built from that cargo saw when it
/// built this test (a source edited since then does not count: the test and the library are
/// of one build).
fn lib_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(find_lib_dir).clone().unwrap_or_else(|e| panic!("{e}"))
}

fn find_lib_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the path of this test executable: {e}"))?;
    let deps = exe.parent().ok_or("this test executable has no directory")?;
    let profile = deps.parent().ok_or("this test executable is not in target/<profile>/deps/")?;
    let (dir, built) = [deps, profile]
        .iter()
        .find_map(|d| {
            let t = std::fs::metadata(d.join("libhsakmt.so")).and_then(|m| m.modified()).ok()?;
            Some((d.to_path_buf(), t))
        })
        .ok_or_else(|| {
            format!(
                "libhsakmt.so is in neither {} nor {}: cargo builds it with this test when \
                 usvm-hsakmt's lib target has crate-type cdylib; run `cargo test -p usvm-hsakmt`",
                deps.display(),
                profile.display()
            )
        })?;
    let so = dir.join("libhsakmt.so");
    let test_built = std::fs::metadata(&exe).and_then(|m| m.modified()).map_err(|e| e.to_string())?;
    let here = crate_dir();
    let sources = [
        here.join("src"),
        here.join("include"),
        here.join("Cargo.toml"),
        here.join("build.rs"),
        here.join("../usvm/src"),
        here.join("../usvm/Cargo.toml"),
    ];
    for s in &sources {
        if let Some((t, f)) = newest(s)
            && t > built
        {
            if t > test_built {
                println!("note: {} changed after this test was built", f.display());
                continue;
            }
            return Err(format!(
                "{} is stale: {} changed after it was built, before this test was; rebuild it \
                 with `cargo test -p usvm-hsakmt`",
                so.display(),
                f.display()
            ));
        }
    }
    Ok(dir)
}

/// A fresh directory for one test's executable.
fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "usvm-hsakmt-c-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

/// Compiles `tests/c/<program>.c` into `dir`; the executable's path, or the compiler's
/// complaint.
fn compile(program: &str, dir: &Path) -> Result<PathBuf, String> {
    let lib = lib_dir();
    let src = crate_dir().join("tests/c").join(format!("{program}.c"));
    let exe = dir.join(program);
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{}", crate_dir().join("include").display()))
        .arg(&src)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lhsakmt")
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("running the C compiler `cc`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "compiling {} failed ({}):\n{}{}",
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(exe)
}

/// Reads a child's pipe to its end on a thread.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Compiles and runs one C program with the emulated machine of `env` (every other `USVM_*`
/// variable removed); fails unless it exits with status 0, showing its output.
fn run_c_test(program: &str, env: &[(&str, &str)]) {
    let dir = scratch_dir(program);
    let exe = compile(program, &dir).unwrap_or_else(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        panic!("{e}")
    });
    let mut cmd = Command::new(&exe);
    for v in ["USVM_GPUS", "USVM_VRAM", "USVM_XGMI_HIVE", "USVM_XNACK", "HSA_XNACK"] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the C test") {
            break Some(s);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let took = start.elapsed();
    println!("{program} {env:?}: {status:?} in {took:.2?}\n{output}");
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("C test {program} {env:?} failed: {s} after {took:.2?}; its output:\n{output}"),
        None => {
            panic!("C test {program} {env:?} still ran after {RUN_TIMEOUT:?} (killed); its output:\n{output}")
        }
    }
}

macro_rules! c_test {
    ($name:ident, $program:literal $(, $var:literal = $val:literal)*) => {
        #[test]
        fn $name() {
            run_c_test($program, &[$(($var, $val)),*]);
        }
    };
}

c_test!(open_close, "open_close");
c_test!(
    open_close_three_gpus_64m_in_a_hive,
    "open_close",
    "USVM_GPUS" = "3",
    "USVM_VRAM" = "64M",
    "USVM_XGMI_HIVE" = "1"
);
c_test!(svm_attr, "svm_attr");
c_test!(xnack, "xnack");
c_test!(memory, "memory");
c_test!(memory_one_gpu_64m, "memory", "USVM_GPUS" = "1", "USVM_VRAM" = "64M");
c_test!(sdma, "sdma");
c_test!(pm4_dispatch_xnack_off, "pm4_dispatch", "USVM_XNACK" = "0");
c_test!(pm4_dispatch_xnack_on, "pm4_dispatch", "USVM_XNACK" = "1");
c_test!(faults, "faults");
c_test!(smi, "smi");
c_test!(fork, "fork");
c_test!(stubs, "stubs");

/// Every C program has a test above, and nothing else sits in `tests/c/`.
#[test]
fn every_c_program_is_run() {
    let mut found: Vec<String> = std::fs::read_dir(crate_dir().join("tests/c"))
        .expect("tests/c")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".c")).map(str::to_string))
        .collect();
    found.sort();
    assert_eq!(found, PROGRAMS, "tests/c holds other programs than this file runs");
    // The programs the c_test! invocations of this file name (their second argument).
    let me = std::fs::read_to_string(crate_dir().join("tests/c_tests.rs")).expect("c_tests.rs");
    let run: Vec<&str> = me
        .split("c_test!(")
        .skip(1)
        .filter_map(|call| call.split(')').next()?.split(',').nth(1))
        .map(|p| p.trim().trim_matches('"'))
        .collect();
    for p in PROGRAMS {
        assert!(run.contains(p), "no c_test! runs {p} (runs {run:?})");
    }
}

/// stubs.c names every function hsakmt.h declares (so that each one is linked).
#[test]
fn stubs_c_names_every_function_of_the_header() {
    let header = std::fs::read_to_string(crate_dir().join("include/hsakmt/hsakmt.h")).expect("hsakmt.h");
    let stubs = std::fs::read_to_string(crate_dir().join("tests/c/stubs.c")).expect("stubs.c");
    let mut names: Vec<&str> = header
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("hsaKmt"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 91, "only {} functions found in hsakmt.h", names.len());
    assert_eq!(stubs.matches("FN(hsaKmt").count(), names.len(), "stubs.c names other functions");
    let missing: Vec<_> = names.iter().filter(|n| !stubs.contains(&format!("FN({n})"))).collect();
    assert!(missing.is_empty(), "stubs.c does not name {missing:?}");
}
