"""The CIFAR ResNet family (He et al. 2016, §4.2): ResNet-20/32/44/56/110 with option-A shortcuts.

Module and parameter names match the widely shared CIFAR-10 checkpoints (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.conv1|bn1|conv2|bn2``, ``linear``), so they load as they are once the ``module.``
prefix is stripped. Every ReLU is its own module (``relu``, ``layerX.i.relu1|relu2``) so it can be
hooked or replaced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discover_ray.errors import UnknownName

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
DEPTHS = {"cifar_resnet20": 3, "cifar_resnet32": 5, "cifar_resnet44": 7, "cifar_resnet56": 9, "cifar_resnet110": 18}


class ShortcutA(nn.Module):
    """Option A: subsample by 2 and zero-pad (out − in) / 2 channels on each side; no parameters."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()  # after the residual add
        changes = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = ShortcutA((planes - in_planes) // 2) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            layers = []
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.pool(x), 1))


def cifar_resnet(name: str, num_classes: int = 10) -> CifarResNet:
    if name not in DEPTHS:
        raise UnknownName(f"no CIFAR ResNet {name!r}; choose one of {', '.join(DEPTHS)}")
    return CifarResNet(DEPTHS[name], num_classes)
