"""Evaluation of neuron descriptions where the truth is known: final-layer neuron identification.

A classifier's output unit i is "about" class i, so a dissection of the final layer can be scored:
where does the unit's true class name rank among all concepts, and how close (in a text embedding) is
the predicted description to the true one (methods.md §1.4; the cosine is always the paired one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from discover_ray.concepts import ConceptSet

__all__ = [
    "NeuronIdentification", "TextEncoder", "concept_ranks", "neuron_identification", "paired_embedding_cosine",
    "paired_text_cosine",
]


class TextEncoder(Protocol):
    """Anything that turns texts into embedding rows (normalised or not)."""

    def encode_text(self, texts: Sequence[str]) -> Tensor: ...


@dataclass(frozen=True)
class NeuronIdentification:
    """Rank of each unit's true concept (1 = the unit's top description)."""

    ranks: Tensor  # [K], int64

    @property
    def top1(self) -> float:
        return float((self.ranks <= 1).float().mean())

    @property
    def top5(self) -> float:
        return float((self.ranks <= 5).float().mean())

    @property
    def mean_rank(self) -> float:
        return float(self.ranks.double().mean())

    @property
    def median_rank(self) -> int:
        """sorted(ranks)[K // 2], the reference notebooks' convention."""
        return int(self.ranks.sort().values[len(self.ranks) // 2])

    def as_dict(self) -> dict[str, float | int]:
        return {
            "units": len(self.ranks),
            "top1": self.top1,
            "top5": self.top5,
            "mean_rank": self.mean_rank,
            "median_rank": self.median_rank,
        }


def concept_ranks(scores: Tensor, truth: Sequence[int] | Tensor) -> Tensor:
    """1-based rank of concept ``truth[k]`` in row k of S[K, M], with the lowest-index tie rule."""
    truth_t = torch.as_tensor(truth, dtype=torch.long, device=scores.device)
    if scores.ndim != 2 or truth_t.shape != (scores.shape[0],):
        raise ValueError(
            f"need S[K, M] and one true concept per unit; got {tuple(scores.shape)} and {tuple(truth_t.shape)}"
        )
    if truth_t.numel() and (truth_t.min() < 0 or truth_t.max() >= scores.shape[1]):
        raise ValueError(f"true concept indices must lie in [0, {scores.shape[1]})")
    true_score = scores.gather(1, truth_t[:, None])
    better = (scores > true_score).sum(dim=1)
    columns = torch.arange(scores.shape[1], device=scores.device)
    tied_before = ((scores == true_score) & (columns[None, :] < truth_t[:, None])).sum(dim=1)
    return (better + tied_before + 1).cpu()


def neuron_identification(
    scores: Tensor, truth: Sequence[int] | Sequence[str] | Tensor, concepts: ConceptSet | None = None
) -> NeuronIdentification:
    """Top-1 / top-5 accuracy and mean / median rank of the true concepts of a layer's units.

    ``truth`` holds each unit's true concept: indices into the columns of ``scores``, or, with
    ``concepts`` (the concept set the columns come from), class names, which must all be in it.
    """
    if concepts is not None:
        if len(concepts) != scores.shape[1]:
            raise ValueError(f"scores have {scores.shape[1]} concept columns but the concept set has {len(concepts)}")
        truth = concepts.index_of([str(name) for name in truth])
    return NeuronIdentification(concept_ranks(scores, truth))


def paired_text_cosine(predicted: Sequence[str], truth: Sequence[str], encoder: TextEncoder) -> float:
    """Mean over units of cos(embed(predicted_i), embed(truth_i)): matched pairs only, never all pairs."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions but {len(truth)} true descriptions")
    if not predicted:
        raise ValueError("no descriptions to compare")
    a = torch.nn.functional.normalize(encoder.encode_text(list(predicted)).double(), dim=1)
    b = torch.nn.functional.normalize(encoder.encode_text(list(truth)).double(), dim=1)
    return float((a * b).sum(dim=1).mean())


def paired_embedding_cosine(concept_emb: np.ndarray, predicted: Sequence[int], truth: Sequence[int]) -> float:
    """``paired_text_cosine`` when both descriptions are concepts of one embedded set: the mean over units
    of cos(emb[predicted_i], emb[truth_i]), in the concept encoder's own text space, matched pairs only."""
    if len(predicted) != len(truth) or not len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} true concepts")
    emb = concept_emb / np.linalg.norm(concept_emb, axis=1, keepdims=True).clip(1e-12)
    return float((emb[np.asarray(predicted, dtype=np.int64)] * emb[np.asarray(truth, dtype=np.int64)]).sum(axis=1).mean())
