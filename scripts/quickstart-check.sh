#!/usr/bin/env bash
# CI's run of the README quickstart: starts a webhook receiver and `tollgate serve` (the debug
# build) on free ports, runs scripts/quickstart.sh against them, and checks that the
# webhooks the quickstart promises arrived. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TOLLGATE_BIN:-target/debug/tollgate}"
[ -x "$BIN" ] || cargo build --bin tollgate
WORK="$(mktemp -d)"
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "${RECEIVER_PID:-}" ] && kill "$RECEIVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HOOK_PORT="$(port)"
# A receiver that answers 200 and appends each body to a file.
python3 - "$HOOK_PORT" "$WORK/hooks.jsonl" <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, out = int(sys.argv[1]), sys.argv[2]
class Hooks(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Hooks).serve_forever()
PY
RECEIVER_PID=$!
TOKEN="quickstart-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
cat >"$WORK/tollgate.toml" <<TOML
[http]
listen = "127.0.0.1:0"
[auth]
tokens = ["$TOKEN"]
[storage]
data_dir = "$WORK/data"
[logging]
level = "warn"
[[webhooks.destinations]]
url = "http://127.0.0.1:$HOOK_PORT/hooks"
secret = "whsec_quickstart"
TOML
"$BIN" serve --config "$WORK/tollgate.toml" >"$WORK/server.out" 2>&1 &
SERVER_PID=$!
BASE=""
for _ in $(seq 1 300); do
  BASE="$(sed -n 's#^tollgate listening on \(http://127\.0\.0\.1:[0-9]*\).*#\1#p' "$WORK/server.out" | head -n 1)"
  [ -n "$BASE" ] && curl -sf "$BASE/ready" >/dev/null && break
  sleep 0.1
done
[ -n "$BASE" ] || { echo "quickstart-check: the server did not start" >&2; cat "$WORK/server.out" >&2; exit 1; }
TOKEN="$TOKEN" ./scripts/quickstart.sh "$BASE" 2>"$WORK/calls.log" || { cat "$WORK/calls.log" >&2; exit 1; }
for _ in $(seq 1 100); do
  grep -q '"payment_gate.payment_status"' "$WORK/hooks.jsonl" 2>/dev/null && break
  sleep 0.1
done
for type in payment_gate.threshold_reached payment_gate.external_initiate payment_gate.payment_status; do
  grep -q "\"$type\"" "$WORK/hooks.jsonl" || { echo "quickstart-check: no $type webhook" >&2; exit 1; }
done
echo "quickstart-check: PASSED"
