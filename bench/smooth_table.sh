#!/usr/bin/env bash
# Smooth Transfer Learning on the embedded Fashion-MNIST task, in the spirit of the paper's Table 1 and
# Fig. 2: for each target size N (labels per class), from random initialisation and with the same step
# budget, target-only, pretrain-finetune (switch at T/2), multitask (the best of a small grid of fixed
# weights, chosen on validation) and smooth (TPE over tau, t0, alpha on validation). Prints a table of
# validation and test top-1 and writes the best schedules to OUT/schedules.png.
#
#   bash bench/smooth_table.sh [OUT] [SIZES] [ITERATIONS] [TRIALS]     defaults: runs/smooth-table "10 50 500" 600 16
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/smooth-table} sizes=${2:-10 50 500} iters=${3:-600} trials=${4:-16}
xfer=${XFER_BIN:-build/xfer}
py=/usr/bin/python3
half=$((iters / 2))
mkdir -p "$out"

for n in $sizes; do
  d="$out/n$n"
  common=(--source fmnist:classes=0,1,3,5,8 --target "fmnist:classes=2,4,6,7,9:per_class=$n:val=50"
          --backbone cnn4 --iterations "$iters" --eval-every $((iters / 20)) --batch-size 64
          --schedule cosine --warmup 0.025 --lr 0.05 --momentum 0.9 --weight-decay 5e-4 --select best --seed 0)
  for preset in target-only pretrain-finetune; do
    [ -f "$d/$preset/result.json" ] || "$xfer" -q finetune --method smooth --lambda-schedule "$preset" "${common[@]}" \
      --out "$d/$preset" --overwrite >/dev/null
    echo "n=$n $preset done" >&2
  done
  for alpha in -2 0 2; do
    [ -f "$d/multitask-a$alpha/result.json" ] || "$xfer" -q finetune --method smooth --lambda-schedule multitask \
      --alpha "$alpha" "${common[@]}" --out "$d/multitask-a$alpha" --overwrite >/dev/null
    echo "n=$n multitask alpha=$alpha done" >&2
  done
  "$xfer" -q search --method smooth "${common[@]}" --param "tau=log:1:$((iters * 10))" \
    --param "t0=lin:-$half:$half" --param alpha=lin:-6:6 --trials "$trials" --startup-trials 6 \
    --out "$d/search" > "$d/search.txt"
  echo "n=$n search done" >&2
done

"$py" - "$out" "$iters" $sizes <<'PY'
import json, math, os, subprocess, sys
out, iters, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def res(path):
    with open(os.path.join(path, "result.json")) as f:
        return json.load(f)
def cell(r):
    return f"{100 * r['best_val_top1']:.1f} / {100 * r['test_top1']:.1f}"
rows, curves = [], []
for n in sizes:
    d = os.path.join(out, f"n{n}")
    t, p = res(f"{d}/target-only"), res(f"{d}/pretrain-finetune")
    mt = max((res(f"{d}/multitask-a{a}") | {"alpha": a} for a in ("-2", "0", "2")), key=lambda r: r["best_val_top1"])
    with open(f"{d}/search/best.json") as f:
        best = json.load(f)
    s = res(best["run_dir"])
    om = best["params"]
    rows.append(f"| {n} ({5 * int(n)}) | {cell(t)} | {cell(p)} | {cell(mt)} (alpha {mt['alpha']}) | {cell(s)} | "
                f"tau={om['tau']:.3g} t0={om['t0']:.0f} alpha={om['alpha']:.2f} | {best['complete']} |")
    curves.append((n, om, s.get("selected_step", -1)))
print("Validation / test top-1 (%), cnn4 from random initialisation, seed 0, "
      f"{iters} steps of 64 target (+64 source) images; multitask: best of alpha in {{-2, 0, 2}} on validation;")
print("smooth: TPE's best on validation (tau, t0, alpha).\n")
print("| N per class (images) | target-only | pretrain-finetune | multitask | smooth (TPE) | best omega | trials |")
print("|:--|--:|--:|--:|--:|:--|--:|")
print("\n".join(rows))
# Fig. 2: the best schedule of each size, with its selected (early-stopped) step.
T = iters
def lam(t, om):
    z = -(t - T / 2 - om["t0"]) / om["tau"] + om["alpha"]
    return math.exp(-z) / (1 + math.exp(-z)) if z >= 0 else 1 / (1 + math.exp(z))
data = os.path.join(out, "schedules.dat")
with open(data, "w") as f:
    for n, om, _ in curves:
        f.write(f"# N={n}\n")
        for t in range(1, T + 1):
            f.write(f"{t} {lam(t, om)}\n")
        f.write("\n\n")
plots = ", ".join(f"'{data}' index {i} with lines lw 2 title 'N={n}/class'" for i, (n, _, _) in enumerate(curves))
marks = "".join(f"set arrow from {st},0 to {st},1 nohead dt 2 lc {i + 1}\n" for i, (_, _, st) in enumerate(curves) if st > 0)
script = (f"set terminal pngcairo size 800,500\nset output '{out}/schedules.png'\nset xlabel 'step t'\n"
          f"set ylabel 'lambda(t)'\nset yrange [-0.02:1.02]\nset key outside\n{marks}plot {plots}\n")
subprocess.run(["gnuplot"], input=script.encode(), check=False)
print(f"\nBest schedules: {out}/schedules.png (dashed: the selected early-stopping step)")
PY
