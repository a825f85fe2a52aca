"""REDUCE: concept labels per unit, as Ray tasks over shards of the concept axis, merged to a global top-k.

Each task runs the library's streaming kernels (``similarity.top_concepts``) on its concept range, on a
GPU when the cluster has one. Layer- and image-wide terms (the soft-WPMI softmax normaliser, the prior
over the layer) still span every concept, so the merged result equals a single call over all concepts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from discover_ray.evaluate import concept_ranks
from discover_ray.similarity import merge_topk, top_concepts
from discover_ray.stages.cluster import Resources


@dataclass(frozen=True)
class ConceptSource:
    """P as a matrix [N, M] (label concepts) or as image [N, d] and concept [M, d] embeddings."""

    scores: np.ndarray | None = None
    image_emb: np.ndarray | None = None
    concept_emb: np.ndarray | None = None

    @property
    def n_concepts(self) -> int:
        return self.scores.shape[1] if self.scores is not None else self.concept_emb.shape[0]

    def kwargs(self) -> dict[str, torch.Tensor]:
        if self.scores is not None:
            return {"concept_scores": _tensor(self.scores)}
        return {"image_emb": _tensor(self.image_emb), "concept_emb": _tensor(self.concept_emb)}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@ray.remote
def _top_concepts_task(
    method: str, activations: np.ndarray, source: ConceptSource, k: int, concept_range: tuple[int, int],
    params: dict[str, Any], dtype: str, threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(threads)
    values, index = top_concepts(
        method, _tensor(activations), k=k, device=_device(), dtype=getattr(torch, dtype),
        concept_range=concept_range, **source.kwargs(), **params,
    )
    return values.cpu().numpy(), index.cpu().numpy()


@ray.remote
def _ranks_task(
    method: str, activations: np.ndarray, source: ConceptSource, truth: list[int], params: dict[str, Any], dtype: str,
    threads: int,
) -> np.ndarray:
    """Rank of each unit's true concept among all concepts (for neuron identification)."""
    torch.set_num_threads(threads)
    m = source.n_concepts
    values, index = top_concepts(
        method, _tensor(activations), k=m, device=_device(), dtype=getattr(torch, dtype),
        **source.kwargs(), **params,
    )
    scores = torch.empty_like(values).scatter_(1, index, values)  # back to concept order
    return concept_ranks(scores.cpu(), truth).numpy()


def _options(resources: Resources) -> dict[str, float]:
    return {"num_gpus": 1, "num_cpus": 1} if resources.has_gpu else {"num_cpus": 1}


def reduce_layer(
    activations: np.ndarray,
    source: ConceptSource,
    methods: list[str],
    params: dict[str, dict[str, Any]],
    k: int,
    concept_shard: int,
    dtype: str,
    resources: Resources,
    threads: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{method: (values[K, k], indices[K, k])}``; every (method, concept shard) is one task."""
    a_ref, s_ref = ray.put(activations), ray.put(source)
    m = source.n_concepts
    k = min(k, m)
    ranges = [(s, min(s + concept_shard, m)) for s in range(0, m, concept_shard)]
    options = _options(resources)
    futures = {
        method: [
            _top_concepts_task.options(**options).remote(method, a_ref, s_ref, k, r, params.get(method, {}), dtype, threads)
            for r in ranges
        ]
        for method in methods
    }
    results = {}
    for method, parts in futures.items():
        values = index = None
        for v, i in ray.get(parts):
            v_t, i_t = torch.from_numpy(np.array(v)), torch.from_numpy(np.array(i))  # results are read-only views
            values, index = (v_t, i_t) if values is None else merge_topk(values, index, v_t, i_t, k)
        results[method] = (values.numpy(), index.numpy())
    return results


def identification_ranks(
    activations: np.ndarray, source: ConceptSource, methods: list[str], params: dict[str, dict[str, Any]],
    truth: list[int], dtype: str, resources: Resources, threads: int,
) -> dict[str, np.ndarray]:
    """Per method, the rank of each unit's true concept (1 = its top label)."""
    a_ref, s_ref = ray.put(activations), ray.put(source)
    options = _options(resources)
    futures = {
        method: _ranks_task.options(**options).remote(method, a_ref, s_ref, truth, params.get(method, {}), dtype, threads)
        for method in methods
    }
    return {method: ray.get(f) for method, f in futures.items()}


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over an array that may be a read-only object-store view; the kernels only read it, so no copy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
