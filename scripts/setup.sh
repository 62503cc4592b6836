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

# Link Debian's RocksDB instead of compiling the bundled one (14 min on 2 cores): cargo reads
# the library's directory from .cargo/config.toml, written here from where the package put it
# on this machine's architecture (x86_64-linux-gnu, aarch64-linux-gnu, ...). Rewritten only
# when it would change, so builds are not invalidated.
cd "$(dirname "$0")/.."
lib="$(dpkg -L librocksdb-dev | grep '/librocksdb\.so$' | head -1)"
if [ -z "$lib" ]; then
  echo "setup: librocksdb-dev lists no librocksdb.so; the bundled RocksDB will be compiled" >&2
  rm -f .cargo/config.toml
  exit 0
fi
want="# Written by scripts/setup.sh for this machine (not in git): link Debian's RocksDB.
# Without this file the rocksdb crate compiles its bundled copy.
[env]
ROCKSDB_LIB_DIR = \"$(dirname "$lib")\"
ROCKSDB_INCLUDE_DIR = \"/usr/include\""
mkdir -p .cargo
if [ "$(cat .cargo/config.toml 2>/dev/null)" != "$want" ]; then
  printf '%s\n' "$want" > .cargo/config.toml
fi
