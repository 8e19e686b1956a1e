#!/usr/bin/env bash
# Data-parallel throughput on one machine: 1 rank with R threads against R ranks with 1 thread each
# (`xfer launch`, c10d/Gloo on loopback), the same global batch, then the same two setups in PyTorch
# (bench/python/ddp_step.py: DistributedDataParallel, which overlaps the all-reduce with the backward pass).
# Prints samples/s of each and the share of the step xfer's R-rank run spends in the gradient all-reduce
# (result.json: samples_per_s, allreduce_share; metrics.jsonl has allreduce_ms per logging window).
#
#   bash bench/dist_bench.sh [BACKBONE] [STEPS] [BATCH] [RANKS] [SIZE]    defaults: cnn4 30 64 2 28
# SIZE 28 trains on Fashion-MNIST as it is (1 channel); another SIZE on 2000 Fashion-MNIST images written
# once as an image folder (bench/python/fmnist_folder.py, under ~/.cache/xfer/bench) and read at SIZE x SIZE
# RGB, e.g. 224, resnet18's own resolution: the compute per step grows with the pixels, the gradient does not.
# Goal: the all-reduce under 10% of the step for resnet18.
set -euo pipefail
cd "$(dirname "$0")/.."
backbone=${1:-cnn4} steps=${2:-30} batch=${3:-64} ranks=${4:-2} size=${5:-28}
xfer=${XFER:-build/xfer}
py=/usr/bin/python3  # Debian's python, which has python3-torch
export OMP_WAIT_POLICY=PASSIVE
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
port=$((29500 + RANDOM % 1000))
if [[ $size == 28 ]]; then
  target="fmnist:classes=0,1,2,3,4:per_class=400" channels=1
else
  folder=${XDG_CACHE_HOME:-$HOME/.cache}/xfer/bench/fmnist-folder
  "$py" bench/python/fmnist_folder.py "$folder"
  target="folder:dir=$folder:size=$size:test=none:cache=$folder.$size.cache" channels=3
fi
common=(finetune --method scratch --target "$target" --backbone "$backbone"
        --iterations "$steps" --batch-size "$batch" --eval-every "$steps" --log-every 10 --select last)

"$xfer" "${common[@]}" --threads "$ranks" --out "$out/one" >/dev/null 2>"$out/one.err" || { cat "$out/one.err"; exit 1; }
"$xfer" launch --nproc "$ranks" --master-port "$port" -- xfer "${common[@]}" --threads 1 --out "$out/many" \
  >/dev/null 2>"$out/many.err" || { cat "$out/many.err"; exit 1; }
(cd bench/python && "$py" ddp_step.py --backbone "$backbone" --size "$size" --channels "$channels" --batch "$batch" \
  --ranks "$ranks" --steps "$steps") >"$out/python.json"

field() { "$py" -c "import json,sys; r=json.load(open(sys.argv[1])); print(r.get(sys.argv[2], 0))" "$1" "$2"; }
calc() { "$py" -c "print($1)"; }
s1=$(field "$out/one/result.json" samples_per_s) sn=$(field "$out/many/result.json" samples_per_s)
ms1=$(field "$out/one/result.json" step_ms) msn=$(field "$out/many/result.json" step_ms)
share=$(field "$out/many/result.json" allreduce_share) wait=$(field "$out/many/result.json" allreduce_wait_share)
p1=$(field "$out/python.json" one_samples_per_s) pn=$(field "$out/python.json" ddp_samples_per_s)
pms1=$(field "$out/python.json" one_step_ms) pmsn=$(field "$out/python.json" ddp_step_ms)
printf '%s, %sx%s images, global batch %s, %s steps\n' "$backbone" "$size" "$size" "$batch" "$steps"
printf '  xfer    1 rank  x %s threads: %8.1f samples/s  (%.1f ms/step)\n' "$ranks" "$s1" "$ms1"
printf '  xfer    %s ranks x 1 thread : %8.1f samples/s  (%.1f ms/step), all-reduce %.1f%% of the step (%.1f%% waiting for the slowest rank)\n' \
  "$ranks" "$sn" "$msn" "$(calc "100*$share")" "$(calc "100*$wait")"
printf '  PyTorch 1 process x %s threads: %8.1f samples/s  (%.1f ms/step)\n' "$ranks" "$p1" "$pms1"
printf '  PyTorch DDP %s ranks x 1 thread: %8.1f samples/s  (%.1f ms/step)\n' "$ranks" "$pn" "$pmsn"
printf '  %s ranks against 1 rank: xfer %.2fx, PyTorch %.2fx; xfer %s ranks against PyTorch DDP: %.2fx\n' \
  "$ranks" "$(calc "$sn/$s1")" "$(calc "$pn/$p1")" "$ranks" "$(calc "$sn/$pn")"
