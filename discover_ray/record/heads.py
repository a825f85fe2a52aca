"""Which recorded layers feed the model's linear head directly (ResNet ``layer4`` → pool → ``fc``).

Ablation scoring replaces one unit's pooled activation in the logits, which is exact only when the logits
are a linear function of the recorded (mean-pooled) activations. Rather than trusting names, the check is
numerical: on an example batch, some ``nn.Linear`` of the model applied to the layer's pooled output must
reproduce the model's output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from discover_ray.record import recording

__all__ = ["LinearHead", "linear_heads"]


@dataclass(frozen=True)
class LinearHead:
    """The head a layer feeds: its module name and weights (``logits = a @ weight.T + bias``)."""

    module: str
    weight: np.ndarray  # [classes, units] float32
    bias: np.ndarray  # [classes] float32


@torch.inference_mode()
def linear_heads(model: nn.Module, layers: Iterable[str], example: Tensor, conv_pool: str = "mean",
                 token_pool: str = "cls") -> dict[str, LinearHead]:
    """The layers of ``layers`` whose pooled output some ``nn.Linear`` maps to the model's output."""
    model.eval()
    with recording(model, layers, conv_pool, token_pool) as store:  # type: ignore[arg-type]
        output = model(example)
    if not isinstance(output, Tensor) or output.ndim != 2:
        return {}
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = {}
    for layer, parts in store.items():
        pooled = parts[0] if parts else None
        if pooled is None or pooled.ndim != 2:
            continue
        for name, linear in linears:
            if linear.in_features != pooled.shape[1] or linear.out_features != output.shape[1]:
                continue
            if torch.allclose(linear(pooled.to(linear.weight.dtype)), output.float(), rtol=1e-4, atol=1e-4):
                bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
                found[layer] = LinearHead(name, linear.weight.detach().float().cpu().numpy(),
                                          bias.detach().float().cpu().numpy())
                break
    return found
