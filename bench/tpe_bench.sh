#!/usr/bin/env bash
# xfer's TPE sampler against Optuna's TPESampler (Debian's python3-optuna 3.1, default settings) on standard
# objectives with log-scale, integer and categorical parameters: for each, SEEDS searches of TRIALS trials
# per sampler, and the mean regret (best value found minus the known minimum) ± its standard error.
# Goal: on no objective is xfer's mean regret worse than Optuna's by more than 2 standard errors (of the
# difference). The figures are regrets, not times: the machine's load does not change them.
#
#   bash bench/tpe_bench.sh [SEEDS] [TRIALS] [OBJECTIVES]      defaults: 100 40 branin,hartmann6,log3,mixed,logint
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100} trials=${2:-40} objectives=${3:-branin,hartmann6,log3,mixed,logint}
build=${XFER_BUILD_DIR:-build}
{ cmake -S . -B "$build" -DXFER_BUILD_BENCH=ON >/dev/null && cmake --build "$build" --target xfer_tpe_bench -j2 >/dev/null; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/bench/xfer_tpe_bench" --seeds "$seeds" --trials "$trials" --objectives "$objectives" > "$tmp/xfer.jsonl"
"$build/bench/xfer_tpe_bench" --seeds "$seeds" --trials "$trials" --objectives "$objectives" --kernels normalised \
    > "$tmp/xfer_normalised.jsonl"
/usr/bin/python3 bench/python/tpe_optuna.py --seeds "$seeds" --trials "$trials" --objectives "$objectives" > "$tmp/optuna.jsonl"
/usr/bin/python3 - "$tmp/xfer.jsonl" "$tmp/optuna.jsonl" "$seeds" "$trials" "$tmp/xfer_normalised.jsonl" <<'PY'
import json, math, sys
def load(p):
    return {j["objective"]: j["regrets"] for j in map(json.loads, open(p))}
x, o, xn = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[5])
def stats(r):
    n = len(r); m = sum(r) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in r) / (n - 1))
    return m, sd / math.sqrt(n)
print(f"TPE against Optuna: {sys.argv[3]} seeds x {sys.argv[4]} trials per objective, mean regret ± standard error")
print("(xfer: Optuna 3.1's kernels, the default; normalised: each kernel's density divided by its sigma, as Optuna 3.5)")
print("| objective | xfer | optuna 3.1 | xfer - optuna | in SE of the difference | goal (<= 2) | xfer, normalised | its difference in SE |")
print("|:--|--:|--:|--:|--:|:-:|--:|--:|")
for name in x:
    mx, sx = stats(x[name]); mo, so = stats(o[name]); mn, sn = stats(xn[name])
    se = math.sqrt(sx * sx + so * so)
    z = (mx - mo) / se if se > 0 else 0.0
    zn = (mn - mo) / math.sqrt(sn * sn + so * so) if sn + so > 0 else 0.0
    print(f"| {name} | {mx:.4f} ± {sx:.4f} | {mo:.4f} ± {so:.4f} | {mx - mo:+.4f} | {z:+.2f} | {'ok' if z <= 2 else 'WORSE'} "
          f"| {mn:.4f} ± {sn:.4f} | {zn:+.2f} |")
PY
