#!/usr/bin/python3
"""Golden values for the transferability estimators, from Debian's python3-numpy.

Writes transferability.json beside this script. Run: /usr/bin/python3 tests/golden/make_transferability_golden.py
The C++ test tests/source/transferability_test.cpp compares xfer against these numbers (rtol 1e-6).

Each score is written from its paper's definition with explicit matrices, not from xfer's code (which works
from one SVD):
  LogME    You et al., ICML 2021, Algorithm 1: A = alpha I + beta F^T F, m = beta A^-1 F^T y,
           gamma = sum beta sigma / (alpha + beta sigma), alpha = gamma / m^T m, beta = (N - gamma) / |Fm - y|^2,
           from alpha = beta = 1 to convergence; the evidence with log|A| from slogdet; the mean over classes
           of evidence / N
  LEEP     Nguyen et al., ICML 2020, Eq. 1-2: the empirical joint of (y, z) from the source softmax,
           P(y | z), and the mean log of the expected empirical prediction
  NCE      Tran et al., ICCV 2019, Def. 2: -H(Y | Z) of the empirical joint of (y, argmax source output)
  H-score  Bao et al., ICIP 2019, Def. 2: tr(cov(f)^+ cov(E[f | y])) with np.cov and np.linalg.pinv
  source classes  xfer's Gaussian classes of a source (transferability.h): class means, priors n_z/n, the
           pooled isotropic variance, posteriors by Bayes' rule from the Gaussian densities
"""
import json
import math
import os

import numpy as np

rng = np.random.default_rng(20240612)


def logme_paper(f, labels, k, tol=1e-13, max_iterations=100000):
    n, d = f.shape
    ftf = f.T @ f
    sigma = np.linalg.eigvalsh(ftf)
    evidences = []
    for c in range(k):
        y = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iterations):
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(a, f.T @ y)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((f @ m - y) ** 2)
            t, new_t = alpha / beta, new_alpha / new_beta
            alpha, beta = new_alpha, new_beta
            if abs(new_t - t) <= tol * t:
                break
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.solve(a, f.T @ y)
        sign, logdet = np.linalg.slogdet(a)
        assert sign > 0
        evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * (m @ m) - logdet / 2)
        evidences.append(evidence / n)
    return float(np.mean(evidences)), [float(e) for e in evidences]


def leep_paper(theta, labels, k):
    n, z = theta.shape
    joint = np.zeros((k, z))
    for i in range(n):
        joint[labels[i]] += theta[i] / n
    conditional = joint / joint.sum(axis=0, keepdims=True)  # P(y | z)
    eep = np.array([np.sum(conditional[labels[i]] * theta[i]) for i in range(n)])
    return float(np.mean(np.log(eep)))


def nce_paper(source, labels, k, zs):
    n = len(labels)
    joint = np.zeros((k, zs))
    for s, t in zip(source, labels):
        joint[t, s] += 1.0 / n
    p_z = joint.sum(axis=0)
    total = 0.0
    for y in range(k):
        for z in range(zs):
            if joint[y, z] > 0:
                total += joint[y, z] * math.log(joint[y, z] / p_z[z])
    return total


def hscore_paper(f, labels, k):
    cov_f = np.cov(f, rowvar=False)
    g = np.zeros_like(f)
    for c in range(k):
        g[labels == c] = f[labels == c].mean(axis=0)
    cov_g = np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(cov_f) @ cov_g))


def source_classes(f, labels, zs, x):
    n, d = f.shape
    means = np.stack([f[labels == z].mean(axis=0) for z in range(zs)])
    priors = np.array([(labels == z).sum() / n for z in range(zs)])
    var = sum(np.sum((f[i] - means[labels[i]]) ** 2) for i in range(n)) / (n * d)
    # Bayes' rule with the Gaussian densities N(x; mu_z, var I), in log space for the normaliser.
    log_joint = np.array([[math.log(priors[z]) - d / 2 * math.log(2 * math.pi * var)
                           - np.sum((row - means[z]) ** 2) / (2 * var) for z in range(zs)] for row in x])
    log_joint -= log_joint.max(axis=1, keepdims=True)
    post = np.exp(log_joint)
    return var, post / post.sum(axis=1, keepdims=True)


