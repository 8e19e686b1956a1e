#!/usr/bin/python3
"""Optuna's TPESampler (Debian's python3-optuna 3.1, default settings) on the objectives of bench/tpe_bench.cpp.

Prints one JSON line per objective: {"objective", "sampler": "optuna", "regrets": [one per seed]}, a regret being
the best value found minus the objective's known minimum. The objectives must stay identical to the C++ ones.

    /usr/bin/python3 bench/python/tpe_optuna.py [--trials 40] [--seeds 100] [--objectives branin,...]
"""
import argparse
import json
import math

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)


def branin(t):
    x1 = t.suggest_float("x1", -5, 10)
    x2 = t.suggest_float("x2", 0, 15)
    b, c, s = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 * x1 + c * x1 - 6) ** 2 + 10 * (1 - s) * math.cos(x1) + 10


ALPHA = [1.0, 1.2, 3.0, 3.2]
A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
P = [[0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886], [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
     [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650], [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381]]


def hartmann6(t):
    x = [t.suggest_float(f"x{j + 1}", 0, 1) for j in range(6)]
    total = 0.0
    for i in range(4):
        inner = sum(A[i][j] * (x[j] - P[i][j]) ** 2 for j in range(6))
        total += ALPHA[i] * math.exp(-inner)
    return -total


def log3(t):
    la = math.log10(t.suggest_float("a", 1e-5, 1, log=True)) + 3
    lb = math.log10(t.suggest_float("b", 1e-3, 1e3, log=True)) - 1
    c = t.suggest_float("c", 0, 1) - 0.3
    return la * la + lb * lb + 4 * c * c + la * c


def mixed(t):
    n = (t.suggest_int("n", 1, 40) - 12) / 10
    k = "abc".index(t.suggest_categorical("k", ["a", "b", "c"]))
    x = t.suggest_float("x", -1, 1)
    offset, best_x = [0.3, 0.0, 0.6], [0.4, -0.5, 0.0]
    return n * n + offset[k] + (x - best_x[k]) ** 2


def logint(t):
    ln = math.log2(t.suggest_int("n", 1, 1024, log=True)) - 6
    llr = math.log10(t.suggest_float("lr", 1e-4, 1, log=True)) + 2
    return ln * ln / 10 + llr * llr


OBJECTIVES = {
    "branin": (branin, 0.397887357729739),
    "hartmann6": (hartmann6, -3.32236801141551),
    "log3": (log3, 0.0),
    "mixed": (mixed, 0.0),
    "logint": (logint, 0.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--objectives", default="branin,hartmann6,log3,mixed,logint")
    a = ap.parse_args()
    for name in a.objectives.split(","):
        f, minimum = OBJECTIVES[name]
        regrets = []
        for seed in range(a.seeds):
            # Maximising -f, as xfer's sampler maximises its value.
            study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
            study.optimize(lambda t: -f(t), n_trials=a.trials)
            regrets.append(-study.best_value - minimum)
        print(json.dumps({"objective": name, "sampler": "optuna", "regrets": regrets}), flush=True)


if __name__ == "__main__":
    main()
