#!/usr/bin/env bash
# Instructions (valgrind callgrind) one triage-loop binary executes for a bounded load, for
# comparing two builds independently of machine load: loadgen sends REQS requests (~512 spans
# each, PCT% failing runs, unique trace ids) at RATE requests/s. Counting starts after a warm-up
# of WARM requests (default 100; 0 for none) with 5% failing runs, so one-time work is not
# counted, and stops once the failure side has settled. Prints the failures recorded and the
# instruction total of the load (the largest dump); per failed run = (total at PCT=5 - total at
# PCT=0) / failures. STEPS sets the tool-calling steps per run (loadgen --steps, default 1).
# Takes ~3 minutes at the defaults.
#
#   bench/callgrind.sh BIN NAME PCT [REQS] [RATE]     e.g. bench/callgrind.sh target/release/triage-loop new 5 600 8
#
# Needs valgrind, the release examples (cargo build --release --examples) and free ports 47447,
# 35519, 46199, 44407 on 127.0.0.1. Work files (callgrind_annotate them) go to /tmp/triage-cg/NAME.
BIN=$1; NAME=$2; PCT=$3; REQS=${4:-600}; RATE=${5:-8}
W=/tmp/triage-cg/$NAME
R=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release
rm -rf "$W" && mkdir -p "$W"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
compare_config "$W" 47447 35519 44407
"$R/examples/count_sink" --grpc 127.0.0.1:35519 --stats 127.0.0.1:46199 --max-runtime 30m --quiet >"$W/sink.log" 2>&1 &
SINK=$!
RUST_LOG=warn valgrind --tool=callgrind ${CG_OPTS:-} --callgrind-out-file="$W/cg.out" "$BIN" serve --config "$W/config.yaml" >"$W/tl.log" 2>&1 &
PID=$!
for i in $(seq 1 120); do curl -s -o /dev/null 127.0.0.1:44407/metrics && break; sleep 1; done
sleep 2
# Settles: waits (bounded) until the assembler holds nothing and the failure count stops
# moving; leaves the count in $fails.
settle() {
  local m held prev=-1 i
  for i in $(seq 1 240); do
    m=$(curl -s --max-time 5 127.0.0.1:44407/metrics)
    held=$(awk '/^triage_assembler_traces / {s+=$NF} END {print s+0}' <<<"$m")
    fails=$(awk '/^triage_failures_total/ {s+=$NF} END {print s+0}' <<<"$m")
    if [ "$held" = 0 ] && [ "$fails" = "$prev" ]; then return; fi
    prev=$fails; sleep 2
  done
}
# Warm-up before counting, the same for every PCT: WARM requests with failing runs, so what is
# built once (the fingerprint's regex, the regexes' lazy DFA states, SQLite's page cache, the
# first issues) is not charged to the failures counted.
if [ "${WARM:-100}" -gt 0 ]; then
  "$R/examples/loadgen" --endpoint 127.0.0.1:47447 --requests "${WARM:-100}" --rate "$RATE" \
    --duration 600s --concurrency 4 --connections 2 --failure-percent 5 --seed 1001 \
    --unique-traces --steps "${STEPS:-1}" --sink-stats http://127.0.0.1:46199 >"$W/warm.log" 2>&1
  settle
fi
warm_fails=${fails:-0}
callgrind_control -z "$PID" >/dev/null 2>&1
"$R/examples/loadgen" --endpoint 127.0.0.1:47447 --requests "$REQS" --rate "$RATE" --duration 600s \
  --concurrency 4 --connections 2 --failure-percent "$PCT" --unique-traces --steps "${STEPS:-1}" \
  --sink-stats http://127.0.0.1:46199 >"$W/lg.log" 2>&1
settle
fails=$((fails - warm_fails))
callgrind_control -d "$PID" >/dev/null 2>&1
sleep 1
kill "$PID"; while kill -0 "$PID" 2>/dev/null; do sleep 0.5; done
kill "$SINK"
echo "$NAME pct=$PCT failures=$fails $(grep RESULT "$W/lg.log" | tr ' ' '\n' | grep -E 'spans_ok|sink_spans' | tr '\n' ' ') dumps=$(ls $W/cg.out* | tr '\n' ' ')"
for f in $W/cg.out*; do echo "$f $(callgrind_annotate $f 2>/dev/null | grep -m1 'PROGRAM TOTALS')"; done
