#!/usr/bin/env bash
# Bounded fuzzing of every target in fuzz/fuzz_targets: builds them once, then runs each for
# SECONDS_PER_TARGET (default 20) with a fixed libFuzzer seed. Exits non-zero on the first
# crash, leaving the input under fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler (libFuzzer).
# Works on the stable toolchain: cargo-fuzz passes -Z flags, which RUSTC_BOOTSTRAP=1 lets
# stable rustc and cargo accept.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
export RUSTC_BOOTSTRAP=1
# No sanitizer: the code under test is safe Rust, and ASan would slow the build and the runs.
# Debug assertions (overflow checks) stay on; 16 codegen units keep the cold build short.
build=(-s none -a --codegen-units 16)
cargo fuzz build "${build[@]}"
for target in $(cargo fuzz list); do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  # Committed seeds are read as a second corpus; new inputs go to fuzz/corpus (not committed).
  seeds=()
  if [ -d "fuzz/seeds/$target" ]; then seeds=("fuzz/seeds/$target"); fi
  log="fuzz/artifacts/$target.log"
  mkdir -p fuzz/artifacts
  echo "fuzz: $target for ${secs}s (log: $log)"
  status=0
  cargo fuzz run "${build[@]}" "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$secs" -seed=1 -max_len=16384 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(Done |stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
