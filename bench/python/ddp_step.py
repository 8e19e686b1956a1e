#!/usr/bin/python3
"""Data-parallel throughput in plain PyTorch, the reference for `bench/dist_bench.sh`: xfer's resnet18 (or
cnn4) trained with SGD (lr 0.01, momentum 0.9, weight decay 1e-4) on a fixed batch of random images,
1 process with R threads against R processes with 1 thread each under DistributedDataParallel (Gloo on
loopback, its default 25 MB buckets, the all-reduce overlapped with the backward pass), the same global batch.
Fixed batches, so the data pipeline costs Python nothing. Prints one JSON line with each median step time
and samples/s.

  /usr/bin/python3 bench/python/ddp_step.py [--backbone resnet18] [--size 28] [--channels 1] [--batch 64]
                                            [--ranks 2] [--steps 15] [--warmup 3]
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from method_step import Cnn4, ResNet18


def make_model(a):
    torch.manual_seed(0)
    if a.backbone == "resnet18":
        return ResNet18(64, 5, a.channels)
    assert a.channels == 1, "cnn4 here takes 1-channel images"
    return Cnn4(16, 5)


def median_step_ms(a, model, batch):
    torch.manual_seed(1)
    x = torch.randn(batch, a.channels, a.size, a.size)
    y = torch.randint(0, 5, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def rank_main(rank, a, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a.ranks)
    model = torch.nn.parallel.DistributedDataParallel(make_model(a))
    ms = median_step_ms(a, model, a.batch // a.ranks)
    if rank == 0:
        out.put(ms)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", choices=["cnn4", "resnet18"], default="resnet18")
    p.add_argument("--size", type=int, default=28, help="image side")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()

    torch.set_num_threads(a.ranks)
    one_ms = median_step_ms(a, make_model(a), a.batch)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.spawn(rank_main, args=(a, port, out), nprocs=a.ranks, join=True)
    ddp_ms = out.get()
    print(json.dumps({"impl": "python", "backbone": a.backbone, "size": a.size, "channels": a.channels,
                      "batch": a.batch, "ranks": a.ranks, "one_step_ms": one_ms, "one_samples_per_s": 1000 * a.batch / one_ms,
                      "ddp_step_ms": ddp_ms, "ddp_samples_per_s": 1000 * a.batch / ddp_ms}))


if __name__ == "__main__":
    main()
