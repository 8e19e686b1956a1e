#!/usr/bin/env bash
# Configures and builds xfer in build/ (or $XFER_BUILD_DIR). Extra arguments are build targets.
# $XFER_CMAKE_ARGS (e.g. -DXFER_WITH_GLOO=ON, as CI sets it) are passed to the configure, which then runs
# every time so that they apply to an existing build directory too.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${XFER_BUILD_DIR:-build}
jobs=$(nproc)
if [ ! -f "$build/CMakeCache.txt" ] || [ -n "${XFER_CMAKE_ARGS:-}" ]; then
  # shellcheck disable=SC2086  # the arguments are words
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${XFER_CMAKE_ARGS:-} >/dev/null
fi
if (($#)); then
  for target in "$@"; do cmake --build "$build" --target "$target" -j"$jobs"; done
else
  cmake --build "$build" -j"$jobs"
fi
