#!/usr/bin/env bash
# Domain Adaptive Transfer Learning on the embedded Fashion-MNIST task, in the spirit of the paper's Table 3
# and its pre-training size sweep. The source is one half of Fashion-MNIST's training images (all ten
# classes); the target is the other half's T-shirt, Pullover, Coat and Shirt, rotated 15 degrees with noise,
# 10 labels per class. A classifier pre-trained on the whole source gives the importance weights (never
# the target labels); then the same recipe pre-trains on the whole source ("entire"), on the source
# resampled by the same and elastic matchers at several sizes N, and each source model is fine-tuned
# with l2 over SEEDS seeds. Prints Markdown tables: the top weights and target test top-1 per pre-training set.
#
#   bash bench/datl_table.sh [OUT] [SIZES] [PRETRAIN_STEPS] [SEEDS]    defaults: runs/datl-table "3000 12000" 1500 3
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/datl-table} sizes=${2:-3000 12000} steps=${3:-1500} seeds=${4:-3}
xfer=${XFER_BIN:-build/xfer}
source_spec="fmnist:part=0/2"
target_spec="fmnist:classes=0,2,4,6:part=1/2:per_class=10:shift=rot15+noise0.1"
pre=(--backbone cnn4 --iterations "$steps" --batch-size 128 --lr 0.05 --schedule cosine --warmup 0.02)
mkdir -p "$out"

pretrain() {  # NAME [extra pretrain flags]: one source model, kept if already there
  local name=$1
  shift
  [ -f "$out/$name/result.json" ] || "$xfer" -q pretrain --source "$source_spec" "${pre[@]}" "$@" \
    --out "$out/$name" --overwrite
  echo "pre-trained $name" >&2
}

pretrain entire
"$xfer" -q weights --model "$out/entire" --source "$source_spec" --target "$target_spec" --out "$out/weights" \
  > "$out/weights.txt"
models=(entire)
for n in $sizes; do
  for matcher in same elastic; do
    pretrain "$matcher-$n" --weights "$out/weights/weights.json" --matcher "$matcher" --size "$n"
    models+=("$matcher-$n")
  done
done
for m in "${models[@]}"; do
  for ((s = 0; s < seeds; s++)); do
    [ -f "$out/ft/$m/s$s/result.json" ] || "$xfer" -q finetune --method l2 --init "$out/$m" --target "$target_spec" \
      --seed "$s" --out "$out/ft/$m/s$s" --overwrite
  done
  echo "fine-tuned from $m" >&2
done

/usr/bin/python3 - "$out" "$seeds" "${models[@]}" <<'PY'
import json, statistics, sys
out, seeds, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
w = json.load(open(f"{out}/weights/weights.json"))
classes = sorted(w["classes"], key=lambda c: -c["weight"])
print("Importance weights (T = %g), highest first:\n" % w.get("temperature", 2))
print("| source class | P_t | P_s | w |\n|:--|--:|--:|--:|")
for c in classes:
    print(f"| {c['name']} | {c['p_target']:.3f} | {c['p_source']:.3f} | {c['weight']:.2f} |")
print(f"\nTarget test top-1 (%) after l2 fine-tuning, mean ± std over {seeds} seeds:\n")
print("| pre-training set | unique examples | test top-1 |\n|:--|--:|--:|")
for m in models:
    r = json.load(open(f"{out}/{m}/result.json"))
    unique = r.get("sampling", {}).get("unique", r.get("train_size", ""))
    accs = [100 * json.load(open(f"{out}/ft/{m}/s{s}/result.json"))["test_top1"] for s in range(seeds)]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"| {m} | {unique} | {statistics.mean(accs):.1f} ± {sd:.1f} |")
PY
