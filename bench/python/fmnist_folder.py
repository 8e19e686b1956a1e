#!/usr/bin/python3
"""Writes Fashion-MNIST training images of some classes as an image folder, ROOT/CLASS/NNNNN.png (28x28
grayscale PNGs, which xfer's folder loader reads as RGB and resizes to the spec's size=), for benchmarks at
a model's own input resolution. Leaves a complete folder alone.

  /usr/bin/python3 bench/python/fmnist_folder.py ROOT [--classes 0,1,2,3,4] [--per-class 400]
"""
import argparse
import gzip
import os

import numpy as np
from PIL import Image

NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--classes", default="0,1,2,3,4")
    p.add_argument("--per-class", type=int, default=400)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    classes = [int(c) for c in a.classes.split(",")]
    done = os.path.join(a.root, ".complete")
    if os.path.exists(done):
        return
    with gzip.open(f"{a.data}/train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    with gzip.open(f"{a.data}/train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    for c in classes:
        folder = os.path.join(a.root, f"{c}_{NAMES[c]}")
        os.makedirs(folder, exist_ok=True)
        for i, at in enumerate(np.flatnonzero(labels == c)[:a.per_class]):
            Image.fromarray(images[at]).save(os.path.join(folder, f"{i:05d}.png"))
    open(done, "w").close()


if __name__ == "__main__":
    main()