def digits(x):
    """12 significant digits: the tests compare at rtol 1e-6, and BLAS builds differ in the last bits."""
    if isinstance(x, (list, tuple)):
        return [digits(v) for v in x]
    return float(f"{float(x):.12g}")


def case(n, d, k, zs, informative):
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class present
    centres = rng.normal(size=(k, d)) * informative
    f = np.maximum(centres[labels] + rng.normal(size=(n, d)), 0) + 0.1 * rng.random((n, d))
    logits = rng.normal(size=(n, zs)) * 2 + np.eye(zs)[labels % zs] * 1.5
    theta = np.exp(logits - logits.max(axis=1, keepdims=True))
    theta /= theta.sum(axis=1, keepdims=True)
    source = theta.argmax(axis=1)
    out = {"n": n, "d": d, "k": k, "z": zs, "features": f.flatten().tolist(), "labels": labels.tolist(),
           "source_probs": theta.flatten().tolist(), "source_labels": source.tolist()}
    logme, per_class = logme_paper(f, labels, k)
    out["logme"], out["logme_per_class"] = digits(logme), digits(list(per_class))
    out["leep"] = digits(leep_paper(theta, labels, k))
    out["nce"] = digits(nce_paper(source, labels, k, zs))
    out["hscore"] = digits(hscore_paper(f, labels, k))
    return out


golden = {
    # More examples than feature dimensions, as with a full target training set.
    "tall": case(n=60, d=7, k=3, zs=4, informative=1.5),
    # Fewer examples than dimensions (few-shot): LogME's log|A| counts the D - N zero eigenvalues of F^T F.
    "wide": case(n=14, d=20, k=3, zs=5, informative=0.5),
}


def noise_free_case(n, d, k):
    """Few examples, many informative dimensions: the evidence is maximal as beta -> infinity (no noise).

    F F^T is then invertible and the evidence tends to log N(y; 0, F F^T / alpha), maximised over alpha in
    closed form: alpha = N / y^T (F F^T)^-1 y. The explicit iteration is run first to show it heads there.
    """
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    centres = rng.normal(size=(k, d)) * 3
    f = np.maximum(centres[labels] + rng.normal(size=(n, d)), 0)
    gram = f @ f.T
    sign, logdet = np.linalg.slogdet(gram)
    assert sign > 0
    evidences = []
    for c in range(k):
        y = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        ftf = f.T @ f
        sigma = np.linalg.eigvalsh(ftf)
        for _ in range(1000):  # until the noise precision has run away (the maximum is at beta = infinity)
            m = beta * np.linalg.solve(alpha * np.eye(d) + beta * ftf, f.T @ y)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((f @ m - y) ** 2)
            if beta > 1e6:
                break
        assert beta > 1e6, beta
        a = n / (y @ np.linalg.solve(gram, y))
        evidences.append((-n / 2 * math.log(2 * math.pi) + n / 2 * math.log(a) - logdet / 2 - n / 2) / n)
    return {"n": n, "d": d, "k": k, "features": f.flatten().tolist(), "labels": labels.tolist(),
            "logme": digits(np.mean(evidences)), "logme_per_class": digits(evidences)}


golden["noise_free"] = noise_free_case(n=12, d=40, k=3)

# A source's classes as Gaussians, and their posteriors on the tall case's features.
src_n, src_z = 30, 3
src_labels = np.concatenate([np.arange(src_z), rng.integers(0, src_z, src_n - src_z)])
src_features = rng.normal(size=(src_z, 7))[src_labels] * 2 + rng.normal(size=(src_n, 7))
tall_features = np.array(golden["tall"]["features"]).reshape(60, 7)
var, post = source_classes(src_features, src_labels, src_z, tall_features[:10])
golden["source_classes"] = {"n": src_n, "z": src_z, "d": 7, "features": src_features.flatten().tolist(),
                            "labels": src_labels.tolist(), "variance": digits(var),
                            "posteriors": digits(post.flatten().tolist())}

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transferability.json")
with open(path, "w") as out:
    json.dump(golden, out, indent=1)
    out.write("\n")
print("wrote", path)
