#!/usr/bin/env bash
# Runs the Tollgate server on its embedded default: RocksDB in ./data, config/default.toml,
# listening on 127.0.0.1:8080 with the development token `tollgate-dev-token`.
# Extra arguments go to `tollgate serve` (e.g. --config my.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release --bin tollgate -- serve "$@"
