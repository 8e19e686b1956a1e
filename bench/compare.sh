#!/usr/bin/env bash
# Speed of xfer's training step against an expert's PyTorch loop (bench/python/method_step.py, Debian's
# python3-torch: the same 1.13 kernels), for each method, as issue 24's protocol asks:
#   - xfer's whole Trainer step (`xfer_bench method`: loader with augmentation, method, optimizer), as
#     `xfer finetune` runs it, against Python's step on fixed batches (its data costs it nothing);
#   - xfer and Python alternate, one process each per round, ROUNDS rounds (default 7: single sets vary by
#     25% here); each process reports the median of its single-step times; the table gives the median over
#     rounds and the range (min-max), and the ratio of the medians as samples/s;
#   - Python's frozen networks (smile, delta) run in the faster of the two memory layouts, picked by one
#     short run of each before the rounds;
#   - Python runs twice per round: as installed, and with glibc malloc tuned as xfer tunes it at start
#     (MALLOC_MMAP_THRESHOLD_ 32 MiB, MALLOC_TRIM_THRESHOLD_ 256 MiB): without it every large tensor is a
#     fresh mmap whose pages fault in again each step, which on this VM costs more than the step's kernels.
#     The second column is the fair one for the code itself; the first is what a user gets by default;
#   - quiet: the 1-minute load average must be below 0.3 per core before the first round (the script
#     waits up to 5 minutes for it); each block then reports the CPU that other processes used while it
#     ran (busy CPU time from /proc/stat minus this script's children), as an average load; a block where
#     that exceeds 0.3 per core is marked UNDER LOAD and is not a result.
# Then the bare l2 step (one fixed batch, no loader) of both sides, and xfer's end-to-end step against its
# bare step in one process.
#
#   bash bench/compare.sh [ROUNDS] [BATCH] [THREADS] [METHODS] [BACKBONE]
#       defaults: 7 64 2 "l2 mixup xmixup smile delta" cnn4       (BACKBONE: cnn4 or resnet18)
# Goals (issue 24): >= 1.2x for l2 at cnn4, >= 1.3x for smile and delta, never below 1.0x.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7} batch=${2:-64} threads=${3:-2} methods=${4:-l2 mixup xmixup smile delta} backbone=${5:-cnn4}
case "$backbone" in
  cnn4) label="cnn4 (width 16)" pre=2000 steps=200 ;;
  resnet18) label="resnet18 (width 64, ImageNet stem)" pre=100 steps=30 ;;
  *) echo "compare.sh: BACKBONE must be cnn4 or resnet18, got '$backbone'" >&2; exit 2 ;;
esac
build=${XFER_BUILD_DIR:-build}
{ cmake -S . -B "$build" -DXFER_BUILD_BENCH=ON >/dev/null && cmake --build "$build" --target xfer_bench -j"$(nproc)" >/dev/null; }
py=/usr/bin/python3  # Debian's python, which has python3-torch
export OMP_WAIT_POLICY=PASSIVE  # both sides alike: no spinning threads between steps
cores=$(nproc)

