#!/usr/bin/env bash
# Validates Tollgate's OpenAPI document (`tollgate openapi`, the same document GET /openapi.json
# serves) with openapi-spec-validator from PyPI, installed once into target/openapi-venv.
# Called by scripts/test.sh; the unit test in src/http/openapi.rs checks that every served
# route is in the document with its request and response types.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/openapi-venv
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "openapi-spec-validator>=0.7,<1"
fi
cargo build -q --bin tollgate
out=target/openapi.json
target/debug/tollgate openapi > "$out"
"$venv/bin/openapi-spec-validator" "$out"
