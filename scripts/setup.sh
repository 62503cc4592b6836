#!/usr/bin/env bash
# Installs what building Tollgate needs on a fresh Debian machine, once; cheap when already done.
# Called by both README commands (scripts/serve.sh and scripts/test.sh).
set -euo pipefail
need=()
for pkg in libclang-dev librocksdb-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
