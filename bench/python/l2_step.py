#!/usr/bin/python3
"""The bare l2 training step in Python, on Debian's python3-torch (the same 1.13 kernels as libtorch-dev).

On the same fixed batch (the first Fashion-MNIST training images), the same model as xfer's cnn4 (4 conv+BN+ReLU stages, max-pool after the first two, global average
pool, linear head), the same batch, loss and optimizer (SGD, lr 0.01, momentum 0.9, weight decay
1e-4) and the same number of threads as `xfer_bench bare`. Prints one JSON line.

  /usr/bin/python3 bench/python/l2_step.py [--width 16] [--batch 64] [--threads 2] [--steps 200]
"""
import argparse
import gzip
import json
import time

import torch
import torch.nn as nn


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
        self.head = nn.Linear(chans[-1], classes)

    def forward(self, x):
        return self.head(self.layers(x).mean((2, 3)))


def first_images(n, root="/usr/share/datasets/fashion-mnist"):
    """The first n Fashion-MNIST training images, normalised as xfer_bench does, and labels mod 5."""
    with gzip.open(f"{root}/train-images-idx3-ubyte.gz") as f:
        images = torch.frombuffer(bytearray(f.read()[16:16 + n * 784]), dtype=torch.uint8)
    with gzip.open(f"{root}/train-labels-idx1-ubyte.gz") as f:
        labels = torch.frombuffer(bytearray(f.read()[8:8 + n]), dtype=torch.uint8)
    x = ((images.view(n, 1, 28, 28).float() / 255.0 - 0.2860) / 0.3530).contiguous()
    return x, labels.long() % 5


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Cnn4(a.width, 5).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = first_images(a.batch)

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    secs = sorted(times)[len(times) // 2]  # the median step, as xfer_bench reports
    print(json.dumps({"mode": "bare", "impl": "python", "backbone": f"cnn4:width={a.width}", "batch": a.batch,
                      "threads": a.threads, "steps": a.steps, "step_ms": 1000 * secs,
                      "samples_per_s": a.batch / secs}))


if __name__ == "__main__":
    main()
