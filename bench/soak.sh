#!/usr/bin/env bash
# Soak test: triage-loop on its own PostgreSQL under steady load for --duration (10 minutes),
# while the downstream flaps and the store restarts on a schedule. Samples RSS every 10 s, then
# drains and accounts for every span, failing run and dispatch; exits non-zero when anything is
# unaccounted for. Everything listens on 127.0.0.1; every loop and wait is bounded. See
# bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/soak.sh [options]

  --duration D         length of the load, e.g. 10m, 90s                                [10m]
  --rate N             requests per second (~512 spans, ~330 KiB each; fixed, not flat out)[30]
  --failure-percent N  agent runs that fail                                              [5]
  --novel-every N      every Nth request renames its agents, so its failures open new
                       issues (and dispatches)                                            [60]
  --sink-down S        seconds the downstream is stopped at each flap                     [20]
  --store-down S       seconds PostgreSQL is stopped at each restart                      [15]
  --faults N           flaps of the downstream and restarts of the store (each)           [3]
  --queue-mib N        triage-loop exporters.otlp.sending_queue.queue_size_mib            [64]
  --persistent-queue   keep the export queue on disk (sending_queue.storage: file_storage)
  --sample-secs N      RSS / metrics sampling interval                                    [10]
  --drain-secs N       longest wait after the load for queues and outbox to empty         [240]
  --no-build           do not run cargo build (use the release build as it is)
  --keep               keep the work directory (configs, logs, database) after the run

Faults are spread over the run: downstream flaps start at 10%, 40%, 70% … of it, store
restarts at 25%, 55%, 85% … (with --faults 3). Needs /usr/lib/postgresql/15/bin (initdb,
pg_ctl), psql, curl and python3; runs its own PostgreSQL cluster on a free port in the work
directory (as the postgres user when run as root), never the system one.
SOAK_TRIAGE_ENV="NAME=VALUE ..." adds environment to triage-loop (e.g. MALLOC_ARENA_MAX=1).
EOF
}

DURATION=10m
RATE=30
FAILURE_PERCENT=5
NOVEL_EVERY=60
SINK_DOWN=20
STORE_DOWN=15
FAULTS=3
QUEUE_MIB=64
PERSISTENT=0
SAMPLE_SECS=10
DRAIN_SECS=240
BUILD=1
KEEP=0
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --failure-percent) FAILURE_PERCENT=$2; shift ;;
    --novel-every) NOVEL_EVERY=$2; shift ;;
    --sink-down) SINK_DOWN=$2; shift ;;
    --store-down) STORE_DOWN=$2; shift ;;
    --faults) FAULTS=$2; shift ;;
    --queue-mib) QUEUE_MIB=$2; shift ;;
    --persistent-queue) PERSISTENT=1 ;;
    --sample-secs) SAMPLE_SECS=$2; shift ;;
    --drain-secs) DRAIN_SECS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Seconds of a duration like 10m, 90s, 1h or 600.
secs_of() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
DURATION_S=$(secs_of "$DURATION")
[ "$DURATION_S" -ge 30 ] 2>/dev/null || { echo "soak.sh: --duration must be at least 30s" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/triage-soak.XXXXXX")
chmod 755 "$WORK"
PGDATA=$WORK/pg
PIDS=()
FAILED=1
PG_UP=0
T0=0

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Runs a PostgreSQL tool: as the postgres user when we are root (initdb refuses root).
pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ -f "$PGDATA/postmaster.pid" ]; then
    pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
  fi
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

# A JSON number field $1 of the object in $2.
jnum() { python3 -c 'import json,sys; print(int(json.loads(sys.argv[2]).get(sys.argv[1], 0)))' "$1" "$2" 2>/dev/null || echo 0; }
elapsed() { echo $(( $(date +%s) - T0 )); }

# --- build -------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building release (cargo build --release --bin triage-loop --examples)"
  nice -n 10 cargo build --release --bin triage-loop --examples >"$WORK/build.log" 2>&1 \
    || die "cargo build failed; see $WORK/build.log: $(tail -20 "$WORK/build.log")"
