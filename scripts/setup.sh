#!/usr/bin/env bash
# Installs every Debian package xfer needs (Debian 12). Idempotent: installs only what is missing, so a
# second run needs no network. Run as root, or with sudo available.
set -euo pipefail

packages=(
  build-essential cmake            # compiler and build
  libtorch-dev                     # LibTorch 1.13: tensors, autograd, nn, optim, c10d, TorchScript
  libopenblas0-openmp              # fast BLAS: without it LibTorch's linear layers run ~15x slower
  libgloo-dev                      # c10d's Gloo backend (distributed training)
  libnlopt-cxx-dev                 # SLSQP for GradMix
  libcli11-dev                     # the command line
  nlohmann-json3-dev               # configs, results, metrics
  libsqlite3-dev                   # search studies on one machine
  libpq-dev                        # search studies and suite queues on PostgreSQL, shared by machines
  postgresql                       # the throwaway server the PostgreSQL tests start (initdb, pg_ctl)
  libturbojpeg0-dev libpng-dev     # image folders, PNG output
  zlib1g-dev                       # gzip'd IDX files, checksums
  googletest libgtest-dev libbenchmark-dev   # tests and micro-benchmarks
  dataset-fashion-mnist            # the embedded default data, in /usr/share/datasets/fashion-mnist
  python3-torch python3-torchvision          # golden values and the Python reference benchmark
  python3-optuna                   # TPE golden values (tests/golden/make_tpe_golden.py), bench/tpe_bench.sh
  gnuplot-nox                      # plots in reports
  clang libclang-rt-14-dev         # scripts/sanitize.sh: ASan/UBSan builds and libFuzzer
  clang-format                     # scripts/format.sh: the house style, checked by CI
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
    sudo=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#packages[@]} packages are installed"
fi

# LibTorch links libblas.so.3; make sure the alternative points at OpenBLAS, not the reference BLAS.
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
case "$blas" in
  *openblas*) ;;
  *) echo "setup: warning: libblas.so.3 is $blas, not OpenBLAS; linear layers will be slow." >&2
     echo "       fix: update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3" >&2 ;;
esac
