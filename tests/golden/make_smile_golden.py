#!/usr/bin/python3
"""Golden values for SMILE's three losses, from Debian's python3-torch (the same 1.13 build as libtorch-dev).

The losses are written as in the authors' code (github.com/lixingjian/SMILE, finetune.py: mixup_criterion_hard,
FinetuneSMILE.feature_mixup, mixup_criterion_soft), plus Eq. 5 of the paper for --fe-form paper.
Writes smile.json beside this script. Run: /usr/bin/python3 tests/golden/make_smile_golden.py
The C++ test tests/methods/smile_test.cpp compares xfer against these numbers.
"""
import json
import os

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)

N, C, H, W = 4, 3, 5, 5  # batch, channels and size of the last stage's map
K, S = 3, 6              # target and source classes

inputs = {
    "student_map": torch.randn(N, C, H, W),
    "teacher_map": torch.relu(torch.randn(N, C, H, W)),
    "logits": torch.randn(N, K),
    "labels": torch.tensor([0, 2, 1, 1]),
    "aux_logits": torch.randn(N, S),
    "teacher_logits": 2 * torch.randn(N, S),
    "perm": torch.tensor([2, 0, 3, 1]),
}


def mixup_criterion_hard(pred, y_a, y_b, lam):
    return lam * F.cross_entropy(pred, y_a) + (1 - lam) * F.cross_entropy(pred, y_b)


def feature_mixup(fm_src, fm_tgt, lam, index):
    b, c, h, w = fm_src.shape
    fm_src = lam * fm_src + (1 - lam) * fm_src[index, :, :, :]
    return torch.norm(fm_src.detach() - fm_tgt) / (h * w)


def feature_mixup_paper(fm_src, fm_tgt, lam, index):
    g_s = fm_src.mean((2, 3))
    g_t = fm_tgt.mean((2, 3))
    target = lam * g_s + (1 - lam) * g_s[index]
    return ((g_t - target) ** 2).sum(1).mean()


def mixup_criterion_soft(pred, y_a, y_b, lam):
    log_probs = F.log_softmax(pred, dim=1)
    loss_a = (-y_a * log_probs).mean(0).sum()
    loss_b = (-y_b * log_probs).mean(0).sum()
    return lam * loss_a + (1 - lam) * loss_b


def losses(lam):
    x = inputs
    p = x["perm"]
    probs = F.softmax(x["teacher_logits"], dim=1)
    mxp = mixup_criterion_hard(x["logits"], x["labels"], x["labels"][p], lam)
    fe = feature_mixup(x["teacher_map"], x["student_map"], lam, p)
    fe_paper = feature_mixup_paper(x["teacher_map"], x["student_map"], lam, p)
    fc = mixup_criterion_soft(x["aux_logits"], probs, probs[p], lam)
    return {"lambda": lam, "mxp": mxp.item(), "fe": fe.item(), "fe_paper": fe_paper.item(), "fc": fc.item(),
            "total": (mxp + 0.01 * fe + 0.1 * fc).item()}


golden = {
    "shapes": {k: list(v.shape) for k, v in inputs.items()},
    "inputs": {k: v.flatten().tolist() for k, v in inputs.items()},
    "cases": [losses(0.73), losses(0.5), losses(1.0)],
}

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "smile.json"), "w") as f:
    json.dump(golden, f, indent=1)
    f.write("\n")