fi
for b in triage-loop examples/loadgen examples/count_sink; do
  [ -x "$REL/$b" ] || die "$REL/$b is missing; run without --no-build"
done
for b in initdb pg_ctl; do
  [ -x "$PGBIN/$b" ] || die "$PGBIN/$b is missing (set PGBIN)"
done
command -v psql >/dev/null || die "psql is missing"
TRIAGE=$REL/triage-loop
LOADGEN=$REL/examples/loadgen
SINK=$REL/examples/count_sink

read -r P_IN P_SINK P_STATS P_ADMIN P_PG P_HOOK <<<"$(free_ports 6)"

# --- PostgreSQL (private cluster) ----------------------------------------------------------------
mkdir -p "$PGDATA" "$WORK/pgsock"
[ "$(id -u)" = 0 ] && chown postgres: "$PGDATA" "$WORK/pgsock"
pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres --no-sync >"$WORK/initdb.log" 2>&1 \
  || die "initdb failed; see $WORK/initdb.log"
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $P_PG
unix_socket_directories = '$WORK/pgsock'
max_connections = 50
shared_buffers = 64MB
EOF
pg_start() {
  pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start; see $PGDATA/server.log: $(tail -5 "$PGDATA/server.log")"
  PG_UP=1
}
pg_stop() {
  pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null \
    || die "PostgreSQL did not stop; see $PGDATA/server.log"
  PG_UP=0
}
pg_start
sql() { psql -X -q -t -A -F ' ' -h 127.0.0.1 -p "$P_PG" -U postgres -d soak -c "$1"; }
psql -X -q -h 127.0.0.1 -p "$P_PG" -U postgres -d postgres -c "CREATE DATABASE soak" >/dev/null \
  || die "cannot create the soak database"
log "PostgreSQL 15 on 127.0.0.1:$P_PG (data $PGDATA)"

