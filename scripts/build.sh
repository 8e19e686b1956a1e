#!/usr/bin/env bash
# Configures and builds xfer in build/ (or $XFER_BUILD_DIR). Extra arguments are build targets.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${XFER_BUILD_DIR:-build}
jobs=$(nproc)
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
if (($#)); then
  for target in "$@"; do cmake --build "$build" --target "$target" -j"$jobs"; done
else
  cmake --build "$build" -j"$jobs"
fi
