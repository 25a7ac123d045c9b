#!/usr/bin/env bash
# Builds the libFuzzer binaries with coverage instrumentation on the STABLE toolchain
# (libfuzzer-sys + LLVM's SanitizerCoverage pass through RUSTFLAGS, as cargo-fuzz does,
# without a sanitizer and without nightly), and runs them.
#
#   fuzz/run.sh build                       build both targets
#   fuzz/run.sh run TARGET SECONDS [ARGS]   fuzz TARGET (ioctl | access) for SECONDS, with
#                                           libFuzzer ARGS; the corpus is fuzz/corpus/TARGET
#                                           (seeded from crates/usvm-fuzz/regressions/TARGET)
#   fuzz/run.sh bin TARGET                  print the binary's path (to run it by hand:
#                                           -minimize_crash=1, -runs=N, a single input...)
#
# A crash or divergence leaves its input as fuzz/artifacts/TARGET/crash-*; the script then
# exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"
triple=$(rustc -vV | sed -n 's/^host: //p')
bin() { echo "$PWD/target/$triple/release/$1"; }

build() {
  # --target keeps the flags off build scripts and proc macros.
  RUSTFLAGS="-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cforce-frame-pointers=yes" \
    cargo build --release --locked --target "$triple" --bins
}

run() {
  local target=$1 secs=$2
  shift 2
  mkdir -p "corpus/$target" "artifacts/$target"
  # libFuzzer aborts on a panic (the hook libfuzzer-sys installs) and saves the input.
  "$(bin "$target")" "corpus/$target" "../crates/usvm-fuzz/regressions/$target" \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -max_len=2048 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 "$@"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  bin) bin "$2" ;;
  *) echo "usage: $0 build | run TARGET SECONDS [ARGS] | bin TARGET" >&2; exit 2 ;;
esac
