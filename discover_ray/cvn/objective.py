"""The CVN training objective (the ELBO) and stochastic prediction.

Per batch: loss = cross-entropy + kl_weight · Σ over LWTA layers of KL(q‖Uniform(U)), where q = softmax
of a block's pre-activations (methods.md §2.1, §5). Prediction averages the logits of several stochastic
passes (the paper's evaluation); a network without LWTA layers is deterministic and needs one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discover_ray.cvn.lwta import collect_kl, lwta_modules

__all__ = ["Objective", "elbo_loss", "predict"]


@dataclass
class Objective:
    loss: Tensor
    ce: Tensor
    kl: Tensor


def elbo_loss(logits: Tensor, targets: Tensor, model: nn.Module, kl_weight: float) -> Objective:
    """CE + kl_weight · KL over the LWTA layers of the forward pass that produced ``logits``.

    Collecting the KL also resets each layer's running sum, so call this once per forward pass.
    """
    ce = F.cross_entropy(logits.float(), targets)
    kl = collect_kl(model).to(ce.device) if lwta_modules(model) else ce.new_zeros(())
    return Objective(ce + kl_weight * kl, ce.detach(), kl.detach())


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, samples: int) -> Tensor:
    """Logits averaged over ``samples`` stochastic passes (one pass for a model without LWTA layers)."""
    passes = samples if lwta_modules(model) else 1
    total = model(x).float()
    for _ in range(passes - 1):
        total += model(x).float()
    return total / passes
