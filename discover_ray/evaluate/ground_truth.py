"""Hidden units against the ground truth of a generated world.

Where every probe image's true concepts are known (``world.truth_matrix``), the concept that best
explains a unit is the one whose presence its activation tracks most closely: the largest Pearson
correlation between the unit's activations and the concept's 0/1 indicator over the probe set. A
dissection agrees with the truth on a unit when its top-1 label is that concept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["agreement", "best_truth_concepts"]


def best_truth_concepts(activations: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per unit (column of ``activations`` [N, K]) the index of the concept (column of ``truth`` [N, M]) whose
    indicator correlates most with it; constant units and concepts correlate 0."""
    a = activations.astype(np.float64) - activations.mean(axis=0)
    t = truth.astype(np.float64) - truth.mean(axis=0)
    norm = np.linalg.norm(a, axis=0)[:, None] * np.linalg.norm(t, axis=0)[None, :]
    corr = np.divide(a.T @ t, norm, out=np.zeros((a.shape[1], t.shape[1])), where=norm > 0)
    return corr.argmax(axis=1)


def agreement(predicted: Sequence[str | None], truth_names: Sequence[str], best: np.ndarray) -> float:
    """Fraction of units whose predicted top-1 concept is the ground truth's best concept."""
    if len(predicted) != len(best):
        raise ValueError(f"{len(predicted)} predicted labels for {len(best)} units")
    hits = sum(1 for p, b in zip(predicted, best, strict=True) if p == truth_names[int(b)])
    return hits / len(best) if len(best) else 0.0
