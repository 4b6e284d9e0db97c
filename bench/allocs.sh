#!/usr/bin/env bash
# Heap allocations per failed agent run: counts the calls into mimalloc (uprobes on
# mi_malloc_aligned and mi_realloc_aligned, what Rust's global allocator calls) while
# bench/threads.sh sends REQS requests at 0% and at 5% failing runs, and divides the difference by
# the failed runs. The uprobes slow the process several times over: read the counts, not the
# throughput. Needs root (perf probe) and what bench/threads.sh needs.
#
#   bench/allocs.sh BIN NAME [STEPS] [REQS]     e.g. bench/allocs.sh target/release/triage-loop new
set -euo pipefail
BIN=$(realpath "$1"); NAME=$2; STEPS=${3:-3}; REQS=${4:-3000}
GROUP=allocs_$$
cleanup() { perf probe -q -d "$GROUP:*" 2>/dev/null || true; }
trap cleanup EXIT
perf probe -q -x "$BIN" -a "$GROUP:malloc=mi_malloc_aligned" -a "$GROUP:realloc=mi_realloc_aligned"
count() { awk -v e="$GROUP:$1" '$1 == e {print $2}' "$2"; }
declare -A MALLOC REALLOC
for pct in 0 5; do
  out=/tmp/triage-allocs-$NAME-$pct.txt
  STAT="$GROUP:malloc,$GROUP:realloc" "$(dirname "$0")/threads.sh" "$BIN" "allocs-$NAME-$pct" \
    "$pct" "$STEPS" "$REQS" >"$out" 2>&1
  MALLOC[$pct]=$(count malloc "$out")
  REALLOC[$pct]=$(count realloc "$out")
  if [ -z "${MALLOC[$pct]}" ] || [ -z "${REALLOC[$pct]}" ]; then
    echo "allocs.sh: no counts from bench/threads.sh at $pct%:" >&2
    cat "$out" >&2
    exit 1
  fi
done
FAILED=$(grep -o 'failing_runs_ok=[0-9]*' "/tmp/triage-threads/allocs-$NAME-5/lg.log" | cut -d= -f2)
echo "$NAME: $REQS requests, $FAILED failed runs at 5%"
echo "  mallocs  0%: ${MALLOC[0]}  5%: ${MALLOC[5]}  per failed run: $(((MALLOC[5] - MALLOC[0]) / FAILED))"
echo "  reallocs 0%: ${REALLOC[0]}  5%: ${REALLOC[5]}  per failed run: $(((REALLOC[5] - REALLOC[0]) / FAILED))"
