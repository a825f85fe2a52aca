"""How many units of a layer are active per example: the DISCOVER sparsity statistic.

A unit is active when |a| > ε (a GELU is rarely exactly 0, so ≈ 98 % of a ViT's MLP units count as
active; an LWTA layer of U competitors passes exactly one unit per block: 1/U).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EPS", "Sparsity", "active_mask", "sparsity"]

EPS = 1e-4


@dataclass(frozen=True)
class Sparsity:
    mean: float  # mean over examples of the active fraction
    std: float
    units: int
    examples: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "units": self.units, "examples": self.examples}


def active_mask(activations: np.ndarray, eps: float = EPS) -> np.ndarray:
    """|a| > ε, elementwise."""
    return np.abs(activations) > eps


def sparsity(activations: np.ndarray, eps: float = EPS) -> Sparsity:
    """Mean ± std over examples (rows) of the fraction of active units (columns)."""
    if activations.ndim != 2 or activations.shape[0] == 0:
        raise ValueError(f"sparsity needs an [examples, units] matrix with at least one row, got {activations.shape}")
    fractions = active_mask(activations, eps).mean(axis=1)
    return Sparsity(float(fractions.mean()), float(fractions.std()), activations.shape[1], activations.shape[0])
