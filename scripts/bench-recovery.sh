#!/usr/bin/env bash
# P7 of PERFORMANCE.md: how long a server takes to be ready again after `kill -9` with EVENTS
# usage events in the log since its last checkpoint.
#
# Starts `tollgate serve` on a fresh data directory with checkpoints pushed out of reach, loads
# it with `tollgate bench --url` until it has accepted EVENTS events, kills it with SIGKILL,
# starts it again on the same directory and times `GET /ready`. Prints one JSON line.
#
#   EVENTS=10000000 CUSTOMERS=10000 DURABILITY=fsync scripts/bench-recovery.sh
#
# PERF_OUT=FILE also records a CPU profile of the restarted server until it is ready
# (`perf record -F 499 -g`; read it with `perf report -i FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-10000000}
CUSTOMERS=${CUSTOMERS:-10000}
DURABILITY=${DURABILITY:-fsync}
PORT=${PORT:-18480}
BIN=${BIN:-target/release/tollgate}
TOKEN=recovery-bench-token
BASE="http://127.0.0.1:$PORT"

[ -x "$BIN" ] || { ./scripts/setup.sh && cargo build --release --bin tollgate; }
work=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-recovery.XXXXXX")
server=""
loader=""
cleanup() {
  [ -n "$loader" ] && kill "$loader" 2>/dev/null || true
  [ -n "$server" ] && kill -9 "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/tollgate.toml" <<EOF
[http]
listen = "127.0.0.1:$PORT"
[auth]
tokens = ["$TOKEN"]
[storage]
data_dir = "$work/data"
durability = "$DURABILITY"
[engine]
checkpoint_interval_ms = 86400000
checkpoint_every_inputs = 1000000000
pending_inputs_max = 1000000
[logging]
level = "warn"
EOF

metric() {
  curl -sf "$BASE/metrics" | awk -v name="$1" '$1 == name { print $2 }'
}
wait_ready() {
  until curl -sf "$BASE/ready" >/dev/null 2>&1; do sleep 0.02; done
}

"$BIN" serve --config "$work/tollgate.toml" 2>>"$work/server.log" >/dev/null &
server=$!
wait_ready
"$BIN" bench --url "$BASE" --token "$TOKEN" --customers "$CUSTOMERS" --max --duration 100000 \
  --crossing 0 >/dev/null 2>>"$work/loader.log" &
loader=$!
accepted=0
while [ "${accepted:-0}" -lt "$EVENTS" ]; do
  sleep 1
  kill -0 "$loader" 2>/dev/null || { echo "the loader stopped early:" >&2; tail -5 "$work/loader.log" >&2; exit 1; }
  accepted=$(metric tollgate_ingest_events_accepted_total)
  printf '\r%s of %s events accepted' "$accepted" "$EVENTS" >&2
done
echo >&2
kill -9 "$server"
wait "$server" 2>/dev/null || true
server=""
kill "$loader" 2>/dev/null || true
wait "$loader" 2>/dev/null || true
loader=""

started=$(date +%s%N)
"$BIN" serve --config "$work/tollgate.toml" 2>>"$work/server.log" >/dev/null &
server=$!
perf=""
if [ -n "${PERF_OUT:-}" ]; then
  perf record -F 499 -g -p "$server" -o "$PERF_OUT" >/dev/null 2>&1 &
  perf=$!
fi
wait_ready
ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
if [ -n "$perf" ]; then
  kill -INT "$perf" 2>/dev/null || true
  wait "$perf" 2>/dev/null || true
fi
printf '{"events_before_kill":%s,"replayed_inputs":%s,"recovery_ms":%s,"ready_ms":%s,"durability":"%s","customers":%s}\n' \
  "$accepted" "$(metric tollgate_recovery_replayed_inputs)" "$(metric tollgate_recovery_milliseconds)" \
  "$ready_ms" "$DURABILITY" "$CUSTOMERS"
