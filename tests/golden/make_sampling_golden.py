#!/usr/bin/python3
"""Golden values for random sampling and image crops, from Debian's python3-torch and python3-torchvision.

Writes sampling.json beside this script. Run: /usr/bin/python3 tests/golden/make_sampling_golden.py
The C++ tests tests/core/rng_test.cpp and tests/data/crop_golden_test.cpp compare xfer against it.

  beta   the CDF of Beta(a, b) on a grid (the regularised incomplete beta function, by Lentz's continued
         fraction), for a Kolmogorov-Smirnov test of xfer's Beta sampler.
  rrc    torchvision's RandomResizedCrop.get_params, its random numbers replaced by those xfer draws from
         std::mt19937_64(seed): uniform_real_distribution<double>(0, 1) (the engine's 64 bits / 2^64) and
         xfer's uniform_index (Lemire's multiply-shift with rejection). The same numbers must give the same
         box; "next" is the engine's next output, so both drew as many numbers.
  crop   torchvision's resized_crop (tensor path, bilinear, no antialiasing) of a fixed uint8 image, given
         the box: the pixels xfer's resample_crop must give, and the values before rounding (torch rounds
         half to even, xfer half up: they may differ by 1 at exact halves).
"""
import json
import math
import os

import torch
import torchvision.transforms.functional as TF
import torchvision.transforms.transforms as TT

MASK64 = (1 << 64) - 1


class MT19937_64:
    """std::mt19937_64 (C++11 26.5.5), default word size 64."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & MASK64
        for i in range(1, 312):
            prev = self.mt[i - 1]
            self.mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & MASK64
        self.index = 312

    def __call__(self):
        if self.index >= 312:
            for i in range(312):
                x = (self.mt[i] & 0xFFFFFFFF80000000) | (self.mt[(i + 1) % 312] & 0x7FFFFFFF)
                xa = x >> 1
                if x & 1:
                    xa ^= 0xB5026F5AA96619E9
                self.mt[i] = self.mt[(i + 156) % 312] ^ xa
            self.index = 0
        x = self.mt[self.index]
        self.index += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & MASK64

    def unit(self):
        """libstdc++'s generate_canonical<double, 53> from one 64-bit output."""
        u = float(self()) / 2.0 ** 64
        return u if u < 1.0 else math.nextafter(1.0, 0.0)

    def index_below(self, n):
        """xfer's uniform_index(engine, n)."""
        if n <= 1:
            return 0
        m = self() * n
        low = m & MASK64
        if low < n:
            threshold = ((1 << 64) - n) % n
            while low < threshold:
                m = self() * n
                low = m & MASK64
        return m >> 64


# The standard's check value: the 10000th output of a default-seeded std::mt19937_64.
_check = MT19937_64(5489)
for _ in range(9999):
    _check()
assert _check() == 9981545732273789042


class FakeTorch:
    """Stands in for the `torch` module inside torchvision's transforms: uniform_ and randint draw from
    an MT19937_64, everything else is torch's."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *size):
        engine = self.engine

        class Draw:
            def uniform_(self, lo, hi):
                lo, hi = float(lo), float(hi)
                return torch.tensor([lo + (hi - lo) * engine.unit()], dtype=torch.float64)
        return Draw()

    def randint(self, low, high, size):
        assert low == 0 and tuple(size) == (1,)
        return torch.tensor([self.engine.index_below(high)])


def rrc_box(seed, height, width, scale, ratio):
    engine = MT19937_64(seed)
    real = TT.torch
    TT.torch = FakeTorch(engine)
    try:
        box = TT.RandomResizedCrop.get_params(torch.zeros(3, height, width), list(scale), list(ratio))
    finally:
        TT.torch = real
    return [int(v) for v in box], engine()


def beta_cf(a, b, x):
    """Lentz's continued fraction for the incomplete beta function (Numerical Recipes, betacf)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise RuntimeError("betacf did not converge")


def beta_cdf(a, b, x):
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * beta_cf(a, b, x) / a
    return 1.0 - front * beta_cf(b, a, 1.0 - x) / b


golden = {}

grid = [i / 200.0 for i in range(1, 200)]
golden["beta"] = [{"a": a, "b": b, "x": grid, "cdf": [beta_cdf(a, b, x) for x in grid],
                   "mean": a / (a + b), "variance": a * b / ((a + b) ** 2 * (a + b + 1))}
                  for a, b in [(0.2, 0.2), (4.0, 1.0), (2.0, 5.0)]]

cases = []
for seed, height, width, scale, ratio in [
        (1, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3)),
        (2, 375, 500, (0.08, 1.0), (3 / 4, 4 / 3)),
        (3, 31, 17, (0.08, 1.0), (3 / 4, 4 / 3)),
        (4, 64, 48, (0.5, 0.9), (0.5, 2.0)),
        (5, 12, 12, (0.2, 0.3), (1.0, 1.0)),
        (6, 10, 100, (0.5, 1.0), (3 / 4, 4 / 3)),     # no try fits: the fallback, too wide
        (7, 100, 10, (0.5, 1.0), (3 / 4, 4 / 3)),     # the fallback, too tall
        (8, 30, 30, (0.95, 1.0), (2.5, 3.0)),         # the fallback, a square within no ratio
        (9, 1000, 700, (0.08, 1.0), (3 / 4, 4 / 3))]:
    box, following = rrc_box(seed, height, width, scale, ratio)
    cases.append({"seed": seed, "height": height, "width": width, "scale": list(scale), "ratio": list(ratio),
                  "box": box, "next": str(following)})
golden["rrc"] = cases

# A uint8 RGB image with distinct, smoothly varying channels, (H, W) = (23, 29).
h, w = 23, 29
ys = torch.arange(h).view(h, 1).expand(h, w)
xs = torch.arange(w).view(1, w).expand(h, w)
image = torch.stack([(xs * 7 + ys * 3) % 256, (ys * 11 + xs) % 256, (xs * ys) % 256]).to(torch.uint8)
crops = []
for top, left, ch, cw, size in [(2, 3, 18, 20, 9), (0, 0, 23, 29, 12), (5, 7, 12, 12, 6), (4, 6, 8, 10, 16),
                                (0, 0, 23, 29, 20)]:
    out = TF.resized_crop(image, top, left, ch, cw, [size, size], antialias=False)
    # The same before rounding to uint8 (torchvision interpolates in float32, then rounds half to even).
    exact = torch.nn.functional.interpolate(image[None, :, top:top + ch, left:left + cw].float(), size=[size, size],
                                            mode="bilinear", align_corners=False)[0]
    assert torch.equal(exact.round().clamp(0, 255).to(torch.uint8), out)
    crops.append({"box": [top, left, ch, cw], "size": size, "pixels": out.flatten().tolist(),
                  "unrounded": exact.flatten().tolist()})
golden["crop"] = {"height": h, "width": w, "image": image.permute(1, 2, 0).flatten().tolist(), "crops": crops}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sampling.json")
with open(out, "w") as f:
    json.dump(golden, f, indent=1)
print("wrote", out)
