#!/usr/bin/env python3
"""Export a torchvision model for xfer, in both forms xfer reads:

  PREFIX.state_dict.pt   torch.save(dict(model.state_dict()))  ->  xfer finetune --init state_dict:PREFIX.state_dict.pt
                         (a plain dict: LibTorch 1.13 cannot read Python's OrderedDict)
  PREFIX.script.pt       torch.jit.script(model)               ->  xfer finetune --init torchscript:PREFIX.script.pt
                         (scripted, not traced, so that BatchNorm can train)

Examples:
  python3 scripts/export_torchvision.py --arch resnet50 --weights DEFAULT --out weights/resnet50
  python3 scripts/export_torchvision.py --arch resnet18 --weights none --num-classes 10 --out /tmp/r18 --example 64

--weights DEFAULT downloads torchvision's ImageNet weights (needs the network once); --weights none keeps
the random initialisation (tests). --example N also writes PREFIX.example.pt: a dict with an input x of
shape (2, 3, N, N), the eval-mode logits y and pooled features f, for checking xfer's import.
"""
import argparse

import torch
import torchvision


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50", help="a torchvision.models name (resnet18, resnet50, ...)")
    p.add_argument("--weights", default="DEFAULT", help="torchvision weights name, or none for random weights")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (random weights only)")
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--example", type=int, default=0, help="also write an example input/output of this size")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    kwargs = {}
    if a.weights.lower() == "none":
        kwargs["weights"] = None
        if a.num_classes:
            kwargs["num_classes"] = a.num_classes
    else:
        kwargs["weights"] = a.weights
    model = getattr(torchvision.models, a.arch)(**kwargs)
    if a.weights.lower() == "none":
        # Random weights with non-trivial BatchNorm statistics, so that an import test compares something real.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
    model.eval()

    torch.save(dict(model.state_dict()), a.out + ".state_dict.pt")
    torch.jit.script(model).save(a.out + ".script.pt")
    if a.example:
        x = torch.randn(2, 3, a.example, a.example)
        with torch.no_grad():
            y = model(x)
            fc = model.fc
            model.fc = torch.nn.Identity()
            f = model(x)
            model.fc = fc
        torch.save({"x": x, "y": y, "f": f}, a.out + ".example.pt")
    print(f"wrote {a.out}.state_dict.pt and {a.out}.script.pt")


if __name__ == "__main__":
    main()
