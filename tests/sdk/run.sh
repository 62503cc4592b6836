#!/usr/bin/env bash
# End-to-end test of Tollgate with Metronome's official TypeScript SDK (@metronome/sdk 3.10.0):
# builds the server, starts it on a free port with a throw-away data directory and a webhook
# destination served by the Node test itself, runs tests/sdk/sdk_test.mjs against it, and stops
# the server. Works from any directory; exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SDK_DIR="$ROOT/tests/sdk"

log() { echo "sdk-test: $*" >&2; }

# 1. Node dependencies (exactly the locked versions).
if ! node -e "process.exit(require('$SDK_DIR/node_modules/@metronome/sdk/package.json').version === '3.10.0' ? 0 : 1)" 2>/dev/null; then
  log "installing Node dependencies (npm ci)"
  (cd "$SDK_DIR" && npm ci --no-audit --no-fund)
fi

# 2. The server binary.
log "building the server (cargo build --bin tollgate)"
(cd "$ROOT" && cargo build --quiet --bin tollgate)
BIN="$ROOT/target/debug/tollgate"

# 3. A throw-away configuration.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-sdk.XXXXXX")"
SERVER_PID=""
cleanup() {
  local status=$?
  if [ -n "$SERVER_PID" ]; then
    # SIGTERM must stop the server cleanly (SPEC section 6: checkpoint, exit 0) within 10 s.
    local server_status=0 waited=0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    while kill -0 "$SERVER_PID" 2>/dev/null && [ "$waited" -lt 100 ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "the server did not stop within 10 s of SIGTERM; killing it"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || server_status=$?
    if [ "$server_status" -ne 0 ]; then
      log "FAIL: the server exited with status $server_status after SIGTERM (SPEC section 6: exit 0)"
      [ "$status" -eq 0 ] && status=1
    fi
    # Any ERROR-level log line (a 5xx, a failed final checkpoint, ...) fails the run.
    local errors
    errors="$(cat "$WORK/server.out" "$WORK/server.err" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -E ' ERROR |"level":"ERROR"' || true)"
    if [ -n "$errors" ]; then
      log "FAIL: the server logged errors:"
      echo "$errors" >&2
      [ "$status" -eq 0 ] && status=1
    fi
  fi
  if [ "$status" -ne 0 ] && [ -f "$WORK/server.out" ]; then
    log "server output (last 25 lines of stdout and stderr):"
    tail -n 25 "$WORK/server.out" "$WORK/server.err" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
  fi
  rm -rf "$WORK"
  if [ "$status" -eq 0 ]; then log "PASSED"; else log "FAILED (status $status)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
random_hex() {
  python3 -c 'import secrets; print(secrets.token_hex(16))'
}

WEBHOOK_PORT="$(free_port)"
TOKEN="sdk-test-$(random_hex)"
WEBHOOK_SECRET="whsec_$(random_hex)"
cat >"$WORK/tollgate.toml" <<EOF
[http]
listen = "127.0.0.1:0"

[auth]
tokens = ["$TOKEN"]

[storage]
data_dir = "$WORK/data"

[engine]
partitions = 2

[logging]
level = "info"

[[webhooks.destinations]]
url = "http://127.0.0.1:$WEBHOOK_PORT/hooks"
secret = "$WEBHOOK_SECRET"
EOF

# 4. Start the server and read its port from the start-up line.
"$BIN" serve --config "$WORK/tollgate.toml" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 300); do
  PORT="$(sed -n 's#^tollgate listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*#\1#p' "$WORK/server.out" | head -n 1)"
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { log "the server exited during start-up"; exit 1; }
  sleep 0.1
done
[ -n "$PORT" ] || { log "no 'tollgate listening on' line within 30 s"; exit 1; }
BASE_URL="http://127.0.0.1:$PORT"

ready=""
for _ in $(seq 1 300); do
  if python3 -c 'import sys, urllib.request; sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)' \
    "$BASE_URL/ready" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || { log "the server exited before it was ready"; exit 1; }
  sleep 0.1
done
[ -n "$ready" ] || { log "GET /ready did not answer 200 within 30 s"; exit 1; }
log "server ready at $BASE_URL (webhooks to port $WEBHOOK_PORT)"

# 5. The SDK test.
METRONOME_BASE_URL="$BASE_URL" \
METRONOME_BEARER_TOKEN="$TOKEN" \
METRONOME_WEBHOOK_SECRET="$WEBHOOK_SECRET" \
WEBHOOK_PORT="$WEBHOOK_PORT" \
  node "$SDK_DIR/sdk_test.mjs"
