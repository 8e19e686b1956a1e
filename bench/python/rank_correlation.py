#!/usr/bin/python3
"""How well `xfer rank`'s scores predict fine-tuned accuracy: Kendall's tau and the weighted tau.

  /usr/bin/python3 bench/python/rank_correlation.py BENCH_DIR RANK_DIR [RANK_DIR ...] > table.md
  /usr/bin/python3 bench/python/rank_correlation.py --self-test

BENCH_DIR is the output of `xfer bench` (bench.json; each run's request.json names its --init model and its
--target); each RANK_DIR holds the rank.json of `xfer rank --models` on one of the suite's targets. For every
target the ground truth of a candidate model is its test top-1 after fine-tuning, averaged over the seeds.

Written with numpy (Debian's python3-numpy) from the definitions scipy.stats implements:
  Kendall's tau-b  (P - Q) / sqrt((P + Q + T_x) (P + Q + T_y)), P/Q concordant/discordant pairs, T_x pairs
                   tied only in x, T_y only in y (scipy.stats.kendalltau's default)
  weighted tau     Vigna (2015), additive hyperbolic weights, as scipy.stats.weightedtau(x, y) with its
                   defaults and LogME's paper: a pair of elements ranked r and s (0 = the highest, by
                   decreasing lexicographic (x, y)) weighs 1/(r+1) + 1/(s+1);
                   tau_w = sum_pairs w sgn(dx) sgn(dy) / sqrt(sum_pairs w [dx != 0] * sum_pairs w [dy != 0]),
                   averaged over the rankings by (x, y) and by (y, x)
"""
import json
import math
import os
import sys

import numpy as np


