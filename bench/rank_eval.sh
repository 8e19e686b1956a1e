#!/usr/bin/env bash
# How well `xfer rank` predicts transfer: the candidate source models of bench/suites/rank.json are
# fine-tuned on its two targets with 3 seeds (the ground truth, `xfer bench`), ranked on each target by
# LogME, LEEP, NCE and H-score (`xfer rank --metric all`), and each metric's scores are compared with the
# fine-tuned accuracies by Kendall's tau and the weighted tau (bench/python/rank_correlation.py).
#
#   bash bench/rank_eval.sh [OUT] [THREADS] [SUITE]       defaults: runs/rank-eval 1 bench/suites/rank.json
#
# The accuracies do not depend on the machine's load; the ranking times in the tables do. Finished
# fine-tuning runs are reused when the script is run again. Results: OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/rank-eval} threads=${2:-1} suite=${3:-bench/suites/rank.json}
build=${XFER_BUILD_DIR:-build}
xfer="$build/xfer"
py=/usr/bin/python3  # Debian's python with python3-numpy
[ -x "$xfer" ] || { echo "rank_eval.sh: build xfer first ($xfer is missing)" >&2; exit 2; }
export OMP_WAIT_POLICY=PASSIVE
"$py" bench/python/rank_correlation.py --self-test >&2

# 1. The ground truth: every candidate fine-tuned on every target, 3 seeds. Source models go to OUT/cache.
"$xfer" bench --suite "$suite" --out "$out/bench" --jobs 1 --threads "$threads" --cache "$out/cache" --no-timing

# 2. The candidates of each target (the --init of its runs, in the suite's order) ranked by every metric.
rank_dirs=()
i=0
while IFS=$'\t' read -r target models; do
  i=$((i + 1))
  "$xfer" rank --target "$target" --models "$models" --metric all --threads "$threads" --out "$out/rank-$i"
  rank_dirs+=("$out/rank-$i")
done < <("$py" - "$out/bench/bench.json" <<'PY'
import json, os, sys
bench = json.load(open(sys.argv[1]))
by_target = {}
for run in bench["runs"]:
    request = json.load(open(os.path.join(run["dir"], "request.json")))
    models = by_target.setdefault(request["target"], [])
    if request["init"] not in models:
        models.append(request["init"])
for target, models in by_target.items():
    print(f"{target}\t{','.join(models)}")
PY
)

# 3. Kendall's tau and the weighted tau per metric and target.
"$py" bench/python/rank_correlation.py "$out/bench" "${rank_dirs[@]}" | tee "$out/table.md"
