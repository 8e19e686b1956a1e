#!/usr/bin/python3
"""The training step of l2, mixup, XMixup, SMILE and DELTA in PyTorch as an expert writes it, on Debian's
python3-torch (the same 1.13 kernels as libtorch-dev), for `bench/compare.sh`: the Python reference xfer is
measured against. `--method l2` is exactly `xfer_bench bare`'s step.

What makes it the fastest idiomatic loop (issue 24): gradients dropped with `zero_grad(set_to_none=True)`;
frozen networks (SMILE's mean teacher, DELTA's source network) in eval mode under `torch.inference_mode()`,
their convolutions in channels-last layout when --teacher-layout channels_last is faster (compare.sh runs
both and keeps the faster); fixed batches, so the data pipeline costs Python nothing; nothing computed that
xfer's step does not compute.

Same model as xfer's cnn4 (4 conv+BN+ReLU stages, max-pool after the first two, global average pool,
linear head) or, with --backbone resnet18, as xfer's resnet18 (torchvision's ResNet-18 with a 1-channel
7x7/2 stem and max-pool, widths 64-512), same batch, threads and optimizer (SGD, lr 0.01, momentum
0.9, weight decay 1e-4); fixed batches of real Fashion-MNIST images (target: labels mod 5, auxiliary/source:
the next images), so the data pipeline costs Python nothing. Each method follows its xfer default:

  mixup   lambda ~ Beta(0.2, 0.2) per batch, a random permutation, lambda CE(y) + (1-lambda) CE(y[p])
  xmixup  lambda ~ Beta(4, 1) per example, x = lambda x_t + (1-lambda) x_s, one joint head over 5 target
          and 5 auxiliary classes, soft label lambda / 1-lambda (XMixup Eq. 4)
  smile   mixup (alpha 0.2, folded) + 0.01 L_FE + 0.1 L_FC against a mean teacher (eval mode, no-grad,
          one forward of the unmixed batch), EMA of the backbone every 10 steps (decay 0.999)
  delta   CE + 0.01 * sum over stages of 0.5 C/(HW) sum_c a_c ||m_c - m0_c||^2 on each stage's last
          convolution output (before its batch norm) against the frozen source network, + 0.01/2 ||w_head||^2,
          optimizer weight decay off; a_c: fixed attention weights (xfer measures them once before training)

Prints one JSON line with the median step time.

  /usr/bin/python3 bench/python/method_step.py --method smile [--backbone cnn4|resnet18] [--width W]
                                               [--batch 64] [--threads 2] [--teacher-layout contiguous]
"""
import argparse
import copy
import gzip
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

class Cnn4(nn.Module):
    def __init__(self, width, classes):
        super().__init__()
        chans = [width, 2 * width, 4 * width, 4 * width]
        layers, cin = [], 1
        for i, c in enumerate(chans):
            block = [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < 2:
                block.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*block))
            cin = c
        self.layers = nn.Sequential(*layers)
        self.feature_dim = chans[-1]
        self.head = nn.Linear(chans[-1], classes)

    def forward(self, x):
        return self.head(self.layers(x).mean((2, 3)))

    def tapped(self, x):
        """The last stage's map and each stage's convolution output (before its batch norm)."""
        convs = []
        for block in self.layers:
            x = block[0](x)
            convs.append(x)
            for m in block[1:]:
                x = m(x)
        return x, convs


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.tapped(x)[0]

    def tapped(self, x):
        """The block's output and conv2's output (before bn2 and the add)."""
        h = F.relu(self.bn1(self.conv1(x)))
        c = self.conv2(h)
        return F.relu(self.bn2(c) + (self.downsample(x) if self.downsample is not None else x)), c


class ResNet18(nn.Module):
    """xfer's resnet18: the ImageNet stem (on 1-channel input by default), [2, 2, 2, 2] basic blocks."""

    def __init__(self, width, classes, channels=1):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, 1)]
        cin = width
        for s, w in enumerate(widths):
            for b in range(2):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and s > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.feature_dim = cin
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.layers(x).mean((2, 3)))

    def tapped(self, x):
        """The last stage's map and each stage's last convolution output (its last block's conv2)."""
        for m in self.layers[:4]:
            x = m(x)
        convs = []
        for i in range(4):
            for j in range(2):
                x, c = self.layers[4 + 2 * i + j].tapped(x)
            convs.append(c)
        return x, convs


def first_images(n, root="/usr/share/datasets/fashion-mnist"):
    """The first n Fashion-MNIST training images, normalised as xfer_bench does, and labels mod 5."""
    with gzip.open(f"{root}/train-images-idx3-ubyte.gz") as f:
        images = torch.frombuffer(bytearray(f.read()[16:16 + n * 784]), dtype=torch.uint8)
    with gzip.open(f"{root}/train-labels-idx1-ubyte.gz") as f:
        labels = torch.frombuffer(bytearray(f.read()[8:8 + n]), dtype=torch.uint8)
    x = ((images.view(n, 1, 28, 28).float() / 255.0 - 0.2860) / 0.3530).contiguous()
    return x, labels.long() % 5


def soft_ce(logits, target):
    return -(target * F.log_softmax(logits, 1)).sum(1).mean()