# --- webhook receiver (dispatches) ---------------------------------------------------------------
cat >"$WORK/webhook.py" <<'EOF'
# Answers 200 to every POST and counts them and their distinct Idempotency-Key; GET /stats.
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
lock = threading.Lock()
posts, keys = 0, set()
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        global posts
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            posts += 1
            keys.add(self.headers.get("Idempotency-Key", ""))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        with lock:
            body = json.dumps({"posts": posts, "keys": len(keys)}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
start_bg webhook python3 "$WORK/webhook.py" "$P_HOOK"
HOOK_PID=$LAST_PID
wait_port "$P_HOOK" "$HOOK_PID" webhook

# --- downstream ----------------------------------------------------------------------------------
SINK_PID=0
sink_start() {
  start_bg count_sink "$SINK" --grpc "127.0.0.1:$P_SINK" --stats "127.0.0.1:$P_STATS" \
    --dedupe --state "$WORK/sink-state.json" --max-runtime "$((DURATION_S + DRAIN_SECS + 600))s" --quiet
  SINK_PID=$LAST_PID
  wait_port "$P_STATS" "$SINK_PID" count_sink
}
sink_stop() {
  stop_pid "$SINK_PID" 30 || die "count_sink did not stop gracefully; its counts are lost"
  SINK_PID=0
}
sink_start

# --- triage-loop ---------------------------------------------------------------------------------
persistent_queue_yaml "$WORK/file_storage"
cat >"$WORK/collector-config.yaml" <<EOF
# Written by bench/soak.sh.
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$P_IN
        max_recv_msg_size_mib: 16
processors:
  failure_triage:
    storage: postgres://postgres@127.0.0.1:$P_PG/soak
    sinks:
      webhook/soak:
        endpoint: http://127.0.0.1:$P_HOOK/hook
        timeout: 5s
      jsonl:
        path: $WORK/remediations.jsonl
    taxonomy:
      preset: default
      classes:
        logic_tool: {sinks: [webhook/soak, jsonl]}
        data_quality: {sinks: [webhook/soak, jsonl]}
        tone_brand: {sinks: [webhook/soak, jsonl]}
        coverage_gap: {sinks: [webhook/soak, jsonl]}
    dispatch:
      initial_interval: 1s
      max_interval: 10s
exporters:
  otlp:
    endpoint: 127.0.0.1:$P_SINK
    protocol: grpc
    compression: none
    timeout: 10s
    retry_on_failure: {enabled: true, initial_interval: 500ms, max_interval: 5s, max_elapsed_time: 300s}
    sending_queue: {num_consumers: 10, queue_size: 1000, queue_size_mib: $QUEUE_MIB$QUEUE_STORAGE}
extensions:
  triage_admin:
    endpoint: 127.0.0.1:$P_ADMIN
$FILE_STORAGE
service:
  extensions: [triage_admin$STORAGE_EXT]
  telemetry: {metrics: {push_interval: 0s}}
  pipelines:
    traces:
      receivers: [otlp]
      processors: [failure_triage]
      exporters: [otlp]
EOF
# shellcheck disable=SC2086 # SOAK_TRIAGE_ENV: extra NAME=VALUE words for triage-loop (e.g. malloc tuning)
start_bg triage-loop env RUST_LOG=warn,triage_loop::remediation::lifecycle=info ${SOAK_TRIAGE_ENV:-} "$TRIAGE" serve --config "$WORK/collector-config.yaml"
TL_PID=$LAST_PID
wait_port "$P_ADMIN" "$TL_PID" triage-loop
wait_port "$P_IN" "$TL_PID" triage-loop
metrics() { curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics" || true; }
sink_stats() { curl -s --max-time 5 "http://127.0.0.1:$P_STATS/stats" || echo '{}'; }

# --- fault schedule ------------------------------------------------------------------------------
# "start_second kind": sink flaps at 10%, 40%, 70% …, store restarts at 25%, 55%, 85% … of the run.
EVENTS=()
for ((f = 0; f < FAULTS; f++)); do
  s=$(( DURATION_S * (10 + f * 90 / FAULTS) / 100 ))
  r=$(( DURATION_S * (25 + f * 90 / FAULTS) / 100 ))
  EVENTS+=("$s sink_down" "$((s + SINK_DOWN)) sink_up" "$r store_down" "$((r + STORE_DOWN)) store_up")
done
mapfile -t EVENTS < <(printf '%s\n' "${EVENTS[@]}" | sort -n | grep -v '^$' || true)
log "faults: $(printf '%s; ' "${EVENTS[@]}")"

# --- load ----------------------------------------------------------------------------------------
log "load: ${DURATION_S}s at $RATE requests/s (~$((RATE * 512)) spans/s), $FAILURE_PERCENT% failing runs, every ${NOVEL_EVERY}th request with new agents; export queue ${QUEUE_MIB} MiB$([ "$PERSISTENT" = 1 ] && echo ' on disk')"
"$LOADGEN" --endpoint "127.0.0.1:$P_IN" --requests 0 --duration "${DURATION_S}s" --rate "$RATE" \
  --concurrency 8 --connections 2 --failure-percent "$FAILURE_PERCENT" --unique-traces \
  --novel-every "$NOVEL_EVERY" --max-retries 100000 --max-backoff 200ms --timeout 30s \
  --label soak --quiet >"$WORK/loadgen.out" 2>>"$WORK/loadgen.log" &
LG_PID=$!
PIDS+=("$LG_PID")
T0=$(date +%s)

SAMPLES=()
API_PROBES=()
sample() {
  local m s now rss hwm
  m=$(metrics)
  s=$(sink_stats)
  rss=$(kb_of "$TL_PID" VmRSS)
  hwm=$(kb_of "$TL_PID" VmHWM)
  now=$(elapsed)
  SAMPLES+=("$now $rss $hwm")
  printf '%6ss  RSS %7s MiB  HWM %7s MiB  queue %6s MiB  held traces %5s  failures %8s  sink spans %10s  refused req %6s  sink %s  store %s\n' \
    "$now" "$(mib "$rss")" "$(mib "$hwm")" "$(mib $(( $(msum '^triage_export_queue_bytes ' "$m") / 1024 )))" \
    "$(msum '^triage_assembler_traces ' "$m")" "$(msum '^triage_failures_total' "$m")" "$(jnum spans "$s")" \
    "$(msum '^triage_receiver_requests_total.*outcome="refused"' "$m")" \
    "$([ "$SINK_PID" != 0 ] && echo up || echo DOWN)" "$([ "$PG_UP" = 1 ] && echo up || echo DOWN)"
}
# The admin API must answer (an error is fine) within 10 s, store or no store.
probe_api() {
  local r
  r=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 10 \
    "http://127.0.0.1:$P_ADMIN/api/v1/issues?limit=1" || echo "timeout 10")
  API_PROBES+=("$(elapsed)s store=$([ "$PG_UP" = 1 ] && echo up || echo down): $r")
}

echo "=== RSS and progress every ${SAMPLE_SECS}s ==="
next_sample=0
ei=0
for ((tick = 0; tick < (DURATION_S + 60) * 2; tick++)); do
  now=$(elapsed)
  while [ "$ei" -lt "${#EVENTS[@]}" ] && [ "${EVENTS[$ei]%% *}" -le "$now" ]; do
    ev=${EVENTS[$ei]#* }
    log "t=${now}s: $ev"
    case "$ev" in
      sink_down) sink_stop ;;
      sink_up) sink_start ;;
      store_down) pg_stop; sleep 2; probe_api ;;
      store_up) probe_api; pg_start; sleep 3; probe_api ;;
    esac
    ei=$((ei + 1))
  done
  if [ "$now" -ge "$next_sample" ]; then
    sample
    next_sample=$((next_sample + SAMPLE_SECS))
  fi
  kill -0 "$TL_PID" 2>/dev/null || die "triage-loop exited during the soak; see $WORK/triage-loop.log: $(tail -5 "$WORK/triage-loop.log")"
  kill -0 "$LG_PID" 2>/dev/null || break
  sleep 0.5
