#!/usr/bin/python3
"""Golden values for the regularization and mixup baselines, from Debian's python3-torch (1.13).

Writes baselines.json beside this script. Run: /usr/bin/python3 tests/golden/make_baselines_golden.py
The C++ test tests/methods/baselines_golden_test.cpp compares xfer against these numbers.

Each formula is written in plain torch the way the authors' public code computes it:
  L2-SP, DELTA   github.com/lixingjian/DELTA train.py (reg_l2sp, reg_att_fea_map, channel weights)
  BSS            tllib/regularization/bss.py (BatchSpectralShrinkage, on feature.t())
  Co-Tuning      tllib/regularization/co_tuning.py (direct relationship, CoTuningLoss)
  mixup, CutMix  github.com/lixingjian/SMILE finetune.py (mixup_data, mixup_criterion_hard, rand_bbox)
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
gen = torch.Generator().manual_seed(20240611)


def randn(*shape):
    return torch.randn(*shape, generator=gen)


def flat(t):
    return t.detach().flatten().tolist()


golden = {}

# ---- L2-SP: alpha * 0.5 * sum ||w - w0||^2 over the backbone's parameters.
params = [randn(3, 2), randn(4)]
params0 = [randn(3, 2), randn(4)]
alpha = 0.01
l2sp = sum(0.5 * torch.norm(p - p0) ** 2 for p, p0 in zip(params, params0)) * alpha
golden["l2sp"] = {"params": [flat(p) for p in params], "shapes": [list(p.shape) for p in params],
                  "params0": [flat(p) for p in params0], "alpha": alpha, "penalty": l2sp.item()}

# ---- BSS: sum of the squares of the k smallest singular values of the (N, D) feature matrix.
features = randn(6, 4)
bss = {"features": flat(features), "shape": list(features.shape), "k": [], "penalty": [], "grad": []}
for k in (1, 2, 3):
    f = features.clone().requires_grad_()
    u, s, v = torch.svd(f.t())
    num = s.size(0)
    result = 0
    for i in range(k):
        result += torch.pow(s[num - 1 - i], 2)
    result.backward()
    bss["k"].append(k)
    bss["penalty"].append(result.item())
    bss["grad"].append(flat(f.grad))
golden["bss"] = bss

# ---- DELTA: channel attention from CE rises, then the attention-weighted feature-map distance.
shapes = [(3, 4, 5, 5), (3, 2, 3, 3)]
maps = [randn(*s) for s in shapes]
maps0 = [randn(*s) for s in shapes]
rises = [randn(s[1]).abs() * 0.1 for s in shapes]
attention = []
for js in rises:
    js = js.numpy()
    js = (js - np.mean(js)) / np.std(js)
    attention.append(F.softmax(torch.from_numpy(js) / 5, dim=0))


def att_fea_map(maps, maps0, weights):
    fea_loss = torch.tensor(0.)
    for i, (fm_src, fm_tgt) in enumerate(zip(maps0, maps)):
        b, c, h, w = fm_src.shape
        fm_src = torch.reshape(fm_src, (b, c, h * w))
        fm_tgt = torch.reshape(fm_tgt, (b, c, h * w))
        distance = torch.norm(fm_tgt - fm_src.detach(), 2, 2)
        distance = c * torch.mul(weights[i], distance ** 2) / (h * w)
        fea_loss += 0.5 * torch.sum(distance)
    return fea_loss


uniform = [torch.full((s[1],), 1.0 / s[1]) for s in shapes]
golden["delta"] = {"shapes": [list(s) for s in shapes], "maps": [flat(m) for m in maps],
                   "maps0": [flat(m) for m in maps0], "rises": [flat(r) for r in rises],
                   "temperature": 5.0, "attention": [flat(a) for a in attention],
                   "penalty": att_fea_map(maps, maps0, attention).item(),
                   "penalty_uniform": att_fea_map(maps, maps0, uniform).item()}

# ---- Co-Tuning: p(y_s | y_t) = mean of softmax(source logits) per target class; soft CE of the source head.
n, ks, kt = 8, 6, 3
source_logits = randn(n, ks) * 2
labels = torch.tensor([0, 2, 1, 1, 0, 2, 2, 1])
probs = F.softmax(source_logits, dim=1)
relationship = torch.stack([probs[labels == c].mean(0) for c in range(kt)])
head_logits = randn(n, ks)
target = relationship[labels]
cotuning = torch.mean(torch.sum(-target * F.log_softmax(head_logits, dim=-1), dim=-1))
golden["cotuning"] = {"source_logits": flat(source_logits), "labels": labels.tolist(), "num_source": ks,
                      "num_target": kt, "relationship": flat(relationship), "head_logits": flat(head_logits),
                      "penalty": cotuning.item()}

# ---- mixup: mixed_x = lam x + (1 - lam) x[perm]; loss = lam CE(y) + (1 - lam) CE(y[perm]).
x = randn(6, 1, 4, 4)
y = torch.tensor([0, 3, 1, 2, 3, 0])
perm = torch.tensor([3, 0, 5, 1, 2, 4])
lam = 0.3
logits = randn(6, 4)
criterion = torch.nn.CrossEntropyLoss()
golden["mixup"] = {"x": flat(x), "x_shape": list(x.shape), "labels": y.tolist(), "perm": perm.tolist(),
                   "lambda": lam, "mixed_x": flat(lam * x + (1 - lam) * x[perm, :]), "logits": flat(logits),
                   "loss": (lam * criterion(logits, y) + (1 - lam) * criterion(logits, y[perm])).item()}


# ---- CutMix: the reference box (with H and W named for what they are), the pasted images, the corrected lambda.
def rand_bbox(h, w, lam, cy, cx):
    cut_rat = np.sqrt(1. - lam)
    cut_h = int(h * cut_rat)
    cut_w = int(w * cut_rat)
    y1 = np.clip(cy - cut_h // 2, 0, h)
    y2 = np.clip(cy + cut_h // 2, 0, h)
    x1 = np.clip(cx - cut_w // 2, 0, w)
    x2 = np.clip(cx + cut_w // 2, 0, w)
    return int(y1), int(y2), int(x1), int(x2)


h, w = 6, 8
images = randn(4, 2, h, w)
cut_perm = torch.tensor([2, 3, 1, 0])
cut_y = torch.tensor([1, 0, 1, 2])
cut_logits = randn(4, 3)
boxes = []
for lam0, cy, cx in [(0.6, 2, 6), (0.1, 0, 0), (0.95, 5, 3), (0.5, 3, 4), (0.0, 3, 4), (1.0, 1, 1)]:
    y1, y2, x1, x2 = rand_bbox(h, w, lam0, cy, cx)
    mixed = images.clone()
    mixed[:, :, y1:y2, x1:x2] = images[cut_perm, :, y1:y2, x1:x2]
    lam = 1 - ((x2 - x1) * (y2 - y1) / (h * w))
    loss = lam * criterion(cut_logits, cut_y) + (1 - lam) * criterion(cut_logits, cut_y[cut_perm])
    boxes.append({"lambda": lam0, "cy": cy, "cx": cx, "box": [y1, y2, x1, x2], "corrected_lambda": lam,
                  "mixed": flat(mixed), "loss": loss.item()})
golden["cutmix"] = {"height": h, "width": w, "images": flat(images), "images_shape": list(images.shape),
                    "perm": cut_perm.tolist(), "labels": cut_y.tolist(), "logits": flat(cut_logits), "boxes": boxes}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baselines.json")
with open(out, "w") as f:
    json.dump(golden, f, indent=1)
print("wrote", out)