def features(model, x):
    """The last stage's feature map and its global average pool."""
    fm = model.layers(x)
    return fm, fm.mean((2, 3))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=["l2", "mixup", "xmixup", "smile", "delta"], required=True)
    p.add_argument("--backbone", choices=["cnn4", "resnet18"], default="cnn4")
    p.add_argument("--width", type=int, default=0, help="default: 16 for cnn4, 64 for resnet18")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--teacher-layout", choices=["channels_last", "contiguous"], default="channels_last",
                   help="memory layout of the frozen network's convolutions (smile, delta)")
    a = p.parse_args()
    a.width = a.width or (16 if a.backbone == "cnn4" else 64)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    b = a.batch
    x_all, y_all = first_images(2 * b)
    x, y = x_all[:b], y_all[:b]
    x_aux, y_aux = x_all[b:], y_all[b:]

    heads = 10 if a.method == "xmixup" else 5  # xmixup: the joint head over target + auxiliary classes
    model = (Cnn4 if a.backbone == "cnn4" else ResNet18)(a.width, heads).train()
    aux_head = nn.Linear(model.feature_dim, 5)  # smile: the student's head over the source classes
    params = list(model.parameters()) + (list(aux_head.parameters()) if a.method == "smile" else [])
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=0.0 if a.method == "delta" else 1e-4)
    teacher = copy.deepcopy(model).eval()  # smile: backbone + source head; delta: the source network
    for q in teacher.parameters():
        q.requires_grad_(False)
    layout = torch.channels_last if a.teacher_layout == "channels_last" else torch.contiguous_format
    teacher = teacher.to(memory_format=layout)
    with torch.inference_mode():
        channels = [c.shape[1] for c in teacher.tapped(x[:1])[1]]
    attention = [torch.softmax(torch.randn(c), 0) for c in channels]  # delta's: any fixed vector costs the same
    beta_mix = torch.distributions.Beta(torch.tensor(0.2), torch.tensor(0.2))
    beta_x = torch.distributions.Beta(torch.tensor(4.0), torch.tensor(1.0))
    step_no = [0]

    def loss_l2():
        return F.cross_entropy(model(x), y)

    def loss_mixup():
        lam = beta_mix.sample().item()
        perm = torch.randperm(b)
        z = model(lam * x + (1 - lam) * x[perm])
        return lam * F.cross_entropy(z, y) + (1 - lam) * F.cross_entropy(z, y[perm])

    def loss_xmixup():
        lam = beta_x.sample((b,))
        l4 = lam.view(b, 1, 1, 1)
        z = model(l4 * x + (1 - l4) * x_aux)
        target = torch.zeros(b, 10)
        target[torch.arange(b), y] += lam
        target[torch.arange(b), 5 + y_aux] += 1 - lam
        return soft_ce(z, target)

    def loss_smile():
        lam = beta_mix.sample().item()
        lam = max(lam, 1 - lam)
        perm = torch.randperm(b)
        with torch.inference_mode():
            fm_t, pooled_t = features(teacher, x.contiguous(memory_format=layout))
            p_t = F.softmax(teacher.head(pooled_t), 1)
        # Mixed outside inference mode: the results are ordinary tensors, which autograd may save.
        fm_mix = lam * fm_t + (1 - lam) * fm_t[perm]
        p_mix = lam * p_t + (1 - lam) * p_t[perm]
        fm_s, pooled_s = features(model, lam * x + (1 - lam) * x[perm])
        z = model.head(pooled_s)
        mxp = lam * F.cross_entropy(z, y) + (1 - lam) * F.cross_entropy(z, y[perm])
        h, w = fm_s.shape[2], fm_s.shape[3]
        fe = torch.linalg.norm((fm_mix - fm_s).flatten()) / (h * w)
        fc = soft_ce(aux_head(pooled_s), p_mix)
        return mxp + 0.01 * fe + 0.1 * fc

    def loss_delta():
        fm, convs = model.tapped(x)
        ce = F.cross_entropy(model.head(fm.mean((2, 3))), y)
        with torch.inference_mode():
            convs0 = teacher.tapped(x.contiguous(memory_format=layout))[1]
        fm_loss = 0.0
        for m, m0, att in zip(convs, convs0, attention):
            c, hw = m.shape[1], m.shape[2] * m.shape[3]
            sq = (m - m0).pow(2).sum((2, 3))
            fm_loss = fm_loss + (sq * att.view(1, c)).sum() * (0.5 * c / hw)
        head_l2 = 0.5 * 0.01 * sum(q.pow(2).sum() for q in model.head.parameters())
        return ce + 0.01 * fm_loss + head_l2

    def ema():
        step_no[0] += 1
        if a.method == "smile" and step_no[0] % 10 == 0:
            with torch.no_grad():
                for t, s in zip(teacher.layers.parameters(), model.layers.parameters()):
                    t.mul_(0.999).add_(s, alpha=0.001)

    loss_fn = {"l2": loss_l2, "mixup": loss_mixup, "xmixup": loss_xmixup, "smile": loss_smile,
               "delta": loss_delta}[a.method]

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        ema()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    secs = sorted(times)[len(times) // 2]
    print(json.dumps({"mode": "method", "impl": "python", "method": a.method, "backbone": f"{a.backbone}:width={a.width}",
                      "batch": b, "threads": a.threads, "steps": a.steps, "teacher_layout": a.teacher_layout,
                      "step_ms": 1000 * secs,
                      "samples_per_s": b / secs}))


if __name__ == "__main__":
    main()
