#!/usr/bin/python3
"""Golden values for MixMatch's two terms and for the interpolation loss, from Debian's python3-torch (the same
1.13 build as libtorch-dev, so a torch.Generator seeded alike draws the same numbers as xfer's).

Written from the papers, not from xfer's C++:
  - MixMatch (Berthelot et al., NeurIPS 2019, Algorithm 1 and Eq. 2-5): label guessing by the mean softmax
    over K augmentations, sharpened with temperature T; W = shuffle([X; U_1..U_K]); per-example
    lambda ~ Beta(alpha, alpha) and lambda' = max(lambda, 1 - lambda) (as the authors' TF code draws it);
    X' = MixUp(X, W[:|X|]), U' = MixUp(U, W[|X|:]); L_x = soft cross-entropy on X', L_u = mean squared error
    of softmax(f(U')) against the mixed guesses (over examples and classes).
  - Interpolation loss (SMILE, Eq. 7): for a pair (x, x'), delta1, delta2 ~ U(0, 1), lambda ~ Beta(a, a),
    || f(Mix_{lambda d1 + (1 - lambda) d2}) - (lambda f(Mix_d1) + (1 - lambda) f(Mix_d2)) ||_2 with
    Mix_d = (1 - d) x + d x', mean and unbiased std over pairs.
The random draws are replayed in xfer's order (the permutation, then Beta as two standard gammas and an
always-drawn uniform fallback; the pairs as randint, the deltas as rand), from explicit seeds.
Writes semi_interpolation.json beside this script. Run: /usr/bin/python3 tests/golden/make_semi_interpolation_golden.py
The C++ tests Semi.MixMatchMatchesTheGoldenValuesOfItsPaper and
Analysis.InterpolationLossMatchesTheGoldenValuesOfSmilesEq7 compare xfer against these numbers.
"""
import json
import math
import os

import torch

torch.set_default_dtype(torch.float64)
MASK = (1 << 64) - 1


def mix64(x):
    """SplitMix64's finaliser (the seed derivation every xfer generator uses)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def derive_seed(seed, name):
    h = 0xCBF29CE484222325  # FNV-1a of the name
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) & MASK
    return mix64(mix64(seed) ^ h)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def beta(g, a, n):
    x = torch._standard_gamma(torch.full((n,), a), generator=g)
    y = torch._standard_gamma(torch.full((n,), a), generator=g)
    fallback = (torch.rand(n, generator=g) < 0.5).double()
    s = x + y
    return torch.where(s > 0, x / s.clamp_min(1e-300), fallback)


def grid(*shape, scale=1.0, phase=0.0):
    """Deterministic values the C++ test can rebuild: sin(0.7 i + phase) * scale over the flat index."""
    n = math.prod(shape)
    return (torch.sin(0.7 * torch.arange(n, dtype=torch.float64) + phase) * scale).reshape(shape)


def tolist(t):
    return t.tolist()


# ---- MixMatch on a linear model of 2x2 one-channel images into 3 classes.
classes, temperature, alpha, seed = 3, 0.5, 0.75, 11
weight = grid(4, classes, scale=1.5, phase=0.3)
x = grid(4, 1, 2, 2, phase=1.0)
y = torch.tensor([0, 2, 1, 2])
u = [grid(3, 1, 2, 2, phase=2.0), grid(3, 1, 2, 2, phase=2.5)]


def f(images):
    return images.flatten(1) @ weight


p = sum(torch.softmax(f(ui), 1) for ui in u) / len(u)
p = p ** (1 / temperature)
q = p / p.sum(1, keepdim=True)
all_x = torch.cat([x] + u)
all_p = torch.cat([torch.nn.functional.one_hot(y, classes).double()] + [q] * len(u))
g = generator(seed)
perm = torch.randperm(all_x.shape[0], generator=g)
lam = beta(g, alpha, all_x.shape[0])
lam = torch.maximum(lam, 1 - lam)
mixed_x = lam.view(-1, 1, 1, 1) * all_x + (1 - lam.view(-1, 1, 1, 1)) * all_x[perm]
mixed_p = lam.view(-1, 1) * all_p + (1 - lam.view(-1, 1)) * all_p[perm]
logits = f(mixed_x)
nx = x.shape[0]
l_x = -(mixed_p[:nx] * torch.log_softmax(logits[:nx], 1)).sum(1).mean()
l_u = ((torch.softmax(logits[nx:], 1) - mixed_p[nx:]) ** 2).mean()
mixmatch = {
    "classes": classes, "temperature": temperature, "alpha": alpha, "seed": seed,
    "weight": tolist(weight), "x": tolist(x), "y": tolist(y), "u": [tolist(t) for t in u],
    "guess": tolist(q), "labelled": l_x.item(), "unlabelled": l_u.item(),
}

# ---- Interpolation loss of a two-output function of 5-dimensional inputs: a smooth nonlinearity and an
# affine map (whose loss is 0 up to rounding).
pairs, ia, iseed = 40, 0.2, 5
w1 = grid(5, 4, scale=0.8, phase=0.1)
w2 = grid(5, 2, scale=1.2, phase=0.9)
b2 = grid(2, phase=1.7)
inputs = grid(7, 5, scale=2.0, phase=0.4)


def outputs(z):
    return [torch.tanh(z @ w1) ** 2, z @ w2 + b2]


g = generator(derive_seed(iseed, "interpolation"))
n = inputs.shape[0]
first = torch.randint(n, (pairs,), generator=g)
second = (first + 1 + torch.randint(n - 1, (pairs,), generator=g)) % n
d1 = torch.rand(pairs, generator=g)
d2 = torch.rand(pairs, generator=g)
lam = beta(g, ia, pairs)
xa, xb = inputs[first], inputs[second]


def mix(d):
    return (1 - d.view(-1, 1)) * xa + d.view(-1, 1) * xb


mid, o1, o2 = outputs(mix(lam * d1 + (1 - lam) * d2)), outputs(mix(d1)), outputs(mix(d2))
losses = []
for k in range(2):
    dist = (mid[k] - (lam.view(-1, 1) * o1[k] + (1 - lam.view(-1, 1)) * o2[k])).norm(dim=1)
    losses.append({"mean": dist.mean().item(), "std": dist.std(unbiased=True).item()})
interpolation = {
    "pairs": pairs, "alpha": ia, "seed": iseed, "w1": tolist(w1), "w2": tolist(w2), "b2": tolist(b2),
    "inputs": tolist(inputs), "losses": losses,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "semi_interpolation.json")
with open(out, "w") as fh:
    json.dump({"mixmatch": mixmatch, "interpolation": interpolation}, fh, indent=1)
    fh.write("\n")
