#!/usr/bin/env bash
# Runs every test of Tollgate: formatting and lints, unit/property/engine/API/crash tests, and the
# official-SDK test against a live server. Installs what it needs first (Debian packages, Node
# dependencies of tests/sdk). CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
# The simulation must catch each deliberate defect (a build with the `defects` feature).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --features defects --test simulation every_injected
else
  cargo test --features defects --test simulation every_injected
fi
# Doc tests are not run by nextest.
cargo test --doc
if [ -f tests/sdk/run.sh ]; then
  ./tests/sdk/run.sh
fi
# The OpenAPI document is valid OpenAPI 3.1.
./scripts/openapi-check.sh
# The README's quickstart, exactly, against a live server.
./scripts/quickstart-check.sh
echo "all tests passed"
