#!/usr/bin/env bash
# End-to-end load benchmark: triage-loop (classifying and tagging) against rotel as a plain
# OTLP/gRPC pass-through, the same pre-encoded load through each into a counting sink, plus an
# overload phase that checks triage-loop's memory stays under its export-queue cap.
# Everything listens on 127.0.0.1; every loop and wait is bounded. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/load.sh [options]

  --rounds N          alternating rounds (triage-loop, rotel, triage-loop, rotel, ...)  [3]
  --requests N        requests per run (~512 spans, ~330 KiB each)                       [3000]
  --concurrency N     requests in flight from the load generator                         [8]
  --connections N     HTTP/2 connections the load generator spreads them over            [4]
  --rotel-batching    let rotel batch (its defaults: 8192 spans / 200 ms) instead of
                      --disable-batching
  --overload-secs N   length of the overload phase                                       [20]
  --queue-mib N       triage-loop exporters.otlp.sending_queue.queue_size_mib in overload [64]
  --sink-delay-ms N   the slow sink's delay per request in overload                      [200]
  --no-throughput     skip the triage-loop vs rotel phase
  --no-overload       skip the overload phase
  --no-loop           skip the failure-side phase (0% vs 5% failing runs, unique trace ids)
  --loop-requests N   requests per run in the failure-side phase: 20000 is ~11 s of load,
                      long enough that the failure side's deciding and writing (root_grace,
                      2 s, after a trace's root) falls inside the measured window; 3000 (~2 s)
                      leaves most of it after the window and reads high                   [20000]
  --loop-steps N      tool-calling steps per agent run in the failure-side phase: 1 is the
                      minimal 4-span run, N > 1 gives runs of 4N + 2 spans with the HTTP
                      client spans of every LLM call (loadgen --steps; 3 is the reference) [3]
  --persistent-queue  triage-loop keeps its export queue on disk (sending_queue.storage:
                      file_storage, directory under the work dir, fsync off)
  --fsync             with --persistent-queue: file_storage's fsync on (each accepted
                      request is on stable storage before it is acknowledged)
  --no-build          do not run cargo build (use target/release as it is)
  --keep              keep the work directory (configs, logs) after the run

TRIAGE_BIN=PATH runs that triage-loop binary instead of target/release's (to compare builds).
EOF
}

ROUNDS=3
REQUESTS=3000
CONCURRENCY=8
CONNECTIONS=4
ROTEL_BATCHING=0
OVERLOAD_SECS=20
QUEUE_MIB=64
SINK_DELAY_MS=200
DO_THROUGHPUT=1
DO_OVERLOAD=1
DO_LOOP=1
LOOP_REQUESTS=20000
LOOP_STEPS=3
BUILD=1
KEEP=0
PERSISTENT=0
FSYNC=0
# Allowance over the queue cap for everything that is not queued: idle footprint (measured),
# plus receive buffers of requests in flight, allocator slack.
OVERHEAD_MIB=64

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    --concurrency) CONCURRENCY=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    --rotel-batching) ROTEL_BATCHING=1 ;;
    --overload-secs) OVERLOAD_SECS=$2; shift ;;
    --queue-mib) QUEUE_MIB=$2; shift ;;
    --sink-delay-ms) SINK_DELAY_MS=$2; shift ;;
    --no-throughput) DO_THROUGHPUT=0 ;;
    --no-overload) DO_OVERLOAD=0 ;;
    --no-loop) DO_LOOP=0 ;;
    --persistent-queue) PERSISTENT=1 ;;
    --fsync) FSYNC=1 ;;
    --loop-requests) LOOP_REQUESTS=$2; shift ;;
    --loop-steps) LOOP_STEPS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "load.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/triage-load.XXXXXX")
PIDS=()
FAILED=1

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"


# --- build -------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building release (cargo build --release --bin triage-loop --examples)"
  nice -n 10 cargo build --release --bin triage-loop --examples >"$WORK/build.log" 2>&1 \
    || die "cargo build failed; see $WORK/build.log: $(tail -20 "$WORK/build.log")"