load() { cut -d' ' -f1 /proc/loadavg; }
busy_s() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }
times_file=$(mktemp)
trap 'rm -f "$times_file"' EXIT
# CPU seconds of this script's finished children. `times` runs in this shell (a command substitution would
# fork a process that has no children yet), so it writes to a file first.
children_s() { awk 'NR == 2 { sub(/s/, "", $1); sub(/s/, "", $2); split($1, u, "m"); split($2, s, "m"); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$times_file"; }
now_s() { date +%s.%N; }
block_start() { times > "$times_file"; b0=$(busy_s) c0=$(children_s) t0=$(now_s); }
others() {  # sets $others: the average load of other processes since block_start, and the verdict
  times > "$times_file"  # here, not in a command substitution: see children_s
  others=$(awk -v b="$(busy_s)" -v b0="$b0" -v c="$(children_s)" -v c0="$c0" -v t="$(now_s)" -v t0="$t0" -v n="$cores" 'BEGIN {
    o = ((b - b0) - (c - c0)) / (t - t0); if (o < 0) o = 0
    printf "%.2f (%s)", o, (o > 0.3 * n) ? "UNDER LOAD, not a result" : "quiet" }')
}
python_env=(env MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456)
step_ms() { sed -E 's/.*"step_ms": ?([0-9.]+).*/\1/'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.1f-%.1f", lo, hi}'; }
xfer_method() {
  "$build/bench/xfer_bench" method --method "$1" --backbone "$backbone" --pretrain-steps "$pre" --batch "$batch" \
    --threads "$threads" --steps "$steps" | step_ms
}
python_method() {  # METHOD LAYOUT [env...]
  local m=$1 layout=$2; shift 2
  "$@" "$py" bench/python/method_step.py --method "$m" --backbone "$backbone" --batch "$batch" --threads "$threads" \
    --steps "$steps" --teacher-layout "$layout" | step_ms
}

for ((w = 0; w < 30; w++)); do awk -v l="$(load)" -v n="$cores" 'BEGIN { exit !(l < 0.3 * n) }' && break; sleep 10; done
echo "$label, batch $batch, $threads threads, $rounds alternating rounds; median step ms over rounds (range)"
echo "1-minute load average before the first round: $(load); the last column: other processes' average load while the row ran"
echo "| method | xfer (Trainer step) | Python, malloc as installed | Python, malloc as xfer's | xfer / Python samples/s (as installed, as xfer's) | others' load |"
echo "|:--|--:|--:|--:|--:|:--|"
for m in $methods; do
  xfer_method "$m" >/dev/null  # the source model's cache and the kernels' first use, outside the rounds
  layout=contiguous
  if [ "$m" = smile ] || [ "$m" = delta ]; then
    a=$(python_method "$m" channels_last "${python_env[@]}") b=$(python_method "$m" contiguous "${python_env[@]}")
    layout=$(awk -v a="$a" -v b="$b" 'BEGIN { print (a <= b) ? "channels_last" : "contiguous" }')
    echo "$m: Python's frozen network in $layout ($a ms against $b ms)" >&2
  fi
  block_start
  xm=() pm=() tm=()
  for ((i = 1; i <= rounds; i++)); do
    xm+=("$(xfer_method "$m")")
    pm+=("$(python_method "$m" "$layout")")
    tm+=("$(python_method "$m" "$layout" "${python_env[@]}")")
    echo "$m round $i/$rounds: xfer ${xm[-1]} ms, python ${pm[-1]} ms, python with xfer's malloc ${tm[-1]} ms" >&2
  done
  others
  awk -v m="$m" -v x="$(median "${xm[@]}")" -v p="$(median "${pm[@]}")" -v t="$(median "${tm[@]}")" \
    -v xr="$(range "${xm[@]}")" -v pr="$(range "${pm[@]}")" -v tr="$(range "${tm[@]}")" -v l="$others" \
    'BEGIN { printf "| %s | %.1f (%s) | %.1f (%s) | %.1f (%s) | %.2fx, %.2fx | %s |\n", m, x, xr, p, pr, t, tr, p / x, t / x, l }'
done

# One evaluation pass over the demo target's 5,000 test images, batch 500: xfer's evaluate() against an
# eval-mode, inference-mode PyTorch pass in the faster of its two layouts. Goal: >= 1.5x.
pass_ms() { sed -E 's/.*"pass_ms": ?([0-9.]+).*/\1/'; }
passes=$((steps / 10))
eval_py() { "${python_env[@]}" "$py" bench/python/eval_pass.py --backbone "$backbone" --threads "$threads" "$@" | pass_ms; }
a=$(eval_py --passes 3 --layout channels_last) b=$(eval_py --passes 3 --layout contiguous)
layout=$(awk -v a="$a" -v b="$b" 'BEGIN { print (a <= b) ? "channels_last" : "contiguous" }')
block_start
xe=() pe=()
for ((i = 1; i <= rounds; i++)); do
  xe+=("$("$build/bench/xfer_bench" eval --backbone "$backbone" --batch 500 --threads "$threads" --steps "$passes" | pass_ms)")
  pe+=("$(eval_py --passes "$passes" --layout "$layout")")
  echo "eval round $i/$rounds: xfer ${xe[-1]} ms, python ${pe[-1]} ms" >&2
done
others
awk -v x="$(median "${xe[@]}")" -v p="$(median "${pe[@]}")" -v xr="$(range "${xe[@]}")" -v pr="$(range "${pe[@]}")" \
  -v lay="$layout" -v l="$others" 'BEGIN {
  printf "\nEvaluation pass, 5,000 images, batch 500: xfer %.0f ms (%s), Python (%s, malloc tuned like xfer) %.0f ms (%s): %.2fx; load of other processes %s\n", x, xr, lay, p, pr, p / x, l
}'

# The bare l2 step of both sides, and xfer's end-to-end step against its bare step in one process.
block_start
xb=() pb=()
for ((i = 1; i <= rounds; i++)); do
  xb+=("$("$build/bench/xfer_bench" bare --backbone "$backbone" --batch "$batch" --threads "$threads" --steps "$steps" | step_ms)")
  pb+=("$(python_method l2 contiguous "${python_env[@]}")")
done
over=$("$build/bench/xfer_bench" overhead --backbone "$backbone" --batch "$batch" --threads "$threads" --steps $((rounds * steps)))
field() { echo "$over" | sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
others
awk -v x="$(median "${xb[@]}")" -v p="$(median "${pb[@]}")" -v xr="$(range "${xb[@]}")" -v pr="$(range "${pb[@]}")" \
  -v ob="$(field bare_step_ms)" -v oe="$(field e2e_step_ms)" -v l="$others" 'BEGIN {
  printf "\nBare l2 step on one fixed batch: xfer %.1f ms (%s), Python (malloc tuned like xfer) %.1f ms (%s): %.2fx; load of other processes %s\n", x, xr, p, pr, p / x, l
  printf "xfer end-to-end / bare step in one process: %.1f / %.1f ms = %.3f\n", oe, ob, oe / ob
}'
