#!/usr/bin/env bash
# Data-parallel throughput on one machine: 1 rank with T threads against T ranks with 1 thread each
# (`xfer launch`, c10d/Gloo on loopback), the same global batch. Prints samples/s of each and the share of
# the step the 2-rank run spends in the gradient all-reduce (result.json: samples_per_s, allreduce_share;
# metrics.jsonl has allreduce_ms per logging window).
#
#   bash bench/dist_bench.sh [BACKBONE] [STEPS] [BATCH] [RANKS]    defaults: cnn4 30 64 2
# Goal: the all-reduce under 10% of the step for resnet18.
set -euo pipefail
cd "$(dirname "$0")/.."
backbone=${1:-cnn4} steps=${2:-30} batch=${3:-64} ranks=${4:-2}
xfer=${XFER:-build/xfer}
export OMP_WAIT_POLICY=PASSIVE
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
port=$((29500 + RANDOM % 1000))
common=(finetune --method scratch --target "fmnist:classes=0,1,2,3,4:per_class=400" --backbone "$backbone"
        --iterations "$steps" --batch-size "$batch" --eval-every "$steps" --log-every 10 --select last)

"$xfer" "${common[@]}" --threads "$ranks" --out "$out/one" >/dev/null 2>"$out/one.err"
"$xfer" launch --nproc "$ranks" --master-port "$port" -- xfer "${common[@]}" --threads 1 --out "$out/many" \
  >/dev/null 2>"$out/many.err"

field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r.get(sys.argv[2], 0))" "$1" "$2"; }
s1=$(field "$out/one/result.json" samples_per_s)
sn=$(field "$out/many/result.json" samples_per_s)
share=$(field "$out/many/result.json" allreduce_share)
wait=$(field "$out/many/result.json" allreduce_wait_share)
ms1=$(field "$out/one/result.json" step_ms)
msn=$(field "$out/many/result.json" step_ms)
printf '%s, global batch %s, %s steps\n' "$backbone" "$batch" "$steps"
printf '  1 rank  x %s threads: %8.1f samples/s  (%.1f ms/step)\n' "$ranks" "$s1" "$ms1"
printf '  %s ranks x 1 thread : %8.1f samples/s  (%.1f ms/step), all-reduce %.1f%% of the step (%.1f%% waiting for the slowest rank)\n' \
  "$ranks" "$sn" "$msn" "$(python3 -c "print(100*$share)")" "$(python3 -c "print(100*$wait)")"
printf '  speed-up %.2fx\n' "$(python3 -c "print($sn/$s1)")"
