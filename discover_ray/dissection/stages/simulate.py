"""SIMULATE: score one labelling (a method's labels on one layer, over one concept source) by simulation.

The simulator is a concept source of the run (by default the labelling's own): its concept values s_j(x)
on the test images predict each unit's activations from its description alone (``evaluate.simulation``);
weighted explanations as Σ w_j s_j + b, single-label descriptions as s_1 of their top concept. Ablation
scorings run for layers that feed the model's linear head, when the probe set has labels. The dataset is
``simulation/{checkpoint}/{probe}/{layer}/{labelling}__by__{simulator concept set}__{encoder}/{key}``, a
``scores`` table (one row per unit and scoring) whose marker holds each scoring's layer summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from discover_ray.dissection.stages.reduce import ReduceStage
from discover_ray.evaluate.simulation import ablation_scores, correlation_scores, simulate, summarise
from discover_ray.explain.splits import Splits
from discover_ray.methods.base import readonly_tensor
from discover_ray.pipeline.stage import Output, TaskStage, stage_key
from discover_ray.record.heads import LinearHead
from discover_ray.schema import VERSIONS, Explanations, Labels, read_activations, score_table
from discover_ray.sources import PreparedSource
from discover_ray.store import Store

__all__ = ["SimulateStage", "SimulationInputs", "score_simulation"]


@dataclass
class SimulationInputs:
    units: list[str]
    activations: dict[str, np.ndarray]  # split → [n, K]
    values: dict[str, np.ndarray]  # split → [n, m] simulator values of the concepts the descriptions use
    concepts: list[list[int]]  # per unit: columns of ``values``
    weights: list[list[float]]
    bias: list[float] | None
    labels: dict[str, np.ndarray] | None  # split → class index per image, for ablation
    head: LinearHead | None
    scorings: list[str]
    temperature: float


def score_simulation(payload: SimulationInputs, task: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scoring of one labelling: scoring → (scores [K], dead [K])."""
    predicted = {s: simulate(readonly_tensor(payload.values[s]), payload.concepts, payload.weights, payload.bias)
                 for s in ("val", "test")}
    acts = {s: readonly_tensor(payload.activations[s]).double() for s in ("val", "test")}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for scoring in payload.scorings:
        if scoring == "correlation":
            r, dead = correlation_scores(acts["test"], predicted["test"])
        elif payload.head is not None and payload.labels is not None:
            splits = [(acts[s], predicted[s], readonly_tensor(payload.labels[s])) for s in ("val", "test")]
            r, dead = ablation_scores(splits[0], splits[1], readonly_tensor(payload.head.weight),
                                      readonly_tensor(payload.head.bias), mode=scoring.removeprefix("ablation_"),
                                      temperature=payload.temperature)
        else:
            continue
        out[scoring] = (r.numpy(), dead.numpy())
    return out


class SimulateStage(TaskStage):
    name = "SIMULATE"
    compute = staticmethod(score_simulation)
    resumes_parts = False  # the marker holds what assemble found

    def __init__(self, store: Store, labelling: ReduceStage, simulator: PreparedSource, splits: Splits,
                 scorings: list[str], temperature: float, head: LinearHead | None, labels: dict[str, int] | None,
                 probe_id: str):
        assert labelling.source is not None
        self.labelling, self.simulator, self.splits, self.head, self.labels = labelling, simulator, splits, head, labels
        self.scorings = [s for s in scorings if s == "correlation" or (head is not None and labels is not None)]
        self.temperature = temperature
        # the checkpoint id (in the labelling's key) names the head's weights
        key = stage_key("SIMULATE", "scores", VERSIONS["scores"], labels=labelling.dataset.key,
                        simulator=simulator.data_key(), splits=splits.id, scorings=self.scorings, temperature=temperature,
                        head=head.module if head else None)
        source = labelling.source
        where = (f"simulation/{labelling.model.checkpoint_id}/{probe_id}/{labelling.layer}/{labelling.method.name}__"
                 f"{source.concepts.id}__{source.encoder_id}__by__{simulator.concepts.id}__{simulator.encoder_id}")
        self.dataset = store.dataset(where, key, "scores")
        title = f"{labelling.model.label}/{labelling.layer}/{source.name} by {simulator.name}: {labelling.method.name}"
        super().__init__(title, [Output("scores", self.dataset, {0: None})],
                         [labelling.dataset.relative, labelling.activations.path, *simulator.data_paths()])
        self._marker: dict[str, Any] = {}

    def load(self) -> SimulationInputs:
        stage = self.labelling
        acts = read_activations(stage.activations.dataset.read(), stage.model.block_sizes[stage.layer])
        scores, keep = self.simulator.load(acts.image_ids)
        image_ids = [acts.image_ids[i] for i in keep]
        values_all = acts.values[keep]
        positions = self.splits.check(image_ids, need=("val", "test"))
        table = stage.dataset.read()
        lookup = {c: i for i, c in enumerate(self.simulator.concepts.concepts)}
        if stage.method.writes == "explanations":
            by_unit = Explanations(table).by_unit()
            terms = [by_unit.get(u, ([], 0.0, 0.0, True)) for u in acts.units]
            names = [[c for c, _ in t[0]] for t in terms]
            weights = [[w for _, w in t[0]] for t in terms]
            bias: list[float] | None = [t[1] for t in terms]
        else:
            top = Labels(table).top()
            names = [[top[u][0]] if u in top else [] for u in acts.units]
            weights = [[1.0] * len(n) for n in names]
            bias = None
        used = sorted({lookup[c] for row in names for c in row})
        column = {c: i for i, c in enumerate(used)}
        concepts = [[column[lookup[c]] for c in row] for row in names]
        used_array = np.asarray(used, dtype=np.int64)
        values = {s: scores.values(positions[s], used_array) if len(used) else np.zeros((len(positions[s]), 0), np.float32)
                  for s in ("val", "test")}
        labels = None
        if self.labels is not None and self.head is not None:
            labels = {s: np.asarray([self.labels[image_ids[i]] for i in positions[s]], np.int64) for s in ("val", "test")}
        return SimulationInputs(acts.units, {s: values_all[positions[s]] for s in ("val", "test")}, values, concepts,
                                weights, bias, labels, self.head, self.scorings, self.temperature)

    def tasks(self, part: int, payload: SimulationInputs) -> list[Any]:
        return [None]

    def assemble(self, part: int, results: list[Any], payload: SimulationInputs) -> dict[str, pa.Table]:
        scored = results[0]
        tables = [score_table(payload.units, scoring, r, dead) for scoring, (r, dead) in scored.items()]
        self._marker = {"scorings": {scoring: summarise(torch.tensor(np.asarray(r)), torch.tensor(np.asarray(d))).as_dict()
                                     for scoring, (r, d) in scored.items()},
                        "test_images": len(payload.activations["test"])}
        return {"scores": pa.concat_tables(tables) if tables else score_table([], "correlation", [])}

    def marker(self, output: Output) -> dict[str, Any]:
        return {"simulator": self.simulator.name, **self._marker}

    def counts(self) -> dict[str, Any]:
        return {"scorings": list(self._marker.get("scorings", {}))}