def kendall_tau_b(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    p = q = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx == dy:
                p += 1
            else:
                q += 1
    denominator = math.sqrt((p + q + tx) * (p + q + ty))
    return (p - q) / denominator if denominator > 0 else float("nan")


def _weighted_tau_ranked(x, y):
    n = len(x)
    order = np.lexsort((y, x))[::-1]  # decreasing by x, then by y: position 0 is the most important
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    weight = 1.0 / (rank + 1.0)
    num = den_x = den_y = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            w = weight[i] + weight[j]
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            num += w * dx * dy
            den_x += w * (dx != 0)
            den_y += w * (dy != 0)
    if den_x == 0 or den_y == 0:
        return float("nan")
    return min(1.0, max(-1.0, num / math.sqrt(den_x * den_y)))


def weighted_tau(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    return (_weighted_tau_ranked(x, y) + _weighted_tau_ranked(y, x)) / 2


def self_test():
    # The examples of scipy's documentation (scipy.stats.kendalltau and scipy.stats.weightedtau).
    x, y = [12, 2, 1, 12, 2], [1, 4, 7, 1, 0]
    assert abs(kendall_tau_b(x, y) - (-0.47140452079103173)) < 1e-12, kendall_tau_b(x, y)
    assert abs(weighted_tau(x, y) - (-0.56694968153682723)) < 1e-12, weighted_tau(x, y)
    assert kendall_tau_b([1, 2, 3], [3, 4, 9]) == 1.0 and kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    # Swapping the top pair costs more than swapping the bottom pair.
    top = weighted_tau([5, 4, 3, 2, 1], [4, 5, 3, 2, 1])
    bottom = weighted_tau([5, 4, 3, 2, 1], [5, 4, 3, 1, 2])
    assert kendall_tau_b([5, 4, 3, 2, 1], [4, 5, 3, 2, 1]) == kendall_tau_b([5, 4, 3, 2, 1], [5, 4, 3, 1, 2])
    assert top < bottom < 1, (top, bottom)
    print("rank_correlation: self-test passed")


def ground_truth(bench_dir):
    """{target: {init model: [test top-1 per seed]}}, {target: {init model: [train seconds]}}, {init: label}."""
    bench = json.load(open(os.path.join(bench_dir, "bench.json")))
    truth, seconds, labels = {}, {}, {}
    for run in bench["runs"]:
        if not run["ok"]:
            sys.exit(f"rank_correlation: run {run['method']} on {run['task']} seed {run['seed']} failed: {run['error']}")
        request = json.load(open(os.path.join(run["dir"], "request.json")))
        result = json.load(open(os.path.join(run["dir"], "result.json")))
        truth.setdefault(request["target"], {}).setdefault(request["init"], []).append(run["test_top1"])
        seconds.setdefault(request["target"], {}).setdefault(request["init"], []).append(result["train_seconds"])
        labels[request["init"]] = run["method"]
    return truth, seconds, labels


def main(bench_dir, rank_dirs):
    truth, finetune_seconds, labels = ground_truth(bench_dir)
    metrics_order = ["logme", "leep", "nce", "hscore"]
    label = {"logme": "LogME", "leep": "LEEP", "nce": "NCE", "hscore": "H-score"}
    rows = {m: [] for m in metrics_order}
    targets, details = [], []
    for rank_dir in rank_dirs:
        rank = json.load(open(os.path.join(rank_dir, "rank.json")))
        target = rank["target"]
        if target not in truth:
            sys.exit(f"rank_correlation: {rank_dir}/rank.json ranks for {target}, which no run of the suite fine-tuned")
        targets.append(target)
        names = [c["name"] for c in rank["candidates"]]
        missing = [n for n in names if n not in truth[target]]
        if missing:
            sys.exit(f"rank_correlation: no fine-tuning runs from {missing} on {target}")
        accuracy = [float(np.mean(truth[target][n])) for n in names]
        spread = [float(np.std(truth[target][n], ddof=1)) if len(truth[target][n]) > 1 else 0.0 for n in names]
        details.append((target, rank, names, accuracy, spread))
        for m in metrics_order:
            if m in rank["metrics"]:
                scores = [c["scores"][m] for c in rank["candidates"]]
                rows[m].append((kendall_tau_b(scores, accuracy), weighted_tau(scores, accuracy)))
            else:
                rows[m].append(None)

    print("Rank correlation between each metric's scores and the fine-tuned test top-1 (mean over seeds): "
          "Kendall's tau-b / weighted tau_w (the measure LogME's paper reports).\n")
    print("| metric | " + " | ".join(f"target {i + 1}: tau | tau_w" for i in range(len(targets))) + " |")
    print("|:--|" + "--:|--:|" * len(targets))
    for m in metrics_order:
        cells = []
        for r in rows[m]:
            cells += ["-", "-"] if r is None else [f"{r[0]:.3f}", f"{r[1]:.3f}"]
        print(f"| {label[m]} | " + " | ".join(cells) + " |")
    print()
    for i, (target, rank, names, accuracy, spread) in enumerate(details):
        print(f"Target {i + 1}: `{target}` ({rank['target_examples']} training images scored).\n")
        metrics = [m for m in metrics_order if m in rank["metrics"]]
        print("| model | top-1 % (mean ± std) | " + " | ".join(label[m] for m in metrics) + " |")
        print("|:--|--:|" + "--:|" * len(metrics))
        for k in sorted(range(len(names)), key=lambda k: -accuracy[k]):
            scores = rank["candidates"][k]["scores"]
            print(f"| {labels[names[k]]} | {100 * accuracy[k]:.1f} ± {100 * spread[k]:.1f} | "
                  + " | ".join(f"{scores[m]:.4f}" for m in metrics) + " |")
        forward = sum(c["forward_seconds"] for c in rank["candidates"])
        scoring = sum(c["metric_seconds"] for c in rank["candidates"])
        tuning = sum(float(np.mean(finetune_seconds[target][n])) for n in names)
        print(f"\nRanking the {len(names)} models: {rank['seconds']:.1f} s in all (forward passes {forward:.1f} s, "
              f"the {len(metrics)} metrics {scoring:.2f} s); fine-tuning each of them once: {tuning:.0f} s.\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    elif len(sys.argv) >= 3:
        main(sys.argv[1], sys.argv[2:])
    else:
        sys.exit(__doc__)