done
# Faults scheduled past the end of the load (a short --duration) are undone now.
[ "$SINK_PID" = 0 ] && sink_start
[ "$PG_UP" = 0 ] && pg_start
wait "$LG_PID" || die "loadgen failed; see $WORK/loadgen.log: $(tail -5 "$WORK/loadgen.log")"
LG=$(grep '^RESULT' "$WORK/loadgen.out") || die "no RESULT from loadgen"
log "load done after $(elapsed)s: $LG"

# --- drain ---------------------------------------------------------------------------------------
# Until the export queue and assembler are empty, the outbox holds nothing due, and the failure
# and sink counts have not moved for 3 s.
GIVEN_UP=9223372036854775807
drained=0
prev=""
stable=0
for ((i = 0; i < DRAIN_SECS; i++)); do
  m=$(metrics)
  q=$(msum '^triage_export_queue_requests ' "$m")
  held=$(msum '^triage_assembler_traces ' "$m")
  pending=$(sql "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND next_attempt_at < $GIVEN_UP AND superseded_at IS NULL" 2>/dev/null || echo x)
  cur="$(msum '^triage_failures_total' "$m") $(jnum spans "$(sink_stats)") $(msum '^triage_dispatch_total' "$m")"
  if [ "$q" = 0 ] && [ "$held" = 0 ] && [ "$pending" = 0 ] && [ "$cur" = "$prev" ]; then
    stable=$((stable + 1))
    if [ "$stable" -ge 3 ]; then drained=1; break; fi
  else
    stable=0
  fi
  prev=$cur
  sleep 1
done
sample
[ "$drained" = 1 ] || log "WARNING: not drained after ${DRAIN_SECS}s (export queue $q requests, $held traces held, $pending dispatches pending)"
log "drained $(elapsed)s after load start"

