"""CLIP-Dissect similarity functions: cos, cos3, rank_reorder, wpmi, soft_wpmi (methods.md §1.2).

``similarity_matrix`` returns the full S[K, M]; ``top_concepts`` returns the same top-k per neuron while
streaming over concept blocks (and image blocks for the softmax normaliser), so its memory is bounded by
``memory_budget`` rather than by N×M or K×M. Both run the same kernels, on CPU or CUDA, in float32 or
float64, deterministically; ties between concepts go to the lower concept index.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from discover_ray.similarity._kernels import (
    Cos3Kernel,
    CosKernel,
    Kernel,
    RankReorderKernel,
    WpmiKernel,
    rank_reorder_permutations,
    rank_reorder_top_n,
)
from discover_ray.similarity._params import METHODS, PARAMS, resolve_params
from discover_ray.similarity._sources import ConceptScores, EmbeddingScores
from discover_ray.similarity._topk import merge_topk, top_images, topk_lowest_index

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "METHODS",
    "PARAMS",
    "check_probe_size",
    "merge_topk",
    "rank_reorder_permutations",
    "rank_reorder_top_n",
    "resolve_params",
    "similarity_matrix",
    "top_concepts",
    "top_images",
    "topk_lowest_index",
]

DEFAULT_MEMORY_BUDGET = 128 * 2**20
"""Bytes of working memory a call may use for its blocks, on top of its inputs and its output."""

DEFAULT_IMAGE_CHUNK = 8192


def similarity_matrix(
    method: str,
    activations: Tensor,
    concept_scores: Tensor,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    **params: Any,
) -> Tensor:
    """S[K, M]: how well each concept describes each neuron (higher is better).

    Args:
        method: one of ``METHODS``.
        activations: A[N, K], one pooled activation per probe image and neuron.
        concept_scores: P[N, M], image–concept similarity (e.g. CLIP cosine, or one-hot labels).
        device: where to compute (default: the activations' device); the result lives there.
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        **params: the method's hyperparameters; defaults as in methods.md §1.2 (see ``PARAMS``).
    """
    kernel, n_concepts = _build(method, activations, concept_scores, None, None, 1, device, dtype, None, None, params)
    return _all_scores(kernel, kernel.default_concept_chunk(), 0, n_concepts)


def _all_scores(kernel: Kernel, chunk: int, first: int, last: int) -> Tensor:
    """S[:, first:last], each concept block written into the result as it comes (no list of blocks to join)."""
    scores = None
    for start in range(first, last, chunk):
        stop = min(start + chunk, last)
        block = kernel.score(start, stop)
        if scores is None:
            scores = torch.empty((block.shape[0], last - first), dtype=block.dtype, device=block.device)
        scores[:, start - first : stop - first] = block
        del block
    assert scores is not None
    return scores


def top_concepts(
    method: str,
    activations: Tensor,
    *,
    concept_scores: Tensor | None = None,
    image_emb: Tensor | None = None,
    concept_emb: Tensor | None = None,
    k: int = 5,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    concept_chunk: int | None = None,
    image_chunk: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    concept_range: tuple[int, int] | None = None,
    **params: Any,
) -> tuple[Tensor, Tensor]:
    """Each neuron's ``k`` best concepts: ``(values[K, k], indices[K, k])``, best first.

    Equal to ``similarity_matrix(...)`` followed by a top-k with lowest-index tie-breaking, but never
    holds N×M or K×M. Give P either as ``concept_scores`` [N, M] or implicitly as
    ``image_emb`` [N, d] @ ``concept_emb`` [M, d]ᵀ (rows are L2-normalised here).

    Args:
        concept_chunk: concepts per block (default: sized from ``memory_budget`` and the CPU cache).
        image_chunk: images per block where a pass runs over images (softmax normaliser, cos).
        memory_budget: bytes of block memory to size the default chunks by.
        concept_range: ``(start, stop)`` scores only these concepts (indices stay global), so that
            shards of a large concept set can run as separate tasks and be merged with ``merge_topk``.
            Layer- and image-wide quantities (the softmax normaliser, the prior) still span every concept.
    """
    kernel, n_concepts = _build(
        method,
        activations,
        concept_scores,
        image_emb,
        concept_emb,
        k,
        device,
        dtype,
        image_chunk,
        memory_budget,
        params,
    )
    chunk = concept_chunk or kernel.default_concept_chunk()
    if chunk < 1:
        raise ValueError(f"concept_chunk must be at least 1, got {chunk}")
    first, last = concept_range or (0, n_concepts)
    if not 0 <= first < last <= n_concepts:
        raise ValueError(f"concept_range {concept_range} must satisfy 0 <= start < stop <= {n_concepts}")
    if 2 * k >= last - first:
        # Most of the range is kept (a full ranking, say): merging per-block lists would re-sort lists of
        # up to K×k entries once per block, with several such arrays alive at once. Scoring the range
        # into one K×(stop − start) array and selecting once gives the same lists for less.
        values, indices = topk_lowest_index(_all_scores(kernel, chunk, first, last), min(k, last - first))
        return values, indices.add_(first)
    values = indices = None
    for start in range(first, last, chunk):
        stop = min(start + chunk, last)
        block_values, block_index = topk_lowest_index(kernel.score(start, stop), min(k, stop - start))
        block_index += start
        if values is None:
            values, indices = block_values, block_index
        else:
            values, indices = merge_topk(values, indices, block_values, block_index, k)
    return values, indices


def _build(
    method: str,
    activations: Tensor,
    concept_scores: Tensor | None,
    image_emb: Tensor | None,
    concept_emb: Tensor | None,
    k: int,
    device: str | torch.device | None,
    dtype: torch.dtype,
    image_chunk: int | None,
    memory_budget: int | None,
    params: dict[str, Any],
) -> tuple[Kernel, int]:
    resolved = resolve_params(method, params)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if activations.ndim != 2:
        raise ValueError(f"activations must be 2-D [N images, K neurons], got shape {tuple(activations.shape)}")
    compute = torch.device(device) if device is not None else activations.device
    n_images = activations.shape[0]
    if (concept_scores is None) == (image_emb is None and concept_emb is None):
        raise ValueError("give either concept_scores [N, M] or both image_emb [N, d] and concept_emb [M, d]")
    if concept_scores is not None:
        _check_matrix("concept_scores", concept_scores, n_images)
        source: ConceptScores | EmbeddingScores = ConceptScores(concept_scores, compute, dtype)
    else:
        if image_emb is None or concept_emb is None:
            raise ValueError("image_emb and concept_emb must be given together")
        _check_matrix("image_emb", image_emb, n_images)
        _check_matrix("concept_emb", concept_emb, None)
        if image_emb.shape[1] != concept_emb.shape[1]:
            raise ValueError(
                f"image_emb has width {image_emb.shape[1]} but concept_emb has width {concept_emb.shape[1]}; "
                "both must come from the same encoder"
            )
        source = EmbeddingScores(image_emb, concept_emb, compute, dtype)
    n_concepts = source.n_concepts
    if not _all_finite(activations):
        raise ValueError("activations contain NaN or infinite values")
    if not 1 <= k <= n_concepts:
        raise ValueError(f"k={k} concepts requested but the concept set has {n_concepts}; use 1 <= k <= {n_concepts}")
    needed = _images_needed(method, resolved, n_images)
    if n_images < needed:
        raise ValueError(
            f"{method} needs at least {needed} probe images per neuron but got N={n_images}; "
            "use a larger probe set or lower its top_k / top_fraction"
        )
    a = activations.to(device=compute, dtype=dtype)
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    rows = image_chunk or DEFAULT_IMAGE_CHUNK
    if rows < 1:
        raise ValueError(f"image_chunk must be at least 1, got {rows}")
    if method == "cos":
        return CosKernel(a, source, resolved, budget, rows), n_concepts
    if method == "cos3":
        return Cos3Kernel(a, source, resolved, budget), n_concepts
    if method == "rank_reorder":
        return RankReorderKernel(a, source, resolved, budget), n_concepts
    return WpmiKernel(a, source, resolved, budget, rows), n_concepts


def check_probe_size(method: str, n_images: int, **params: Any) -> None:
    """Raise before any work if ``method`` (with ``params``) cannot run on ``n_images`` probe images."""
    needed = _images_needed(method, resolve_params(method, params), n_images)
    if n_images < needed:
        raise ValueError(
            f"{method} needs at least {needed} probe images per neuron but the probe set has {n_images}; "
            "use a larger probe set or lower the method's top_k / top_fraction (reduce.params)"
        )


def _images_needed(method: str, params: Any, n_images: int) -> int:
    if method in ("wpmi", "soft_wpmi"):
        return params.top_k
    if method == "rank_reorder" and rank_reorder_top_n(n_images, params.top_fraction) < 1:
        return int(-(-1 // params.top_fraction))  # ceil(1 / top_fraction)
    return 1


def _check_matrix(name: str, x: Tensor, rows: int | None) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} rows but activations have {rows} images; rows must align by image")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    if not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values")


def _all_finite(x: Tensor, block_elements: int = 1 << 22) -> bool:
    """NaN and ±inf propagate into a plain sum; only if that sum overflows, check block by block.

    Unlike ``torch.isfinite(x).all()`` this needs no temporary as large as ``x``.
    """
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return True
    flat = x.reshape(-1) if x.is_contiguous() else x.flatten()
    return all(bool(torch.isfinite(flat[s : s + block_elements]).all()) for s in range(0, flat.numel(), block_elements))
