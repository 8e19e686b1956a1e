#!/usr/bin/python3
"""Golden values for the foundation, from Debian's python3-torch (the same 1.13 build as libtorch-dev).

Writes foundation.json beside this script. Run: /usr/bin/python3 tests/golden/make_foundation_golden.py
The C++ test tests/train/golden_test.cpp compares xfer against these numbers.
"""
import json
import math
import os

import torch

torch.set_default_dtype(torch.float64)


def quadratic_params():
    """Two parameter tensors of a fixed quadratic problem: loss = sum(a * w^2) + sum(b * w) (+ ...)."""
    w1 = torch.tensor([[0.5, -1.0], [2.0, 0.25]], requires_grad=True)
    w2 = torch.tensor([1.5, -0.5, 0.75], requires_grad=True)
    return [w1, w2]


def loss_of(params):
    w1, w2 = params
    return (torch.tensor([[1.0, 2.0], [0.5, 3.0]]) * w1 ** 2).sum() + (w1 * 0.3).sum() + \
        (w2 ** 4).sum() * 0.1 - (w2 * torch.tensor([0.2, -0.4, 0.6])).sum()


def run_optimizer(make, groups_lr_mult=None, steps=3):
    params = quadratic_params()
    if groups_lr_mult is None:
        opt = make([{"params": params}])
    else:
        opt = make([{"params": [params[0]], "lr_mult": groups_lr_mult[0]},
                    {"params": [params[1]], "lr_mult": groups_lr_mult[1]}])
    for _ in range(steps):
        opt.zero_grad()
        loss_of(params).backward()
        opt.step()
    return [p.detach().flatten().tolist() for p in params]


def sgd(lr, momentum, nesterov, wd, mults=None):
    def make(groups):
        for g in groups:
            g["lr"] = lr * g.pop("lr_mult", 1.0)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    return run_optimizer(make, mults)


def adam(lr, b1, b2, eps, wd):
    def make(groups):
        return torch.optim.Adam(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    return run_optimizer(make)


def cosine(total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [0.0, 0.0, 0.0]])
labels = torch.tensor([0, 2, 1, 1])

golden = {
    "quadratic_init": [p.detach().flatten().tolist() for p in quadratic_params()],
    "sgd": sgd(0.1, 0.0, False, 0.0),
    "sgd_momentum_wd": sgd(0.05, 0.9, False, 1e-2),
    "sgd_nesterov": sgd(0.05, 0.9, True, 1e-4),
    "sgd_groups": sgd(0.05, 0.9, False, 1e-4, mults=(1.0, 10.0)),
    "adam": adam(0.01, 0.9, 0.999, 1e-8, 0.0),
    "adam_wd": adam(0.01, 0.8, 0.99, 1e-6, 1e-2),
    "cosine_10": cosine(10),
    "cross_entropy": {
        "logits": logits.tolist(),
        "labels": labels.tolist(),
        "value": torch.nn.functional.cross_entropy(logits, labels).item(),
    },
    "torch_version": torch.__version__,
}

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "foundation.json")
with open(path, "w") as f:
    json.dump(golden, f, indent=1)
print("wrote", path)
