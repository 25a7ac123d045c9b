//! Fuzz bodies for usvm, shared by the libFuzzer binaries (`fuzz/`, built apart with
//! coverage instrumentation) and by `cargo test`, which replays every input of
//! `regressions/` plus a bounded number of pseudo-random ones.
//!
//! - [`ioctl_case`]: arbitrary `svm_ioctl` calls against the per-page reference model of
//!   SET_ATTR / GET_ATTR ([`model`]).
//! - [`access_case`]: interleavings of CPU and GPU accesses, kernels, prefetches, attribute
//!   changes and munmap / mmap / madvise, checked against a byte model of the memory.
//!
//! Both panic on a divergence. Each keeps one `Svm` instance per process and runs one input
//! at a time.

mod access;
mod ioctl;
pub mod mem;
pub mod model;

pub use access::{access_case, access_minimize};
pub use ioctl::ioctl_case;

/// Sends usvm's warnings to standard error (the fuzz binaries call it once): a crash by
/// signal, such as a CPU fault that got SIGBUS, then says why.
pub fn log_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
