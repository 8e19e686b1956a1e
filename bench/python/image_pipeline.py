#!/usr/bin/python3
"""The image pipeline a PyTorch user runs for fine-tuning at 224, timed as bench/image_bench.cpp's `decode`
times xfer's: torchvision's ImageFolder (PIL decode, RGB), RandomResizedCrop(SIZE) and RandomHorizontalFlip,
to a uint8 tensor (PILToTensor: the same output as xfer's loader, normalisation belongs to the model side),
through a DataLoader with WORKERS worker processes (0: in this process) in batches of 64. The first batch
warms the page cache and the workers and is not timed. Prints one JSON line.

  /usr/bin/python3 bench/python/image_pipeline.py --dir D [--count 500] [--size 224] [--workers 1]
"""
import argparse
import json
import time

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    tf = transforms.Compose([transforms.RandomResizedCrop(a.size), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    data = datasets.ImageFolder(a.dir, transform=tf)
    chunk = 64
    n = min(a.count, len(data))
    # The warm-up batch, then the timed images, as xfer's bench does.
    warm = DataLoader(Subset(data, range(min(n, chunk))), batch_size=chunk, num_workers=a.workers)
    for _ in warm:
        pass
    loader = DataLoader(Subset(data, range(n)), batch_size=chunk, num_workers=a.workers,
                        persistent_workers=False)
    t0 = time.perf_counter()
    it = iter(loader)  # starting the workers is part of the cost, as xfer's threads are
    seen = 0
    for images, _ in it:
        seen += images.shape[0]
    secs = time.perf_counter() - t0
    assert seen == n
    per = max(a.workers, 1)
    print(json.dumps({"mode": "decode", "images": n, "size": a.size, "workers": a.workers, "seconds": secs,
                      "images_per_s": n / secs, "images_per_s_per_worker": n / secs / per}))


if __name__ == "__main__":
    main()
