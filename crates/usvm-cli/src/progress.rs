//! Progress bars (on standard error, drawn only on a terminal) and printing around them.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::Duration;

/// A bar for a task named `name`; its length is set by the task.
pub fn bar(name: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:32}] {pos}/{len} {msg} ({elapsed})")
        .expect("valid template")
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(name.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Prints a line without tearing the bar.
pub fn print_line(pb: &ProgressBar, stderr: bool, line: &str) {
    pb.suspend(|| {
        if stderr {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        } else {
            out(&format!("{line}\n"));
        }
    });
}

/// Writes to standard output; a reader that went away (`usvm run ... | head`) is not an
/// error worth a panic.
pub fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