# --- figures -------------------------------------------------------------------------------------
M=$(metrics)
S=$(sink_stats)
H=$(curl -s --max-time 5 "http://127.0.0.1:$P_HOOK/stats" || echo '{}')
read -r occ occ_distinct <<<"$(sql "SELECT count(*), count(DISTINCT trace_id) FROM occurrences")"
issues=$(sql "SELECT count(*) FROM issues")
read -r due delivered gave_up pending superseded <<<"$(sql "SELECT count(*), count(delivered_at),
  count(*) FILTER (WHERE delivered_at IS NULL AND next_attempt_at = $GIVEN_UP),
  count(*) FILTER (WHERE delivered_at IS NULL AND next_attempt_at < $GIVEN_UP AND superseded_at IS NULL),
  count(*) FILTER (WHERE delivered_at IS NULL AND superseded_at IS NOT NULL) FROM outbox")"
hook_delivered=$(sql "SELECT count(delivered_at) FROM outbox WHERE sink = 'webhook/soak'")
jsonl_delivered=$(sql "SELECT count(delivered_at) FROM outbox WHERE sink = 'jsonl'")
read -r jsonl_lines jsonl_keys <<<"$(python3 - "$WORK/remediations.jsonl" <<'EOF'
import json, sys
lines, keys = 0, set()
try:
    for line in open(sys.argv[1]):
        if line.strip():
            lines += 1
            keys.add(json.loads(line).get("idempotency_key"))
except FileNotFoundError:
    pass
print(lines, len(keys))
EOF
)"
hwm_kb=$(kb_of "$TL_PID" VmHWM)
stop_pid "$TL_PID" 30 || log "WARNING: triage-loop did not stop within 30s"
sink_stop

sent_spans=$(( $(field spans_ok "$LG") + $(field gave_up_spans "$LG") ))
accepted=$(field spans_ok "$LG")
refused_spans=$(field gave_up_spans "$LG")
forwarded=$(msum '^triage_spans_total.*outcome="forwarded"' "$M")
dropped=$(msum '^triage_spans_total.*outcome="dropped"' "$M")
rejected=$(msum '^triage_spans_total.*outcome="rejected"' "$M")
sink_spans=$(jnum spans "$S")
dup_spans=$(jnum duplicate_spans "$S")
acc_req=$(msum '^triage_receiver_requests_total.*outcome="accepted"' "$M")
ref_req=$(msum '^triage_receiver_requests_total.*outcome="refused"' "$M")
span_unaccounted=$(( accepted - sink_spans - dropped - rejected ))
fwd_gap=$(( forwarded - sink_spans ))

failing=$(field failing_runs_ok "$LG")
failures_metric=$(msum '^triage_failures_total' "$M")
drops=$(msum '^triage_failure_side_dropped_total' "$M")
drop_detail=$(awk '/^triage_failure_side_dropped_total/ { match($0, /reason="[a-z_]*"/); r = substr($0, RSTART + 8, RLENGTH - 9); printf "%s=%s ", r, $NF }' <<<"$M")
fail_unaccounted=$(( failing - occ_distinct - drops ))

disp_unaccounted=$(( due - delivered - gave_up - pending - superseded ))
hook_keys=$(jnum keys "$H")
hook_posts=$(jnum posts "$H")
hook_gap=$(( hook_delivered - hook_keys ))
jsonl_gap=$(( jsonl_delivered - jsonl_keys ))

