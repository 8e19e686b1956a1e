#!/usr/bin/env bash
# Speed of xfer's l2 training step against the same step in Python (Debian's python3-torch, the same
# 1.13 kernels), and of xfer's end-to-end Trainer step (loader included) against its bare step.
# xfer and Python alternate, ROUNDS processes each; the end-to-end/bare ratio is measured inside one
# process with interleaved blocks. Medians of single-step times and their ratios are printed.
#
# Then each method of bench/python/method_step.py (l2, mixup, xmixup, smile): xfer's whole Trainer step
# (`xfer_bench method`: loader, method, optimizer) against the Python step on fixed batches, alternating.
#
#   bash bench/compare.sh [ROUNDS] [BATCH] [THREADS] [METHODS] [BACKBONE]
#       defaults: 5 64 2 "l2 mixup xmixup smile" cnn4       (BACKBONE: cnn4 or resnet18)
# Goals: xfer >= 1.1x Python at cnn4, batch 64, on every method; >= 1.0x at resnet18; end-to-end within 5%
# of the bare step.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5} batch=${2:-64} threads=${3:-2} methods=${4:-l2 mixup xmixup smile} backbone=${5:-cnn4}
case "$backbone" in
  cnn4) label="cnn4 (width 16)" pre=2000 goal=1.10 ;;
  resnet18) label="resnet18 (width 64, ImageNet stem)" pre=100 goal=1.00 ;;
  *) echo "compare.sh: BACKBONE must be cnn4 or resnet18, got '$backbone'" >&2; exit 2 ;;
esac
build=${XFER_BUILD_DIR:-build}
{ cmake -S . -B "$build" -DXFER_BUILD_BENCH=ON >/dev/null && cmake --build "$build" --target xfer_bench -j"$(nproc)" >/dev/null; }  # (re)build
py=/usr/bin/python3  # Debian's python, which has python3-torch

step_ms() { sed -E 's/.*"step_ms": ?([0-9.]+).*/\1/'; }
xb=() pb=()
for ((i = 1; i <= rounds; i++)); do
  xb+=("$("$build/bench/xfer_bench" bare --backbone "$backbone" --batch "$batch" --threads "$threads" | step_ms)")
  pb+=("$("$py" bench/python/method_step.py --method l2 --backbone "$backbone" --batch "$batch" --threads "$threads" | step_ms)")
  echo "round $i/$rounds: xfer bare ${xb[-1]} ms, python bare ${pb[-1]} ms" >&2
done
# End-to-end against bare: interleaved in one process (separate processes differ by +-10% here).
over=$("$build/bench/xfer_bench" overhead --backbone "$backbone" --batch "$batch" --threads "$threads" --steps $((rounds * 200)))
field() { echo "$over" | sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
ob=$(field bare_step_ms) oe=$(field e2e_step_ms)

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mx=$(median "${xb[@]}") mp=$(median "${pb[@]}")
awk -v mx="$mx" -v mp="$mp" -v ob="$ob" -v oe="$oe" -v b="$batch" -v t="$threads" -v r="$rounds" -v label="$label" -v goal="$goal" 'BEGIN {
  printf "%s, batch %d, %d threads; median step times\n", label, b, t
  printf "| step | ms/step | samples/s |\n|:--|--:|--:|\n"
  printf "| xfer bare l2 step (%d alternating processes) | %.2f | %.0f |\n", r, mx, 1000 * b / mx
  printf "| Python bare l2 step (%d alternating processes) | %.2f | %.0f |\n", r, mp, 1000 * b / mp
  printf "| xfer bare step, interleaved in one process | %.2f | %.0f |\n", ob, 1000 * b / ob
  printf "| xfer end-to-end step (loader, method, optimizer), same process | %.2f | %.0f |\n", oe, 1000 * b / oe
  printf "\nxfer / Python samples/s: %.2fx (goal >= %.2fx)\n", mp / mx, goal
  printf "end-to-end / bare step time: %.3f (goal <= 1.05)\n", oe / ob
}'

# Per method: xfer's end-to-end step against Python's bare step on fixed batches.
echo
echo "Per method, $label, batch $batch, $threads threads: median step ms over $rounds alternating processes"
echo "| method | xfer ms/step (Trainer step) | Python ms/step (fixed batches) | xfer / Python samples/s |"
echo "|:--|--:|--:|--:|"
for m in $methods; do
  xm=() pm=()
  for ((i = 1; i <= rounds; i++)); do
    xm+=("$("$build/bench/xfer_bench" method --method "$m" --backbone "$backbone" --pretrain-steps "$pre" --batch "$batch" --threads "$threads" | step_ms)")
    pm+=("$("$py" bench/python/method_step.py --method "$m" --backbone "$backbone" --batch "$batch" --threads "$threads" | step_ms)")
    echo "$m round $i/$rounds: xfer ${xm[-1]} ms, python ${pm[-1]} ms" >&2
  done
  awk -v m="$m" -v x="$(median "${xm[@]}")" -v p="$(median "${pm[@]}")" \
    'BEGIN { printf "| %s | %.2f | %.2f | %.2fx |\n", m, x, p, p / x }'
done
