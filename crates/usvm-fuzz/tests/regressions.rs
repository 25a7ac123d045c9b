//! Replays every input of `regressions/ioctl` and `regressions/access` (crashes and
//! divergences the fuzzers found, each a file of raw bytes), then a bounded number of
//! pseudo-random inputs, through the same bodies the fuzzers run.

use std::path::Path;

/// Pseudo-random inputs per target, per `cargo test` (set `USVM_FUZZ_CASES` for more).
const RANDOM_CASES: usize = 48;

fn replay(dir: &str, case: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    for f in &files {
        eprintln!("replaying {}", f.display());
        case(&std::fs::read(f).unwrap());
    }
    files.len()
}

/// xorshift64*: inputs of 0 to 1024 bytes, the same every run. A failing input is saved
/// as `target/fuzz-failures/<name>-<n>` (for `USVM_FUZZ_REPLAY`, the fuzzers'
/// minimisation, and `regressions/`).
fn random(name: &str, seed: u64, case: fn(&[u8])) {
    let n: usize = std::env::var("USVM_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(RANDOM_CASES);
    let mut x = seed;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..n {
        let len = (next() % 1025) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Err(e) = std::panic::catch_unwind(|| case(&data)) {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let f = dir.join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::write(&f, &data);
            eprintln!("the failing input is saved as {}", f.display());
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn ioctl_regressions() {
    replay("ioctl", usvm_fuzz::ioctl_case);
}

#[test]
fn ioctl_random() {
    random("ioctl", 0x1234_5678_9abc_def1, usvm_fuzz::ioctl_case);
}

#[test]
fn access_regressions() {
    replay("access", usvm_fuzz::access_case);
}

#[test]
fn access_random() {
    random("access", 0x0fed_cba9_8765_4321, usvm_fuzz::access_case);
}

/// `USVM_FUZZ_REPLAY=ioctl:FILE` or `access:FILE` replays one input (nothing otherwise).
#[test]
fn replay_one() {
    let Ok(v) = std::env::var("USVM_FUZZ_REPLAY") else {
        return;
    };
    let (target, file) = v.split_once(':').expect("TARGET:FILE");
    let data = std::fs::read(file).unwrap();
    match target {
        "ioctl" => usvm_fuzz::ioctl_case(&data),
        "access" if std::env::var_os("USVM_FUZZ_MINIMIZE").is_some() => usvm_fuzz::access_minimize(&data),
        "access" => usvm_fuzz::access_case(&data),
        t => panic!("unknown target {t}"),
    }
}
