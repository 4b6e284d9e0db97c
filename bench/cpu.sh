#!/usr/bin/env bash
# CPU of one triage-loop binary under the same 5%-failing load (unique trace ids), for comparing
# two builds on one machine: prints the process's CPU ticks (1/100 s) while loadgen sends 6000
# requests (~3.08 M spans). RATE=0 sends flat out; PCT sets the failing runs (default 5); STEPS
# the tool-calling steps per run (loadgen --steps, default 1); NOPERF=1 skips the perf profile.
#
#   bench/cpu.sh BIN NAME        e.g. bench/cpu.sh target/release/triage-loop new
#
# Needs the release examples (cargo build --release --examples) and free ports 47347, 35419,
# 46099, 44307 on 127.0.0.1. Work files go to /tmp/triage-cpu/NAME.
BIN=$1
NAME=$2
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
start_comparison "/tmp/triage-cpu/$NAME" "$BIN"
t0=$(awk '{print $14+$15}' "/proc/$PID/stat")
if [ -z "${NOPERF:-}" ]; then
  perf record -F 997 -g -p "$PID" -o "$W/perf.data" >/dev/null 2>&1 &
  PERF=$!
fi
run_loadgen --requests 6000 --rate "${RATE:-700}" --concurrency 8 --failure-percent "${PCT:-5}" \
  --steps "${STEPS:-1}"
sleep 4
t1=$(awk '{print $14+$15}' "/proc/$PID/stat")
if [ -n "${PERF:-}" ]; then kill -INT "$PERF"; wait "$PERF" 2>/dev/null; fi
echo "$NAME cpu_ticks=$((t1 - t0)) $(grep RESULT "$W/lg.log" | tr ' ' '\n' | grep -E 'spans_ok|send_secs' | tr '\n' ' ')"
stop_comparison
