#!/usr/bin/env python3
"""PyTorch definitions of xfer's built-in backbones, for the state dicts `xfer export` writes.

They match xfer's C++ definitions (src/xfer/models/backbone.cpp) module for module, so an export loads with
load_state_dict(strict=True) and gives xfer's logits:

  cnn4[:width=W]                 layer1..4 = Sequential(conv3x3 (no bias), BatchNorm2d, ReLU[, MaxPool2d(2)]),
                                 pooling after layer1 and layer2; channels W, 2W, 4W, 4W
  resnet20[:width=W]             3x3 stem (conv1, bn1), layer1..3 of 3 BasicBlocks, widths W, 2W, 4W
  resnet18[:width=W][:stem=S]    torchvision's ResNet-18 (S=imagenet: 7x7 stride-2 stem and max-pool;
                                 S=cifar: 3x3 stride-1 stem, no max-pool); widths W, 2W, 4W, 8W
  resnet50[:width=W][:stem=S]    torchvision's ResNet-50 (Bottleneck, stride on the 3x3 conv)

then the mean over the feature map and the classifier `fc`. For resnet18/50 at width 64 with the ImageNet
stem on 3 channels, torchvision.models.resnet18/50(num_classes=K) is the same network with the same names.

    import torch, xfer_models
    model = xfer_models.build("cnn4:width=16", in_channels=1, num_classes=5)
    model.load_state_dict(torch.load("model.pt"), strict=True)
    model.eval()

or, from the model.pt.json that `xfer export` writes beside the file: model = xfer_models.load("model.pt").
Inputs are images scaled to [0, 1] and normalised with that file's input_mean and input_std.
"""
import json

import torch
from torch import nn


def conv(cin, cout, k, stride=1, pad=0):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = conv(cin, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, width, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv(width, width * 4, 1)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(conv(cin, width * 4, 1, stride, 0), nn.BatchNorm2d(width * 4))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return torch.relu(h + (self.downsample(x) if self.downsample is not None else x))


class Cnn4(nn.Module):
    def __init__(self, in_channels, width, num_classes):
        super().__init__()
        cin = in_channels
        for i, cout in enumerate([width, 2 * width, 4 * width, 4 * width]):
            block = [conv(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if i < 2:
                block.append(nn.MaxPool2d(2))
            setattr(self, f"layer{i + 1}", nn.Sequential(*block))
            cin = cout
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


class ResNet(nn.Module):
    def __init__(self, in_channels, blocks, widths, imagenet_stem, bottleneck, num_classes):
        super().__init__()
        self.imagenet_stem = imagenet_stem
        self.conv1 = conv(in_channels, widths[0], 7, 2, 3) if imagenet_stem else conv(in_channels, widths[0], 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        self.stages = len(blocks)
        for s, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for b in range(n):
                stride = 2 if b == 0 and s > 0 else 1
                if bottleneck:
                    layer.append(Bottleneck(cin, w, stride))
                    cin = w * 4
                else:
                    layer.append(BasicBlock(cin, w, stride))
                    cin = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        if self.imagenet_stem:
            x = nn.functional.max_pool2d(x, 3, 2, 1)
        for s in range(self.stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return x.mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def parse_spec(spec):
    """'resnet18:width=64:stem=cifar' -> ('resnet18', {'width': '64', 'stem': 'cifar'})."""
    name, *parts = spec.split(":")
    options = dict(p.split("=", 1) for p in parts)
    return name, options


def build(spec, in_channels, num_classes):
    """The PyTorch model of xfer's backbone `spec` (as in config.json or the export's .json) with a head `fc`."""
    name, options = parse_spec(spec)
    if name == "cnn4":
        return Cnn4(in_channels, int(options.get("width", 16)), num_classes)
    if name == "resnet20":
        w = int(options.get("width", 16))
        return ResNet(in_channels, [3, 3, 3], [w, 2 * w, 4 * w], False, False, num_classes)
    if name in ("resnet18", "resnet50"):
        w = int(options.get("width", 64))
        blocks = [3, 4, 6, 3] if name == "resnet50" else [2, 2, 2, 2]
        return ResNet(in_channels, blocks, [w, 2 * w, 4 * w, 8 * w], options.get("stem", "imagenet") == "imagenet",
                      name == "resnet50", num_classes)
    raise ValueError(f"xfer_models: no Python definition of backbone {spec!r} (a TorchScript backbone: export "
                     "with --format torchscript)")


def load(path):
    """The model `xfer export` wrote to `path` (state_dict format), built from path + '.json', in eval mode."""
    with open(path + ".json") as f:
        info = json.load(f)
    model = build(info["backbone"], info["in_channels"], len(info["classes"]))
    model.load_state_dict(torch.load(path), strict=True)
    return model.eval()
