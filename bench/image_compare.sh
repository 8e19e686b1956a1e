#!/usr/bin/env bash
# The training image pipeline against PyTorch's (issue 24): decode + RandomResizedCrop + horizontal flip to
# 224x224 uint8 on the same JPEG folder, xfer's loader (`xfer_image_bench decode`, ImageFiles::load_batch
# with W decode threads) against torchvision's ImageFolder + transforms in a DataLoader with W worker
# processes (bench/python/image_pipeline.py, PIL as Debian installs it). Alternating, ROUNDS rounds per
# worker count; median images/s (range) and the ratio. The 1-minute load average must be below 0.3 per core
# before the first round (waits up to 5 minutes); the load before and after is printed.
#
#   bash bench/image_compare.sh [ROUNDS] [COUNT] [WORKERS...]      defaults: 7 500 1 2
# The folder (2,000 photo-like JPEGs with 300-500 px sides, made by `xfer_image_bench make`) is kept in
# ${XFER_JPEG_DIR:-/tmp/xfer-bench-jpegs}.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7} count=${2:-500}
shift $(( $# > 2 ? 2 : $# )) || true
workers=("$@"); [ ${#workers[@]} -gt 0 ] || workers=(1 2)
build=${XFER_BUILD_DIR:-build}
dir=${XFER_JPEG_DIR:-/tmp/xfer-bench-jpegs}
{ cmake -S . -B "$build" -DXFER_BUILD_BENCH=ON >/dev/null && cmake --build "$build" --target xfer_image_bench -j"$(nproc)" >/dev/null; }
[ -f "$dir/.complete" ] || { "$build/bench/xfer_image_bench" make --dir "$dir" --count 2000 >/dev/null && touch "$dir/.complete"; }
py=/usr/bin/python3
cores=$(nproc)
load() { cut -d' ' -f1-3 /proc/loadavg; }
rate() { sed -E 's/.*"images_per_s": ?([0-9.]+).*/\1/'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.0f-%.0f", lo, hi}'; }
for ((w = 0; w < 30; w++)); do awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v n="$cores" 'BEGIN { exit !(l < 0.3 * n) }' && break; sleep 10; done
echo "decode + RandomResizedCrop + flip to 224, $count JPEGs of $dir, $rounds alternating rounds; load before: $(load)"
echo "| workers | xfer images/s | PyTorch DataLoader images/s | xfer / PyTorch | xfer per worker | PyTorch per worker |"
echo "|--:|--:|--:|--:|--:|--:|"
for w in "${workers[@]}"; do
  xs=() ps=()
  for ((i = 1; i <= rounds; i++)); do
    xs+=("$(OMP_NUM_THREADS=1 "$build/bench/xfer_image_bench" decode --dir "$dir" --count "$count" --size 224 --workers "$w" | rate)")
    ps+=("$("$py" bench/python/image_pipeline.py --dir "$dir" --count "$count" --size 224 --workers "$w" | rate)")
    echo "workers $w round $i/$rounds: xfer ${xs[-1]}, pytorch ${ps[-1]} images/s" >&2
  done
  awk -v w="$w" -v x="$(median "${xs[@]}")" -v p="$(median "${ps[@]}")" -v xr="$(range "${xs[@]}")" -v pr="$(range "${ps[@]}")" \
    'BEGIN { printf "| %d | %.0f (%s) | %.0f (%s) | %.2fx | %.0f | %.0f |\n", w, x, xr, p, pr, x / p, x / w, p / w }'
done
echo "load after: $(load)"
