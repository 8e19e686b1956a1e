#!/usr/bin/python3
"""Golden values of Optuna's univariate Parzen estimators, from Debian's python3-optuna (3.1).

For fixed observations of one parameter of each kind xfer's search spaces have (lin, log, int, logint, cat),
this builds Optuna's _ParzenEstimator with TPESampler's default parameters (prior weight 1, magic clip, no
endpoints, default_weights, univariate) for the "below" and the "above" observations, and records each
estimator's weights, mus and sigmas (categorical: its per-kernel choice probabilities) and the log densities
of fixed candidates, with the TPE score log l(x) - log g(x) that TPESampler maximises. One case has more than
25 observations, so the weights ramp by age.

Writes tpe.json beside this script. Run: /usr/bin/python3 tests/golden/make_tpe_golden.py
The C++ test tests/search/tpe_test.cpp compares xfer's ParzenEstimator against these numbers (rtol 1e-6).
"""
import json
import os

import numpy as np
from optuna import distributions
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator, _ParzenEstimatorParameters
from optuna.samplers._tpe.sampler import default_weights

PARAMS = _ParzenEstimatorParameters(
    consider_prior=True,
    prior_weight=1.0,
    consider_magic_clip=True,
    consider_endpoints=False,
    weights=default_weights,
    multivariate=False,
)

rng = np.random.RandomState(7)


def dist_of(spec):
    kind, rest = spec.split(":", 1)
    if kind == "cat":
        return distributions.CategoricalDistribution(rest.split(","))
    lo, hi = rest.split(":")
    if kind == "lin":
        return distributions.FloatDistribution(float(lo), float(hi))
    if kind == "log":
        return distributions.FloatDistribution(float(lo), float(hi), log=True)
    if kind == "int":
        return distributions.IntDistribution(int(lo), int(hi))
    return distributions.IntDistribution(int(lo), int(hi), log=True)


def estimator(dist, values):
    obs = {"x": np.asarray(values, dtype=float)}
    pe = _ParzenEstimator(obs, {"x": dist}, PARAMS)
    out = {"weights": pe._weights.tolist()}
    if isinstance(dist, distributions.CategoricalDistribution):
        out["choice_probs"] = pe._categorical_weights["x"].tolist()
    else:
        out["mus"] = pe._mus["x"].tolist()
        out["sigmas"] = pe._sigmas["x"].tolist()
    return pe, out


def case(name, spec, below, above, candidates):
    dist = dist_of(spec)
    pe_l, l = estimator(dist, below)
    pe_g, g = estimator(dist, above)
    if isinstance(dist, distributions.CategoricalDistribution):
        cand = np.asarray(candidates, dtype=int)
    else:
        cand = np.asarray(candidates, dtype=float)
    log_l = pe_l.log_pdf({"x": cand})
    log_g = pe_g.log_pdf({"x": cand})
    return {
        "name": name,
        "param": "x=" + spec,
        "below": [float(v) for v in below],
        "above": [float(v) for v in above],
        "l": l,
        "g": g,
        "candidates": [float(v) for v in candidates],
        "log_l": log_l.tolist(),
        "log_g": log_g.tolist(),
        "score": (log_l - log_g).tolist(),
    }


cases = []
# A linear float: observations spread over the range, one at a bound.
cases.append(case("lin", "lin:-5:10", [1.2, 2.5], [-5.0, -3.1, 0.4, 4.4, 7.7, 9.9, 6.0, -1.0],
                  [-4.9, -2.0, 0.0, 1.3, 2.4, 5.0, 9.99]))
# Log floats: mus and sigmas in log space; one without "below" neighbours to clip.
cases.append(case("log", "log:1e-4:1", [3e-3, 4e-3], [1e-4, 2e-3, 0.05, 0.3, 0.9, 1e-2, 6e-4],
                  [1.1e-4, 1e-3, 3.5e-3, 0.02, 0.5, 0.99]))
cases.append(case("log_wide", "log:1:10000", [12.0], [2.0, 500.0, 9000.0, 40.0],
                  [1.0, 3.0, 11.0, 100.0, 7000.0]))
# Integers: a step of 1, densities as masses over [v - 1/2, v + 1/2]; repeated values.
cases.append(case("int", "int:1:40", [12, 12, 14], [1, 40, 22, 7, 7, 30, 18, 3, 35],
                  [1, 2, 11, 12, 13, 20, 40]))
# Log integers: Optuna scores them with the continuous density of log(v) on [log(lo - 1/2), log(hi + 1/2)].
cases.append(case("logint", "logint:1:1000", [30, 45], [1, 2, 900, 120, 7, 500, 3],
                  [1, 5, 30, 44, 300, 1000]))
# Categorical.
cases.append(case("cat", "cat:a,b,c", [1, 1], [0, 2, 2, 0, 1, 2], [0, 1, 2]))
# 40 observations above (ramped weights by age) and 4 below, drawn at random.
above = rng.uniform(-2.0, 3.0, size=36).round(6).tolist()
below = rng.uniform(0.0, 1.0, size=4).round(6).tolist()
cases.append(case("ramp", "lin:-2:3", below, above, [-1.9, -0.5, 0.2, 0.5, 0.8, 2.0, 2.9]))
# No observations: the prior alone.
cases.append(case("empty_above", "lin:0:1", [0.3], [], [0.05, 0.3, 0.95]))

out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpe.json")
with open(out_path, "w") as f:
    json.dump({"optuna": __import__("optuna").__version__, "cases": cases}, f, indent=1)
print("wrote", out_path)
