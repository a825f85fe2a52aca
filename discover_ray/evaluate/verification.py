"""Verification of a label by generated images (CoSy, Kopf et al., NeurIPS 2024).

A unit's label is checked against the unit itself: images generated from the label (a text-to-image model,
or the generated world's renderer, which certainly draws the concept) should activate the unit more than
a control set of probe images. Two scores per unit:

- AUC: the probability that a generated image activates the unit more than a control image (Mann–Whitney,
  ties counted half): 1 is a perfect label, 0.5 is chance;
- MAD: (mean on generated − mean on control) / std of control, how far the label's images move the unit.

A unit constant on the control set has no MAD (its std is 0): reported as dead, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VerificationScores", "verification_scores"]


@dataclass(frozen=True)
class VerificationScores:
    auc: Tensor  # [K]
    mad: Tensor  # [K] (0 where dead)
    dead: Tensor  # [K] bool: constant on the control images


def _auc(generated: Tensor, control: Tensor) -> Tensor:
    """Per column, P(generated > control) + ½ P(equal), from average ranks of the pooled values."""
    g, c = generated.shape[0], control.shape[0]
    pooled = torch.cat([generated, control]).double()
    order = pooled.argsort(dim=0, stable=True)
    sorted_values = pooled.gather(0, order)
    ranks = torch.empty_like(pooled)
    positions = torch.arange(1, g + c + 1, dtype=torch.float64)[:, None].expand_as(pooled)
    for column in range(pooled.shape[1]):  # average ranks over ties (columns are few: a layer's units)
        values, inverse, counts = torch.unique_consecutive(sorted_values[:, column], return_inverse=True,
                                                           return_counts=True)
        sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, positions[:, column])
        ranks[order[:, column], column] = (sums / counts)[inverse]
    rank_sum = ranks[:g].sum(dim=0)
    return (rank_sum - g * (g + 1) / 2) / (g * c)


def verification_scores(generated: Tensor, control: Tensor) -> VerificationScores:
    """AUC and MAD of each unit (column) from its activations on the label's images [G, K] and on the control
    images [C, K]."""
    if generated.ndim != 2 or control.ndim != 2 or generated.shape[1] != control.shape[1]:
        raise ValueError(f"need [G, K] and [C, K] activations, got {tuple(generated.shape)} and {tuple(control.shape)}")
    if not len(generated) or not len(control):
        raise ValueError("verification needs at least one generated and one control image")
    g, c = generated.double(), control.double()
    std = c.std(dim=0, unbiased=False)
    dead = std <= 1e-8 * (1 + c.abs().mean(dim=0))
    mad = torch.where(dead, torch.zeros_like(std), (g.mean(dim=0) - c.mean(dim=0)) / std.clamp_min(1e-300))
    return VerificationScores(_auc(g, c), mad, dead)
