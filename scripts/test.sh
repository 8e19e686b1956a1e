#!/usr/bin/env bash
# Setup, build, and the whole test suite through ctest. Extra arguments go to ctest (e.g. -R Spec).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
cd "${XFER_BUILD_DIR:-build}"
ctest --output-on-failure -j"$(nproc)" "$@"