fi
for b in triage-loop examples/loadgen examples/count_sink; do
  [ -x "$REL/$b" ] || die "$REL/$b is missing; run without --no-build"
done
TRIAGE=${TRIAGE_BIN:-$REL/triage-loop}
LOADGEN=$REL/examples/loadgen
SINK=$REL/examples/count_sink

# --- rotel ---------------------------------------------------------------------------------------
find_rotel() {
  if command -v rotel-agent >/dev/null 2>&1; then command -v rotel-agent; return 0; fi
  local dir
  dir=$(python3 -c 'import rotel, os; print(os.path.dirname(rotel.__file__))' 2>/dev/null) || return 1
  [ -x "$dir/rotel-agent" ] && echo "$dir/rotel-agent"
}
ROTEL=""
if [ "$DO_THROUGHPUT" = 1 ]; then
  if ! ROTEL=$(find_rotel); then
    log "rotel-agent not found; pip install rotel"
    python3 -m pip install --quiet rotel >"$WORK/pip.log" 2>&1 || die "pip install rotel failed; see $WORK/pip.log"
    ROTEL=$(find_rotel) || die "pip installed rotel but rotel-agent is not in its package directory"
  fi
  log "rotel: $ROTEL ($("$ROTEL" --version 2>/dev/null || echo '?'))"
fi

read -r P_IN P_SINK P_STATS P_ADMIN P_HTTP P_SLOW P_SLOW_STATS <<<"$(free_ports 7)"

write_triage_config() { # file sink_port queue_mib [data_dir]
  local data=${4:-$WORK/triage-data}
  persistent_queue_yaml "$data/queue"
  cat >"$1" <<EOF
# Written by bench/load.sh.
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$P_IN
        max_recv_msg_size_mib: 16
processors:
  failure_triage:               # default taxonomy, built-in rules, default sinks (jsonl + OTLP log)
    storage: sqlite://$data/triage.db
exporters:
  otlp:
    endpoint: 127.0.0.1:$2
    protocol: grpc
    compression: none
    timeout: 10s
    retry_on_failure: {enabled: true, initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 60s}
    sending_queue: {num_consumers: 10, queue_size: 1000, queue_size_mib: $3$QUEUE_STORAGE}
extensions:
  triage_admin:
    endpoint: 127.0.0.1:$P_ADMIN
$FILE_STORAGE
service:
  extensions: [triage_admin$STORAGE_EXT]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [failure_triage]
      exporters: [otlp]
EOF
}

ROTEL_BATCH_ARGS=(--disable-batching)
if [ "$ROTEL_BATCHING" = 1 ]; then ROTEL_BATCH_ARGS=(); fi

start_sut() { # name sink_port queue_mib [data_dir]
  local name=$1
  case "$name" in
    triage-loop)
      write_triage_config "$WORK/collector-config.yaml" "$2" "$3" "${4:-}"
      start_bg triage-loop env RUST_LOG=warn "$TRIAGE" serve --config "$WORK/collector-config.yaml"
      ;;
    rotel)
      start_bg rotel "$ROTEL" start \
        --otlp-grpc-endpoint "127.0.0.1:$P_IN" --otlp-http-endpoint "127.0.0.1:$P_HTTP" \
        --otlp-grpc-max-recv-msg-size-mib 16 \
        --exporter otlp --otlp-exporter-endpoint "http://127.0.0.1:$2" \
        --otlp-exporter-protocol grpc --otlp-exporter-compression none \
        --otlp-exporter-request-timeout 10s "${ROTEL_BATCH_ARGS[@]}" \
        --pid-file "$WORK/rotel.pid" --log-file "$WORK/rotel-agent.log"
      ;;
  esac
  SUT_PID=$LAST_PID
  wait_port "$P_IN" "$SUT_PID" "$name"
}

