#!/usr/bin/env bash
# Setup, build, then the main job: `xfer demo` on the embedded Fashion-MNIST transfer task, which
# prints a results table. Extra arguments go to `xfer demo` (see `build/xfer demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh xfer_bin
exec "${XFER_BUILD_DIR:-build}/xfer" demo "$@"
