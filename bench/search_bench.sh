#!/usr/bin/env bash
# The search's own cost, and parallel workers.
#   1. Overhead: a search of cheap trials reports its sampler and storage time per trial against the
#      trials' run time (goal: < 1%).
#   2. Workers: a fixed budget of cheap trials with one worker (all cores) and with two workers (one core
#      each), alternating ROUNDS times; median wall-clock seconds (goal: two finish faster than one).
#
#   bash bench/search_bench.sh [ROUNDS] [TRIALS]      defaults: 3 8
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} trials=${2:-8}
xfer=${XFER_BIN:-build/xfer}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cheap=(--method scratch --target fmnist:classes=2,4,6,7,9:per_class=20:val=10 --backbone cnn4:width=8
       --iterations 150 --eval-every 50 --batch-size 32 --param lr=log:0.01:0.2 --param momentum=lin:0.5:0.95
       --trials "$trials" --startup-trials 4)

one=() two=() overhead=()
for ((i = 1; i <= rounds; i++)); do
  for w in 1 2; do
    start=$(date +%s%N)
    "$xfer" -q search "${cheap[@]}" --workers "$w" --out "$tmp/w$w-$i" > "$tmp/w$w-$i.txt"
    secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    if [ "$w" = 1 ]; then one+=("$secs"); else two+=("$secs"); fi
    echo "round $i: $w worker(s): $secs s" >&2
  done
  overhead+=("$(grep -o 'Search overhead.*' "$tmp/w1-$i.txt")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m1=$(median "${one[@]}") m2=$(median "${two[@]}")
echo "Cheap trials: scratch, cnn4 width 8, 150 steps of 32 images, $trials trials per search, $rounds rounds"
printf '%s\n' "${overhead[@]}"
echo "| workers | median wall seconds | trials/min |"
echo "|:--|--:|--:|"
awk -v m1="$m1" -v m2="$m2" -v n="$trials" 'BEGIN {
  printf "| 1 (2 threads) | %.1f | %.1f |\n| 2 (1 thread each) | %.1f | %.1f |\n", m1, 60 * n / m1, m2, 60 * n / m2
  printf "\ntwo workers / one: %.2fx the speed\n", m1 / m2 }'
