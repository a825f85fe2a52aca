"""Target models whose units are known, for tests that check a method against the truth: each unit of
``colour_detector`` responds to one colour of the generated world (unit 3 is dead: constant zero)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from discover_ray import world


def colour_detector() -> nn.Sequential:
    """relu: per pixel, how much more one channel is than the mean of the others, for red, green, blue, and a
    dead fourth map; fc: their spatial means (an identity layer, so fc's unit k is relu's channel k pooled)."""
    conv = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for k, rgb in enumerate(world.COLOURS.values()):
            target = torch.tensor(rgb, dtype=torch.float32) / 255
            conv.weight[k, :, 0, 0] = (target - target.mean()) * 4
    fc = nn.Linear(4, 4)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(4))
        fc.bias.zero_()
    return nn.Sequential(OrderedDict([("conv", conv), ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)),
                                      ("flatten", nn.Flatten()), ("fc", fc)]))