# RSS over time: per tenth of the run, the largest VmRSS sampled in it.
rss_line=$(printf '%s\n' "${SAMPLES[@]}" | awk -v d="$DURATION_S" '
  { b = int($1 * 10 / d); if (b > 9) b = 9; if ($2 > m[b]) m[b] = $2 }
  END { for (b = 0; b < 10; b++) printf "%s%.1f", (b ? " · " : ""), m[b] / 1024 }')
rss_first=$(printf '%s\n' "${SAMPLES[@]}" | awk -v d="$DURATION_S" '$1 >= 60 && $1 < 120 { if ($2 > m) m = $2 } END { printf "%.1f", m / 1024 }')
rss_last=$(printf '%s\n' "${SAMPLES[@]}" | awk -v d="$DURATION_S" '$1 >= d - 60 && $1 <= d { if ($2 > m) m = $2 } END { printf "%.1f", m / 1024 }')

verdict() { [ "$1" = 0 ] && echo "0" || echo "$1  <-- UNACCOUNTED"; }
echo
echo "=== bench/soak.sh results ($(nproc) cores; ${DURATION_S}s at $RATE requests/s, $FAILURE_PERCENT% failing, $FAULTS downstream flaps of ${SINK_DOWN}s and $FAULTS store restarts of ${STORE_DOWN}s) ==="
echo "RSS of triage-loop (MiB), largest sample per tenth of the run: $rss_line"
echo "  minute 2: $rss_first MiB, last minute: $rss_last MiB, peak (VmHWM): $(mib "$hwm_kb") MiB; export queue cap $QUEUE_MIB MiB"
echo "spans:"
echo "  sent by loadgen            $sent_spans ($(field requests_ok "$LG") requests accepted, $(field gave_up "$LG") given up)"
echo "  accepted                   $accepted (triage-loop: $acc_req requests accepted)"
echo "  refused in the end         $refused_spans (answers on the way: $(field resource_exhausted "$LG") RESOURCE_EXHAUSTED, $(field unavailable "$LG") UNAVAILABLE, $(field other_errors "$LG") other; triage-loop counted $ref_req refused requests)"
echo "  delivered to the sink      $sink_spans (+ $dup_spans spans delivered twice, counted once; sink restarted $(( $(jnum starts "$S") - 1 ))x)"
echo "  dropped, counted           $dropped (export gave up) + $rejected (rejected as invalid)"
echo "  unaccounted                $(verdict "$span_unaccounted")   (accepted - delivered - dropped - rejected)"
echo "  triage-loop forwarded      $forwarded (its count minus the sink's: $fwd_gap)"
echo "failures:"
echo "  failing runs accepted      $failing"
echo "  recorded in PostgreSQL     $occ_distinct traces ($occ rows; $((occ - occ_distinct)) written twice); triage_failures_total $failures_metric"
echo "  dropped by the failure side, counted: $drops ($drop_detail)"
echo "  unaccounted                $(verdict "$fail_unaccounted")   (accepted - recorded - dropped)"
echo "  issues                     $issues"
echo "dispatches:"
echo "  due (outbox rows)          $due"
echo "  delivered                  $delivered (webhook $hook_delivered, jsonl $jsonl_delivered)"
echo "  given up / pending / superseded  $gave_up / $pending / $superseded"
echo "  unaccounted                $(verdict "$disp_unaccounted")   (due - delivered - given up - pending - superseded)"
echo "  webhook received           $hook_keys keys in $hook_posts posts (delivered rows minus keys: $hook_gap); jsonl file $jsonl_keys keys in $jsonl_lines lines (rows minus keys: $jsonl_gap)"
echo "admin API during store restarts (GET /api/v1/issues, status and seconds):"
printf '  %s\n' "${API_PROBES[@]}"
echo "store errors logged by triage-loop: $(grep -c 'store unavailable' "$WORK/triage-loop.log" || true) retries, $(grep -c 'failures written after the store came back' "$WORK/triage-loop.log" || true) batches written after the store came back"
echo "command: bench/soak.sh --duration $DURATION --rate $RATE --failure-percent $FAILURE_PERCENT --novel-every $NOVEL_EVERY --sink-down $SINK_DOWN --store-down $STORE_DOWN --faults $FAULTS --queue-mib $QUEUE_MIB$([ "$PERSISTENT" = 1 ] && echo ' --persistent-queue')"

bad=0
for v in "$span_unaccounted" "$fail_unaccounted" "$disp_unaccounted" "$hook_gap" "$jsonl_gap"; do
  [ "$v" = 0 ] || bad=1
done
[ "$drained" = 1 ] || bad=1
for p in "${API_PROBES[@]}"; do
  case "$p" in *timeout*|*": 000 "*) bad=1 ;; esac
done
if [ "$bad" = 1 ]; then
  die "something is unaccounted for, did not drain, or the admin API hung (see above); work directory: $WORK"
fi
FAILED=0
log "every span, failure and dispatch accounted for"
