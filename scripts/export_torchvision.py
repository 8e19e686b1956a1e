#!/usr/bin/env python3
"""Export a torchvision model for xfer, in both forms xfer reads:

  PREFIX.state_dict.pt   torch.save(dict(model.state_dict()))  ->  xfer finetune --init state_dict:PREFIX.state_dict.pt
  PREFIX.script.pt       torch.jit.script(model)               ->  xfer finetune --init torchscript:PREFIX.script.pt
                         (scripted, not traced, so that BatchNorm can train)

Examples:
  python3 scripts/export_torchvision.py --arch resnet50 --weights DEFAULT --out weights/resnet50
  python3 scripts/export_torchvision.py --from ~/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth --out weights/resnet50
  python3 scripts/export_torchvision.py --arch resnet18 --weights none --num-classes 10 --out /tmp/r18 --example 64

--weights DEFAULT downloads torchvision's ImageNet weights (needs the network once); --weights none keeps
the random initialisation (tests). --from FILE reads the weights from a file instead, offline: a torch hub
cache file, torch.save(model.state_dict()), or a training checkpoint holding the state dict under
'state_dict' or 'model' (timm, Transfer-Learning-Library, Lightning), "module." prefixes (DDP) dropped. FILE
is unpickled with an allowlist of the globals a file of tensors needs: it cannot run code, and a file that
names any other global is refused. --arch is inferred from the weights unless given.
--example N also writes PREFIX.example.pt: a dict with an input x of shape (2, 3, N, N), the eval-mode
logits y and pooled features f, for checking xfer's import.
"""
import argparse
import pickle
import sys
import zipfile

import torch
import torchvision

# The globals a file of tensors needs (what xfer's own reader allows: src/xfer/models/pickle.cpp).
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("argparse", "Namespace"),  # timm's training checkpoints keep their arguments; data only
}
STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def fail(message):
    """One line on stderr and exit code 2, as xfer refuses bad input."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the data.pkl of a torch.save zip archive, resolving only ALLOWED_GLOBALS and the storage types:
    any other global in the file is refused before anything is called. Storages are built from the archive's
    records, their lengths checked. (torch.load(pickle_module=...) cannot do this: Debian's torch 1.13 replaces
    the module it is given by pickle unless weights_only=True.)"""

    def __init__(self, file, archive, prefix):
        super().__init__(file, encoding="utf-8")
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return ("storage type", STORAGE_DTYPES[name])
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the file names the global {module}.{name}, which a file of tensors does "
                                     "not need; refusing it (nothing was executed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], tuple)
                and pid[1][:1] == ("storage type",) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"a malformed storage record {str(pid)[:80]}")
        dtype, key, numel = pid[1][1], pid[2], pid[4]
        raw = self.archive.read(self.prefix + "data/" + key)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != numel * itemsize:
            raise pickle.UnpicklingError(f"storage {key} declares {numel} elements but holds {len(raw)} bytes")
        values = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return values.storage()


def restricted_load(path):
    """What torch.save wrote to `path` (its zip format), unpickled by RestrictedUnpickler."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        fail(f"{path}: not the zip archive torch.save writes; a file in the legacy format can be "
                         "re-saved with torch.save(torch.load(FILE, weights_only=True), NEW_FILE)")
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            fail(f"{path}: no data.pkl in the archive (a TorchScript file? use it with --init "
                             "torchscript:FILE)")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            return RestrictedUnpickler(f, archive, prefix).load()


def read_state_dict(path):
    """The state dict in `path`: itself, or under a wrapper key; "module." prefixes taken off."""
    obj = restricted_load(path)
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:16] if isinstance(obj, dict) else type(obj).__name__
        fail(f"{path}: no state dict (a dict of tensors, or one under {', '.join(WRAPPER_KEYS)}): {keys}")
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        while all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    # A LightningModule names its network's entries NET.conv1.weight (NET its attribute), as xfer reads them.
    if "conv1.weight" not in sd:
        stems = sorted((k[: -len("conv1.weight")] for k in sd if k.endswith(".conv1.weight")), key=len)
        if stems and all(k.startswith(stems[0]) for k in sd):
            sd = {k[len(stems[0]):]: v for k, v in sd.items()}
    return sd


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=None,
                   help="a torchvision.models name (resnet18, resnet50, ...; default resnet50, or with --from "
                        "inferred from the weights)")
    p.add_argument("--weights", default="DEFAULT", help="torchvision weights name, or none for random weights")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (random weights only)")
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--example", type=int, default=0, help="also write an example input/output of this size")
    p.add_argument("--from", dest="source", default=None,
                   help="read the weights from this file (a torch hub cache file, a state dict or a checkpoint)")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    kwargs = {}
    if a.source:
        try:
            sd = read_state_dict(a.source)
        except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError, TypeError) as e:
            fail(f"{a.source}: cannot be read: {e}")
        if a.arch is None:
            a.arch = "resnet50" if "layer1.0.conv3.weight" in sd else "resnet18"
        kwargs = {"weights": None}
        if "fc.weight" in sd:
            kwargs["num_classes"] = sd["fc.weight"].shape[0]
        model = getattr(torchvision.models, a.arch)(**kwargs)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            fail(f"{a.source}: the weights are not torchvision's {a.arch}: " + " ".join(str(e).split())[:400])
    elif a.weights.lower() == "none":
        kwargs["weights"] = None
        if a.num_classes:
            kwargs["num_classes"] = a.num_classes
    else:
        kwargs["weights"] = a.weights
    if not a.source:
        a.arch = a.arch or "resnet50"
        model = getattr(torchvision.models, a.arch)(**kwargs)
    if a.weights.lower() == "none" and not a.source:
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
