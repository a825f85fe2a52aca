"""Which recorded layers carry LWTA competition blocks, so their columns are named per (block, unit).

An LWTA module itself has ``competitors``. A container whose output *is* an LWTA output (a ResNet stage
ending in a block whose last activation competes, a ``Sequential`` ending in one) has the same blocks;
that is decided by one forward pass that compares output tensors by identity, not by guessing from
module names.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from discover_ray.cvn.lwta import LWTA, lwta_modules

__all__ = ["competition_blocks"]


@torch.no_grad()
def competition_blocks(model: nn.Module, layers: dict[str, nn.Module], example: Tensor) -> dict[str, int]:
    """Block size U per layer name (1 where the layer's output is not an LWTA output)."""
    sizes = {name: int(module.competitors) if isinstance(module, LWTA) else 1 for name, module in layers.items()}
    competing = lwta_modules(model)
    undecided = [name for name, size in sizes.items() if size == 1 and not isinstance(layers[name], LWTA)]
    if not competing or not undecided:
        return sizes
    produced: dict[int, int] = {}
    outputs: dict[str, int] = {}
    kept: list[Tensor] = []  # every output seen stays alive, so no id is reused within the pass

    def lwta_hook(module: nn.Module, _inputs: object, out: Tensor) -> None:
        kept.append(out)
        produced[id(out)] = int(module.competitors)

    def layer_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, out: Tensor) -> None:
            kept.append(out)
            outputs[name] = id(out)

        return hook

    handles = []
    was_training = model.training
    try:
        handles += [module.register_forward_hook(lwta_hook) for _, module in competing]
        handles += [layers[name].register_forward_hook(layer_hook(name)) for name in undecided]
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    for name in undecided:
        sizes[name] = produced.get(outputs.get(name, -1), 1)
    return sizes
