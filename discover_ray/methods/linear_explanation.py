"""Linear Explanations as a method: each unit explained as Σ w_j c_j(x) + b over at most 10 concepts.

The concept values C come from the concept source (label indicators, or σ(a·(cos + b)) of a calibrated
CLIP / SigLIP source); the fit reads only the train and validation images of the run's split, never test.
A layer's work is cut into chunks of neurons (``neuron_chunk``); the default solvers make a neuron's
explanation independent of its chunk-mates, so the chunking does not change the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from discover_ray.config_files import Strict
from discover_ray.errors import ExplainInputError
from discover_ray.methods.base import LayerInputs, Method, MethodOutput, readonly_tensor
from discover_ray.methods.registry import register_method
from discover_ray.schema import explanation_table, unit_names

__all__ = ["LinearExplanation", "LinearExplanationParams"]


class LinearExplanationParams(Strict):
    """methods.md §3.4–3.5 defaults; ``ranking``/``fit`` select the reference's solvers for parity."""

    max_length: int = Field(10, ge=1)
    tolerance: float = Field(0.02, ge=0)
    width: int = Field(10, ge=1)
    glm_lambda: float = Field(0.05, gt=0)
    alpha: float = Field(0.99, gt=0, le=1)
    ranking: Literal["auto", "fista", "saga"] = "auto"
    fit: Literal["lstsq", "adam"] = "lstsq"
    greedy: bool = Field(True, description="false: the no-greedy-search ablation (top 5 ranked concepts fitted once)")
    neuron_chunk: int = Field(4096, ge=1, description="neurons per task")


@dataclass(frozen=True)
class Chunk:
    """Neurons ``[start, stop)`` of a layer."""

    start: int
    stop: int


@register_method
class LinearExplanation(Method):
    name: ClassVar[str] = "linear_explanation"
    Params = LinearExplanationParams
    needs = frozenset({"activations", "concept_scores", "splits"})
    writes = "explanations"
    reads_concept_values = True

    def check(self, params: Any, images: int) -> None:
        if images < 10:
            raise ExplainInputError(f"linear_explanation needs train and validation images; the probe set has {images}")

    def validate(self, inputs: LayerInputs, params: Any) -> None:
        where = f"{inputs.model}/{inputs.layer}"
        if inputs.splits is None:
            raise ExplainInputError(f"{where}: linear_explanation needs the run's train / val split")

    def tasks(self, inputs: LayerInputs, params: Any) -> list[Any]:
        step = params.neuron_chunk
        return [Chunk(s, min(s + step, inputs.units)) for s in range(0, inputs.units, step)]

    def run(self, task: Chunk, inputs: LayerInputs, params: Any) -> dict[str, np.ndarray]:
        from discover_ray.explain import linear_explanations

        assert inputs.scores is not None and inputs.splits is not None
        train, val = inputs.splits["train"], inputs.splits["val"]
        rows = np.concatenate([train, val])  # the fit is never handed a test image
        C = inputs.scores.values(rows)
        A = readonly_tensor(inputs.activations)[torch.from_numpy(rows), task.start : task.stop]
        bad = ~torch.isfinite(A)
        if bad.any():  # read here, where the task runs (the driver never loads the layer)
            units = (task.start + torch.nonzero(bad.any(dim=0)).flatten()).tolist()
            raise ExplainInputError(
                f"{inputs.model}/{inputs.layer}: {int(bad.sum())} activations are NaN or infinite (units {units[:8]}); "
                "the recorded layer cannot be explained; check the model (e.g. its numerics in this dtype) and record it again")
        found = linear_explanations(
            A, torch.from_numpy(C), train=torch.arange(len(train)), val=torch.arange(len(train), len(rows)),
            max_length=params.max_length, tolerance=params.tolerance, width=params.width, glm_lambda=params.glm_lambda,
            alpha=params.alpha, ranking=params.ranking, fit=params.fit, greedy=params.greedy, seed=inputs.settings.seed)
        return {"concepts": found.concepts.cpu().numpy(), "weights": found.weights.cpu().numpy(),
                "bias": found.bias.cpu().numpy(), "val_correlation": found.val_correlation.cpu().numpy(),
                "dead": found.dead.cpu().numpy(), "kept": int(found.kept.sum())}

    def assemble(self, results: list[Any], inputs: LayerInputs, params: Any) -> MethodOutput:
        assert inputs.concepts is not None
        concepts = np.concatenate([np.asarray(r["concepts"]) for r in results])
        weights = np.concatenate([np.asarray(r["weights"]) for r in results])
        bias = np.concatenate([np.asarray(r["bias"]) for r in results])
        val_r = np.concatenate([np.asarray(r["val_correlation"]) for r in results])
        dead = np.concatenate([np.asarray(r["dead"]) for r in results]).astype(bool)
        index = [[int(i) for i in row if i >= 0] for row in concepts]
        terms = [[float(w) for i, w in zip(row, ws, strict=True) if i >= 0] for row, ws in zip(concepts, weights, strict=True)]
        names = [[inputs.concepts[i] for i in row] for row in index]
        table = explanation_table(unit_names(inputs.units, inputs.block_size), names, index, terms, bias.tolist(),
                                  val_r.tolist(), dead.tolist(), inputs.block_size)
        live = ~dead
        lengths = np.array([len(row) for row in index])
        marker = {"dead_units": int(dead.sum()), "kept_concepts": int(results[0]["kept"]) if results else 0,
                  "mean_val_correlation": float(val_r[live].mean()) if live.any() else None,
                  "mean_length": float(lengths[live].mean()) if live.any() else None,
                  "splits": {k: int(len(v)) for k, v in inputs.splits.items()} if inputs.splits else {}}
        return MethodOutput(table, marker)