# --- phase 1: throughput -------------------------------------------------------------------------
declare -A RATE RSS CPU TAGGED
SUMMARY=()
if [ "$DO_THROUGHPUT" = 1 ]; then
  start_bg count_sink "$SINK" --grpc "127.0.0.1:$P_SINK" --stats "127.0.0.1:$P_STATS" --max-runtime 15m
  SINK_PID=$LAST_PID
  wait_port "$P_STATS" "$SINK_PID" count_sink
  log "throughput: $ROUNDS rounds x (triage-loop, rotel), $REQUESTS requests each, $CONCURRENCY in flight over $CONNECTIONS connections"
  if [ "$PERSISTENT" = 1 ]; then
    log "triage-loop: persistent export queue (file_storage, fsync $([ "${FSYNC:-0}" = 1 ] && echo on || echo off))"
  fi
  if [ "$ROTEL_BATCHING" = 1 ]; then
    log "rotel: exporter otlp/grpc, compression none, batching at its defaults (8192 spans / 200 ms)"
  else
    log "rotel: exporter otlp/grpc, compression none, --disable-batching (one export per request, as triage-loop)"
  fi
  for ((round = 1; round <= ROUNDS; round++)); do
    for sut in triage-loop rotel; do
      start_sut "$sut" "$P_SINK" 256
      idle_kb=$(kb_of "$SUT_PID" VmRSS)
      ticks0=$(cpu_ticks "$SUT_PID")
      line=$("$LOADGEN" --endpoint "127.0.0.1:$P_IN" --requests "$REQUESTS" --duration 90s \
        --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" \
        --sink-stats "http://127.0.0.1:$P_STATS" --label "$sut" 2>>"$WORK/loadgen.log" | grep '^RESULT') \
        || die "loadgen failed against $sut; see $WORK/loadgen.log: $(tail -5 "$WORK/loadgen.log")"
      hwm_kb=$(kb_of "$SUT_PID" VmHWM)
      ticks=$(( $(cpu_ticks "$SUT_PID") - ticks0 ))
      stop_pid "$SUT_PID" 20 || true
      rate=$(field delivered_spans_per_sec "$line")
      spans=$(field sink_spans "$line")
      cpu_s=$(awk -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
      cpu_per_m=$(awk -v c="$cpu_s" -v s="$spans" 'BEGIN { printf "%.2f", (s > 0 ? c / s * 1e6 : 0) }')
      log "round $round $sut: $rate spans/s delivered ($spans spans, $(field sink_tagged "$line") tagged, complete=$(field complete "$line"), $(field resource_exhausted "$line") RESOURCE_EXHAUSTED answers), peak RSS $(mib "$hwm_kb") MiB (idle $(mib "$idle_kb")), CPU ${cpu_s}s = ${cpu_per_m} CPU-s per million spans"
      [ "$(field complete "$line")" = true ] || log "WARNING: $sut did not deliver every accepted span"
      RATE[$sut]="${RATE[$sut]:-} $rate"
      RSS[$sut]="${RSS[$sut]:-} $hwm_kb"
      CPU[$sut]="${CPU[$sut]:-} $cpu_per_m"
      TAGGED[$sut]="${TAGGED[$sut]:-} $(field sink_tagged "$line")"
    done
  done
  stop_pid "$SINK_PID" 5 || true
  mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.0f", NF ? s / NF : 0 }' <<<"$1"; }
  meanf() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.2f", NF ? s / NF : 0 }' <<<"$1"; }
  maxv() { awk '{ m = 0; for (i = 1; i <= NF; i++) if ($i > m) m = $i; print m }' <<<"$1"; }
  tl=$(mean "${RATE[triage-loop]}")
  ro=$(mean "${RATE[rotel]}")
  ratio=$(awk -v a="$tl" -v b="$ro" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 1.5 ? "meets the 1.5x aim" : (r >= 1.0 ? "meets the 1.0x bar, not the 1.5x aim" : "BELOW the 1.0x bar")) }')
  SUMMARY+=(
    "throughput (mean of $ROUNDS rounds, $REQUESTS requests x ~512 spans, $CONCURRENCY in flight):"
    "  triage-loop (classify + tag): $tl spans/s   rounds:${RATE[triage-loop]}   peak RSS $(mib "$(maxv "${RSS[triage-loop]}")") MiB   $(meanf "${CPU[triage-loop]}") CPU-s/M spans   tagged/run:${TAGGED[triage-loop]}"
    "  rotel (pass-through):         $ro spans/s   rounds:${RATE[rotel]}   peak RSS $(mib "$(maxv "${RSS[rotel]}")") MiB   $(meanf "${CPU[rotel]}") CPU-s/M spans"
    "  ratio triage-loop / rotel: ${ratio}x ($verdict)"
  )
fi

# --- phase 2: overload ---------------------------------------------------------------------------
if [ "$DO_OVERLOAD" = 1 ]; then
  log "overload: sink answers after ${SINK_DELAY_MS} ms (at most ~$((10 * 1000 / SINK_DELAY_MS)) requests/s with 10 export consumers); triage-loop queue_size_mib=$QUEUE_MIB; 16 in flight for ${OVERLOAD_SECS}s"
  start_bg count_sink_slow "$SINK" --grpc "127.0.0.1:$P_SLOW" --stats "127.0.0.1:$P_SLOW_STATS" \
    --delay-ms "$SINK_DELAY_MS" --max-runtime 10m --quiet
  SLOW_PID=$LAST_PID
  wait_port "$P_SLOW_STATS" "$SLOW_PID" count_sink_slow
  start_sut triage-loop "$P_SLOW" "$QUEUE_MIB"
  wait_port "$P_ADMIN" "$SUT_PID" triage-loop
  idle_kb=$(kb_of "$SUT_PID" VmRSS)
  "$LOADGEN" --endpoint "127.0.0.1:$P_IN" --requests 0 --duration "${OVERLOAD_SECS}s" \
    --concurrency 16 --connections "$CONNECTIONS" --drain-timeout 1s --settle 1s \
    --sink-stats "http://127.0.0.1:$P_SLOW_STATS" --label overload >"$WORK/overload.out" 2>>"$WORK/loadgen.log" &
  LG_PID=$!
  PIDS+=("$LG_PID")
  # Sample the queue gauge and RSS while the load runs (bounded by the phase length).
  max_queue=0
  max_rss=0
  for ((i = 0; i < (OVERLOAD_SECS + 15) * 4; i++)); do
    kill -0 "$LG_PID" 2>/dev/null || break
    q=$(curl -s --max-time 1 "http://127.0.0.1:$P_ADMIN/metrics" | awk '$1 == "triage_export_queue_bytes" { print $2 }')
    r=$(kb_of "$SUT_PID" VmRSS)
    [ -n "$q" ] && [ "$q" -gt "$max_queue" ] && max_queue=$q
    [ -n "$r" ] && [ "$r" -gt "$max_rss" ] && max_rss=$r
    sleep 0.25
  done
  wait "$LG_PID" || die "loadgen failed in overload; see $WORK/loadgen.log"
  line=$(grep '^RESULT' "$WORK/overload.out") || die "no RESULT from loadgen in overload"
  hwm_kb=$(kb_of "$SUT_PID" VmHWM)
  metrics=$(curl -s --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics")
  refused_req=$(awk '/^triage_receiver_requests_total/ && /outcome="refused"/ { s += $2 } END { print s + 0 }' <<<"$metrics")
  rejected_spans=$(awk '/^triage_spans_total/ && /outcome="rejected"/ { s += $2 } END { print s + 0 }' <<<"$metrics")
  stop_pid "$SUT_PID" 30 || true
  stop_pid "$SLOW_PID" 5 || true
  cap_kb=$((QUEUE_MIB * 1024))
  limit_kb=$((cap_kb + idle_kb + OVERHEAD_MIB * 1024))
  verdict=$([ "$hwm_kb" -le "$limit_kb" ] && echo "PASS" || echo "FAIL")
  SUMMARY+=(
    "overload (${OVERLOAD_SECS}s, 16 in flight, sink ${SINK_DELAY_MS} ms/request, queue_size_mib=$QUEUE_MIB):"
    "  triage-loop peak RSS $(mib "$hwm_kb") MiB (idle $(mib "$idle_kb") MiB); limit = cap $QUEUE_MIB + idle + $OVERHEAD_MIB MiB overhead = $(mib "$limit_kb") MiB: $verdict"
    "  queue bytes peak (sampled) $(mib $((max_queue / 1024))) MiB; accepted $(field requests_ok "$line") requests ($(field spans_ok "$line") spans); refused with RESOURCE_EXHAUSTED: $(field resource_exhausted "$line") answers (server counted $refused_req refused requests, $rejected_spans spans)"
  )
  [ "$verdict" = PASS ] || { printf '%s\n' "${SUMMARY[@]}"; die "triage-loop's RSS went over its queue cap + overhead"; }
fi

now_s() { date +%s.%N; }
if [ "$DO_LOOP" = 1 ]; then
  start_bg count_sink_loop "$SINK" --grpc "127.0.0.1:$P_SINK" --stats "127.0.0.1:$P_STATS" --max-runtime 30m --quiet
  LOOP_SINK_PID=$LAST_PID
  wait_port "$P_STATS" "$LOOP_SINK_PID" count_sink_loop
  log "failure side: $ROUNDS rounds x (0%, 5% failing runs), $LOOP_REQUESTS requests each, $LOOP_STEPS-step runs, unique trace ids per send"
  declare -A LRATE LCPU LFAIL LFPS LLAG LDROP LDISP LISSUES
  for ((round = 1; round <= ROUNDS; round++)); do
    for pct in 0 5; do
      data="$WORK/loop-$round-$pct"
      start_sut triage-loop "$P_SINK" 256 "$data"
      wait_port "$P_ADMIN" "$SUT_PID" triage-loop
      ticks0=$(cpu_ticks "$SUT_PID")
      t0=$(now_s)
      line=$("$LOADGEN" --endpoint "127.0.0.1:$P_IN" --requests "$LOOP_REQUESTS" --duration 120s \
        --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" --failure-percent "$pct" --unique-traces --steps "$LOOP_STEPS" \
        --sink-stats "http://127.0.0.1:$P_STATS" --label "loop-$pct" 2>>"$WORK/loadgen.log" | grep '^RESULT') \
        || die "loadgen failed in the failure-side phase; see $WORK/loadgen.log"
      t1=$(now_s)
      # Wait (bounded) until the assembler holds nothing and the failure count stops moving.
      prev=-1; settled=$t1
      for ((i = 0; i < 240; i++)); do
        m=$(curl -s --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics")
        held=$(msum '^triage_assembler_traces ' "$m")
        fails=$(msum '^triage_failures_total' "$m")
        if [ "$held" = 0 ] && [ "$fails" = "$prev" ]; then break; fi
        [ "$fails" != "$prev" ] && settled=$(now_s)
        prev=$fails
        sleep 0.25
      done
      m=$(curl -s --max-time 2 "http://127.0.0.1:$P_ADMIN/metrics")
      ticks=$(( $(cpu_ticks "$SUT_PID") - ticks0 ))
      stop_pid "$SUT_PID" 30 || true
      spans=$(field sink_spans "$line")
      cpu_per_m=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v s="$spans" 'BEGIN { printf "%.2f", (s > 0 ? t / hz / s * 1e6 : 0) }')
      fails=$(msum '^triage_failures_total' "$m")
      dropped=$(msum '^triage_failure_side_dropped_total' "$m")
      delivered=$(msum '^triage_dispatch_total.*outcome="delivered"' "$m")
      issues=$(msum '^triage_issues[{]' "$m")
      rate=$(field delivered_spans_per_sec "$line")
      fps=$(awk -v f="$fails" -v a="$t0" -v b="$settled" 'BEGIN { d = b - a; printf "%.0f", (d > 0 ? f / d : 0) }')
      lag=$(awk -v a="$t1" -v b="$settled" 'BEGIN { printf "%.1f", (b > a ? b - a : 0) }')
      log "round $round, $pct% failing: $rate spans/s delivered (complete=$(field complete "$line")), ${cpu_per_m} CPU-s per million spans (failure side included); $fails failures recorded ($fps/s, last ${lag}s after the load ended), $issues issues, $delivered dispatches delivered, $dropped dropped by the failure side"
      LRATE[$pct]="${LRATE[$pct]:-} $rate"
      LCPU[$pct]="${LCPU[$pct]:-} $cpu_per_m"
      LFAIL[$pct]="${LFAIL[$pct]:-} $fails"
      LFPS[$pct]="${LFPS[$pct]:-} $fps"
      LLAG[$pct]="${LLAG[$pct]:-} $lag"
      LDROP[$pct]="${LDROP[$pct]:-} $dropped"
      LDISP[$pct]="${LDISP[$pct]:-} $delivered"
      LISSUES[$pct]="${LISSUES[$pct]:-} $issues"
    done
  done
  stop_pid "$LOOP_SINK_PID" 5 || true
  avg() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.0f", NF ? s / NF : 0 }' <<<"$1"; }
  r0=$(avg "${LRATE[0]}")
  r5=$(avg "${LRATE[5]}")
  ratio=$(awk -v a="$r5" -v b="$r0" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
  c0=$(awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.2f", NF ? s / NF : 0 }' <<<"${LCPU[0]}")
  c5=$(awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.2f", NF ? s / NF : 0 }' <<<"${LCPU[5]}")
  verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.9 ? "within 10%" : "MORE than 10% slower") }')
  # Each round's 5% rate over the 0% rate of the same round (run just before it): the spread of
  # these says how far the ratio above can be trusted (the machine's speed drifts between rounds).
  pairs=$(awk -v a="${LRATE[0]}" -v b="${LRATE[5]}" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); s = 0; q = 0; k = 0
    for (i = 1; i <= n; i++) if (x[i] > 0) { r = y[i] / x[i]; s += r; q += r * r; k++ }
    if (k < 2) { print "fewer than 2 rounds"; exit }
    m = s / k; v = (q - k * m * m) / (k - 1); se = sqrt(v > 0 ? v : 0) / sqrt(k)
    printf "mean %.3f, standard error %.3f over %d rounds (0.90 is %.1f standard errors %s it)", m, se, k, (se > 0 ? (m - 0.9) / se : 0) * (m >= 0.9 ? 1 : -1), (m >= 0.9 ? "below" : "above")
  }')
  SUMMARY+=(
    "failure side (mean of $ROUNDS rounds, $LOOP_REQUESTS requests x ~512 spans, $LOOP_STEPS-step runs, unique trace ids):"
    "  0% failing runs: $r0 spans/s   rounds:${LRATE[0]}   $c0 CPU-s/M spans"
    "  5% failing runs: $r5 spans/s   rounds:${LRATE[5]}   $c5 CPU-s/M spans (failure side included)   ratio ${ratio} ($verdict)"
    "  ratio of each round's 5% rate to its 0% rate: $pairs"
    "  5%: failures recorded per run:${LFAIL[5]}   failures/s:${LFPS[5]}   settled after load end (s):${LLAG[5]}"
    "      dropped by the failure side:${LDROP[5]}   issues:${LISSUES[5]}   dispatches delivered:${LDISP[5]}"
  )
fi

FAILED=0
echo
echo "=== bench/load.sh results ($(nproc) cores${ROTEL:+; $("$ROTEL" --version 2>/dev/null)}) ==="
printf '%s\n' "${SUMMARY[@]}"
