#!/usr/bin/python3
"""One evaluation pass in PyTorch as an expert writes it, for `bench/compare.sh`: the model in eval mode,
torch.inference_mode() (faster than no_grad), --layout channels_last or contiguous, batches of --batch images, top-1 from the argmax; the same
cnn4 or resnet18 as bench/python/method_step.py, over the Fashion-MNIST test images of the demo target's
classes (2, 4, 6, 7, 9: 5,000 images), normalised once up front (so data costs Python nothing).

Prints one JSON line with the median pass time.

  /usr/bin/python3 bench/python/eval_pass.py [--backbone cnn4|resnet18] [--batch 500] [--threads 2]
"""
import argparse
import gzip
import json
import time

import torch

from method_step import Cnn4, ResNet18


def test_images(classes, root="/usr/share/datasets/fashion-mnist"):
    with gzip.open(f"{root}/t10k-images-idx3-ubyte.gz") as f:
        images = torch.frombuffer(bytearray(f.read()[16:]), dtype=torch.uint8).view(-1, 1, 28, 28)
    with gzip.open(f"{root}/t10k-labels-idx1-ubyte.gz") as f:
        labels = torch.frombuffer(bytearray(f.read()[8:]), dtype=torch.uint8).long()
    keep = torch.isin(labels, torch.tensor(classes))
    x = ((images[keep].float() / 255.0 - 0.2860) / 0.3530).contiguous()
    return x, labels[keep]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", choices=["cnn4", "resnet18"], default="cnn4")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--passes", type=int, default=20)
    p.add_argument("--layout", choices=["channels_last", "contiguous"], default="contiguous",
                   help="memory layout of the model and the batches (compare.sh keeps the faster)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = test_images([2, 4, 6, 7, 9])
    layout = torch.channels_last if a.layout == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=layout)
    model = (Cnn4(16, 5) if a.backbone == "cnn4" else ResNet18(64, 5)).eval().to(memory_format=layout)
    times = []
    for i in range(a.passes + 2):
        t0 = time.perf_counter()
        correct = 0
        with torch.inference_mode():
            for s in range(0, len(x), a.batch):
                correct += (model(x[s:s + a.batch]).argmax(1) == y[s:s + a.batch] % 5).sum().item()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    secs = sorted(times)[len(times) // 2]
    print(json.dumps({"mode": "eval", "impl": "python", "backbone": a.backbone, "images": len(x), "batch": a.batch,
                      "threads": a.threads, "layout": a.layout, "pass_ms": 1000 * secs, "images_per_s": len(x) / secs}))


if __name__ == "__main__":
    main()
