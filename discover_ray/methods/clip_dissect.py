"""CLIP-Dissect's five similarity functions as methods: each unit's top-k concepts of a concept set.

The work on a layer is cut along the concept axis (``reduce.concept_shard`` concepts per task); each task
runs the library's streaming kernels (``similarity.top_concepts``) on its range, on a GPU when the worker
has one, and the per-task top-k lists merge exactly into the global one (layer- and image-wide terms, the
soft-WPMI normaliser and the prior, still span every concept). When the layer is a classifier's output
layer over a concept set that holds its classes, one more task ranks every concept for every unit, for
the neuron-identification figures (top-1, top-5, mean rank, and the paired text cosine for CLIP concepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from discover_ray.evaluate import NeuronIdentification, concept_ranks, paired_embedding_cosine
from discover_ray.methods.base import LayerInputs, Method, MethodOutput, readonly_tensor
from discover_ray.methods.registry import register_method
from discover_ray.schema import label_table
from discover_ray.similarity import PARAMS, check_probe_size, merge_topk, top_concepts

__all__ = ["ClipDissectMethod", "Cos", "Cos3", "RankReorder", "SoftWpmi", "Wpmi"]


@dataclass(frozen=True)
class TopK:
    """Each unit's top-k among the concepts ``[start, stop)``."""

    start: int
    stop: int


@dataclass(frozen=True)
class Ranks:
    """The rank of each unit's true concept among all concepts."""


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipDissectMethod(Method):
    needs = frozenset({"activations", "concept_scores"})
    writes = "labels"

    def check(self, params: BaseModel, images: int) -> None:
        check_probe_size(self.name, images, **params.model_dump())

    def tasks(self, inputs: LayerInputs, params: BaseModel) -> list[Any]:
        assert inputs.scores is not None
        m, shard = inputs.scores.n_concepts, inputs.settings.concept_shard
        tasks: list[Any] = [TopK(s, min(s + shard, m)) for s in range(0, m, shard)]
        if inputs.truth is not None:
            tasks.append(Ranks())
        return tasks

    def run(self, task: Any, inputs: LayerInputs, params: BaseModel) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        assert inputs.scores is not None
        m = inputs.scores.n_concepts
        dtype = getattr(torch, inputs.settings.dtype)
        if isinstance(task, TopK):
            values, index = top_concepts(
                self.name, readonly_tensor(inputs.activations), k=min(inputs.settings.top_k, m), device=_device(), dtype=dtype,
                concept_range=(task.start, task.stop), **inputs.scores.kwargs(), **params.model_dump(),
            )
            return values.cpu().numpy(), index.cpu().numpy()
        values, index = top_concepts(self.name, readonly_tensor(inputs.activations), k=m, device=_device(), dtype=dtype,
                                     **inputs.scores.kwargs(), **params.model_dump())
        scores = torch.empty_like(values).scatter_(1, index, values)  # back to concept order
        assert inputs.truth is not None
        return concept_ranks(scores.cpu(), inputs.truth).numpy()

    def assemble(self, results: list[Any], inputs: LayerInputs, params: BaseModel) -> MethodOutput:
        assert inputs.scores is not None and inputs.concepts is not None
        k = min(inputs.settings.top_k, inputs.scores.n_concepts)
        tops = results[:-1] if inputs.truth is not None else results
        values = index = None
        for v, i in tops:
            v_t, i_t = torch.from_numpy(np.array(v)), torch.from_numpy(np.array(i))  # results may be read-only views
            values, index = (v_t, i_t) if values is None else merge_topk(values, index, v_t, i_t, k)
        assert values is not None and index is not None
        table = label_table(values.numpy(), index.numpy(), inputs.concepts.concepts, inputs.block_size)
        marker: dict[str, Any] = {}
        if inputs.truth is not None:
            ident: dict[str, Any] = NeuronIdentification(torch.from_numpy(np.array(results[-1]))).as_dict()
            if inputs.scores.concept_emb is not None:
                ident["text_cosine"] = paired_embedding_cosine(inputs.scores.concept_emb, index.numpy()[:, 0], inputs.truth)
            marker["identification"] = ident
        return MethodOutput(table, marker)


@register_method
class Cos(ClipDissectMethod):
    """Cosine similarity of a unit's activations and a concept's scores over the probe images."""

    name: ClassVar[str] = "cos"
    Params = PARAMS["cos"]


@register_method
class Cos3(ClipDissectMethod):
    """Cosine of the centred, cubed activations and scores."""

    name: ClassVar[str] = "cos3"
    Params = PARAMS["cos3"]


@register_method
class RankReorder(ClipDissectMethod):
    """How well a concept's ranking of a unit's top images reproduces its activations."""

    name: ClassVar[str] = "rank_reorder"
    Params = PARAMS["rank_reorder"]


@register_method
class Wpmi(ClipDissectMethod):
    """Weighted pointwise mutual information over each unit's top images."""

    name: ClassVar[str] = "wpmi"
    Params = PARAMS["wpmi"]


@register_method
class SoftWpmi(ClipDissectMethod):
    """Soft-WPMI: WPMI with rank-dependent inclusion probabilities (CLIP-Dissect's default)."""

    name: ClassVar[str] = "soft_wpmi"
    Params = PARAMS["soft_wpmi"]
