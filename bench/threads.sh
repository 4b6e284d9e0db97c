#!/usr/bin/env bash
# CPU of each of triage-loop's threads (user and system ticks of 1/100 s, summed per thread
# name) while loadgen sends REQS requests (default 3000, ~512 spans each) flat out with 16 in
# flight, PCT% of the agent runs failing, STEPS tool-calling steps per run, unique trace ids.
# Separates the hot path's workers (tokio-rt-worker) from the store's thread (triage-sqlite).
# Extra `perf record` options in PERF (e.g. PERF="-F 999 -g") profile the same window into the
# work directory; perf events in STAT (e.g. STAT=page-faults,context-switches) are counted
# over it instead. The environment is passed on to triage-loop.
#
#   bench/threads.sh BIN NAME PCT STEPS [REQS]     e.g. bench/threads.sh target/release/triage-loop new 5 3
#
# Needs the release examples (cargo build --release --examples) and free ports 47347, 35419,
# 46099, 44307 on 127.0.0.1 (those of cpu.sh). Work files go to /tmp/triage-threads/NAME.
BIN=$1; NAME=$2; PCT=$3; STEPS=$4; REQS=${5:-3000}
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
start_comparison "/tmp/triage-threads/$NAME" "$BIN"
# Ticks per thread name: "name user system".
ticks() {
  for t in /proc/"$PID"/task/*; do
    echo "$(cat "$t/comm") $(awk '{print $14, $15}' "$t/stat")"
  done | awk '{u[$1] += $2; s[$1] += $3} END {for (k in u) print k, u[k], s[k]}' | sort
}
if [ -n "${PERF:-}" ]; then
  # shellcheck disable=SC2086
  perf record $PERF -p "$PID" -o "$W/perf.data" >/dev/null 2>&1 &
  PP=$!
elif [ -n "${STAT:-}" ]; then
  perf stat -e "$STAT" -p "$PID" -o "$W/stat.txt" >/dev/null 2>&1 &
  PP=$!
fi
ticks >"$W/before"
run_loadgen --requests "$REQS" --rate 0 --concurrency 16 --failure-percent "$PCT" --steps "$STEPS"
sleep 3
ticks >"$W/after"
if [ -n "${PP:-}" ]; then kill -INT "$PP"; wait "$PP" 2>/dev/null; fi
echo "$NAME pct=$PCT steps=$STEPS $(grep RESULT "$W/lg.log" | tr ' ' '\n' | grep -E 'spans_ok|delivered_spans_per_sec' | tr '\n' ' ')"
[ -f "$W/stat.txt" ] && awk '$1 ~ /^[0-9,]+$/ {printf "  %-18s %s\n", $2, $1}' "$W/stat.txt"
join "$W/before" "$W/after" | awk '{printf "  %-18s user %6d  system %6d\n", $1, $4 - $2, $5 - $3}'
stop_comparison
