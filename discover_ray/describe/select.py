"""Describe-and-Dissect's choice among candidate concepts (methods.md §4.3, with §4.4's decisions).

Every candidate's generated images are shown to the neuron together. **TopK-Squared**: rank all generated
images by the neuron's activation (0 = highest; ties keep generation order), score a candidate by the mean
squared rank of its β best images (lower is better), sort, and give the best an ordinal of C (the number of
candidates) down to 1 for the worst — the reference code's N … 1, not the paper's N−1 … 0. **Image-Products**:
the mean CLIP cosine between the neuron's top probe images (those captioned) and the candidate's generated
images that are among the t most activating; −1 when it has none there. The final score is ordinal ×
Image-Products. A candidate with no images (its generator could not draw it) ranks last, whatever else holds
(the reference's "#candidates + 1" would have ranked it first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Selection", "image_products", "select_candidates", "topk_squared"]


def _ranks(activations: np.ndarray) -> np.ndarray:
    """0-based rank of each image by activation, highest first; ties in generation order."""
    order = np.argsort(-activations, kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def topk_squared(activations: np.ndarray, owner: np.ndarray, candidates: int, beta: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(mean squared rank of each candidate's β best images [C] (inf: no images), ordinal [C]: C for the best … 1)."""
    ranks = _ranks(np.asarray(activations, dtype=np.float64))
    score = np.full(candidates, np.inf)
    for c in range(candidates):
        mine = np.sort(ranks[owner == c])[:beta]
        if len(mine):
            score[c] = float(np.mean(mine.astype(np.float64) ** 2))
    order = np.argsort(score, kind="stable")  # ties: candidate order
    ordinal = np.empty(candidates, dtype=np.int64)
    ordinal[order] = candidates - np.arange(candidates)
    return score, ordinal


def image_products(top_embeddings: np.ndarray, generated_embeddings: np.ndarray, owner: np.ndarray,
                   activations: np.ndarray, candidates: int, top: int = 10) -> np.ndarray:
    """IP [C]: mean cosine of (top probe image, generated image of c among the ``top`` most activating); −1 if none."""
    in_top = _ranks(np.asarray(activations, dtype=np.float64)) < top
    cos = np.asarray(top_embeddings, np.float64) @ np.asarray(generated_embeddings, np.float64).T  # [n_top, G]
    out = np.full(candidates, -1.0)
    for c in range(candidates):
        mine = in_top & (owner == c)
        if mine.any() and cos.shape[0]:
            out[c] = float(cos[:, mine].mean())
    return out


@dataclass(frozen=True)
class Selection:
    """Per candidate: TopK-Squared score and ordinal, Image-Products, final score; ``order`` best first."""

    topk_score: np.ndarray
    ordinal: np.ndarray
    image_products: np.ndarray
    score: np.ndarray
    order: np.ndarray
    drawn: np.ndarray  # whether the candidate has images


def select_candidates(activations: np.ndarray, owner: np.ndarray, candidates: int, top_embeddings: np.ndarray,
                      generated_embeddings: np.ndarray, *, beta: int = 5, top: int = 10) -> Selection:
    """Score and order the candidates (``owner[g]``: the candidate of generated image g)."""
    owner = np.asarray(owner, dtype=np.int64)
    drawn = np.bincount(owner, minlength=candidates)[:candidates] > 0 if len(owner) else np.zeros(candidates, bool)
    topk, ordinal = topk_squared(activations, owner, candidates, beta)
    ip = image_products(top_embeddings, generated_embeddings, owner, activations, candidates, top)
    score = ordinal * ip
    key = np.where(drawn, score, -np.inf)
    order = np.argsort(-key, kind="stable")
    return Selection(topk, ordinal, ip, score, order, drawn)
