# Shell helpers shared by the bench scripts (sourced, not run). load.sh and soak.sh define log,
# die, WORK (their work directory) and PIDS (an array of what they started) for the process
# helpers; compare_config and start_compare (for cpu.sh and threads.sh) need none of them.

# Starts "$@" in the background with output to $1's log; sets LAST_PID.
start_bg() {
  local name=$1; shift
  "$@" >>"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# Stops one process we started: SIGTERM, then SIGKILL after $2 seconds; returns 1 if it was killed.
stop_pid() {
  local pid=$1 grace=${2:-20} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop within ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" 2>/dev/null || true
}

# Waits up to $4 seconds (default 30) for 127.0.0.1:$1 to accept, while pid $2 (named $3) lives.
wait_port() {
  local port=$1 pid=$2 what=$3 secs=${4:-30} i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what exited at start; see $WORK/$what.log: $(tail -5 "$WORK/$what.log")"
    sleep 0.1
  done
  die "$what is not listening on 127.0.0.1:$port after ${secs}s; see $WORK/$what.log"
}

# N free loopback ports, picked at once so they differ.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Field $2 (VmRSS, VmHWM) of /proc/$1/status, in kB.
kb_of() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# User + system CPU ticks of pid $1.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The value of key $1 in a "RESULT k=v ..." line $2.
field() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (substr($i, 1, n - 1) == k) print substr($i, n + 1) } }' <<<"$2"; }
mib() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }
# The sum of the values of the exposition lines matching $1 in metrics text $2.
msum() { awk -v m="$1" '$0 ~ m { s += $NF } END { printf "%.0f", s + 0 }' <<<"$2"; }

# Sets QUEUE_STORAGE, FILE_STORAGE and STORAGE_EXT, the YAML fragments that keep triage-loop's
# export queue on disk under directory $1 when PERSISTENT=1 (all empty otherwise).
persistent_queue_yaml() {
  QUEUE_STORAGE="" FILE_STORAGE="" STORAGE_EXT=""
  if [ "${PERSISTENT:-0}" = 1 ]; then
    QUEUE_STORAGE=", storage: file_storage"
    FILE_STORAGE="  file_storage: {directory: $1, fsync: $([ "${FSYNC:-0}" = 1 ] && echo true || echo false)}"
    STORAGE_EXT=", file_storage"
  fi
}

# Writes the triage-loop config bench/cpu.sh and bench/callgrind.sh run with to $1/config.yaml:
# OTLP/gRPC on 127.0.0.1:$2, SQLite in $1, export to 127.0.0.1:$3, admin on 127.0.0.1:$4.
compare_config() {
  cat >"$1/config.yaml" <<YAML
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$2
        max_recv_msg_size_mib: 16
processors:
  failure_triage:
    storage: sqlite://$1/triage.db
exporters:
  otlp:
    endpoint: 127.0.0.1:$3
    sending_queue: {num_consumers: 10, queue_size: 1000, queue_size_mib: 256}
extensions:
  triage_admin:
    endpoint: 127.0.0.1:$4
service:
  extensions: [triage_admin]
  pipelines:
    traces: {receivers: [otlp], processors: [failure_triage], exporters: [otlp]}
YAML
}

# Starts examples/count_sink (gRPC on port $2, stats on $3) and then triage-loop binary $1 with
# the config compare_config wrote to $W/config.yaml, logs in $W; sets SINK and PID. Needs W and
# R (the release directory) set by the caller.
start_compare() {
  "$R/examples/count_sink" --grpc "127.0.0.1:$2" --stats "127.0.0.1:$3" --max-runtime 5m --quiet >"$W/sink.log" 2>&1 &
  SINK=$!
  sleep 1
  RUST_LOG=warn "$1" serve --config "$W/config.yaml" >"$W/tl.log" 2>&1 &
  PID=$!
  sleep 2
}

# For cpu.sh and threads.sh: empties work directory $1 (sets W), finds the release directory
# (sets R) and starts triage-loop binary $2 with compare_config's config (sets PID and SINK).
# Stops at once, saying what to build, when loadgen, count_sink or the binary is missing.
start_comparison() {
  W=$1
  R=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release
  local ex
  for ex in loadgen count_sink; do
    if [ ! -x "$R/examples/$ex" ]; then
      echo "$(basename "$0"): $R/examples/$ex is missing: build it with cargo build --release --examples" >&2
      exit 1
    fi
  done
  if [ ! -x "$2" ]; then
    echo "$(basename "$0"): $2 is not an executable (the triage-loop binary to measure)" >&2
    exit 1
  fi
  rm -rf "$W" && mkdir -p "$W"
  compare_config "$W" 47347 35419 44307
  start_compare "$2" 35419 46099
}

# Stops what start_comparison started and waits for triage-loop to exit.
stop_comparison() {
  kill "$PID" "$SINK"
  while kill -0 "$PID" 2>/dev/null; do sleep 0.2; done
}

# Sends loadgen's load ("$@" after the common options) to start_comparison's triage-loop, output
# in $W/lg.log; stops the comparison and exits if loadgen fails.
run_loadgen() {
  if ! "$R/examples/loadgen" --endpoint 127.0.0.1:47347 --duration 120s --connections 4 \
    --unique-traces --sink-stats http://127.0.0.1:46099 "$@" >"$W/lg.log" 2>&1; then
    echo "$(basename "$0"): loadgen failed; see $W/lg.log: $(tail -3 "$W/lg.log")" >&2
    stop_comparison
    exit 1
  fi
}
