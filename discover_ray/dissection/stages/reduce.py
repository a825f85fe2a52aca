"""REDUCE: one labelling method on one recorded layer (and one concept source, for methods that rank concepts).

The stage reads the layer's image ids and the source's P once (shared by every method on the same layer
and source), aligns their rows by image id (images unreadable for either are left out), asks the method
for its tasks and runs them through the executor; the method assembles its table. The activations
themselves are streamed: each task reads them from the store where it runs (``StoredActivations``),
so the driver never holds a layer. The dataset is
``labels/{checkpoint}/{probe}/{layer}/{method}__{concept set}__{encoder}/{key}``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from discover_ray.dissection.models import PreparedModel
from discover_ray.dissection.stored_activations import StoredActivations
from discover_ray.explain.splits import Splits
from discover_ray.methods import LayerInputs, Method, ReduceSettings
from discover_ray.pipeline.stage import Output, TaskStage, stage_key
from discover_ray.schema import VERSIONS
from discover_ray.sources import PreparedSource
from discover_ray.store import Store

__all__ = ["ExplainStage", "ReduceStage", "run_method_task", "stage_for"]


def run_method_task(payload: LayerInputs, task: tuple[Method, BaseModel, Any]) -> Any:
    """One task of a method (shipped to a worker by reference with the method and its parameters)."""
    method, params, work = task
    return method.run(work, payload, params)


class ReduceStage(TaskStage):
    name = "REDUCE"
    resumes_parts = False  # the marker holds what assemble found (images, units, identification)
    compute = staticmethod(run_method_task)

    def __init__(self, store: Store, model: PreparedModel, layer: str, activations: Output, method: Method,
                 params: BaseModel, source: PreparedSource | None, settings: ReduceSettings, classes: tuple[str, ...],
                 probe_id: str, probe: Any = None, splits: Splits | None = None):
        self.model, self.layer, self.activations, self.method, self.params = model, layer, activations, method, params
        self.source, self.settings, self.classes, self.probe, self.splits = source, settings, classes, probe, splits
        uses_splits = "splits" in method.needs
        if uses_splits and splits is None:
            raise ValueError(f"method {method.name!r} needs the run's splits")
        concept_set = source.concepts.id if source else "none"
        encoder = source.encoder_id if source else "none"
        key = stage_key("REDUCE", method.writes, VERSIONS[method.writes], method=method.name,
                        params=params.model_dump(mode="json"), activations=activations.dataset.key,
                        source=source.data_key() if source else None, top_k=settings.top_k, dtype=settings.dtype,
                        seed=settings.seed, **({"splits": splits.id} if uses_splits and splits else {}), **self.extra_key())
        self.dataset = store.dataset(f"labels/{model.checkpoint_id}/{probe_id}/{layer}/{method.name}__{concept_set}__{encoder}",
                                     key, method.writes)
        self.expected = self._expected_rows()
        title = f"{model.label}/{layer}/{source.name if source else '-'}: {method.name}"
        super().__init__(title, [Output("labels", self.dataset, {0: self.expected})],
                         [activations.path, *(source.data_paths() if source else [])])
        self._marker: dict[str, Any] = {}

    @classmethod
    def plan_kwargs(cls, config: Any, sources: list[PreparedSource], model: PreparedModel, layer: str,
                    params: BaseModel) -> dict[str, Any]:
        """What else a stage of this kind needs from the run's config when it is planned (none for REDUCE)."""
        return {}

    def extra_key(self) -> dict[str, Any]:
        """What else changes this stage's output (a subclass's backends, its scorer), for its key."""
        return {}

    def _expected_rows(self) -> int | None:
        if self.method.writes != "labels" or self.source is None:
            return None
        return self.model.units[self.layer] * min(self.settings.top_k, len(self.source.concepts))

    def payload_key(self) -> tuple[str, ...]:
        return (self.activations.path, self.source.name if self.source else "")

    def load(self) -> LayerInputs:
        """The layer's image ids, P for them, and a reference to the activations that tasks read themselves."""
        dataset = self.activations.dataset
        image_ids = dataset.read(columns=["image_id"])["image_id"].to_pylist()
        stored = StoredActivations(dataset.store.root, dataset.relative, self.model.units[self.layer], len(image_ids))
        inputs = LayerInputs(self.model.label, self.layer, image_ids, stored, self.model.block_sizes[self.layer],
                             self.settings, probe=self.probe)
        if self.source is not None:
            scores, keep = self.source.load(image_ids)
            inputs.image_ids = [image_ids[i] for i in keep]
            if len(keep) != len(image_ids):
                inputs.values = replace(stored, rows=np.asarray(keep, dtype=np.int64))
            inputs.concepts, inputs.scores = self.source.concepts, scores
            inputs.truth = self._truth(inputs.units)
        if self.splits is not None:
            inputs.splits = self.splits.positions(inputs.image_ids)
        return inputs

    def _truth(self, units: int) -> list[int] | None:
        """Each output unit's own class, when a layer has one unit per class and the concepts name them all."""
        assert self.source is not None
        if units != len(self.classes) or not set(self.classes) <= set(self.source.concepts.concepts):
            return None
        return self.source.concepts.index_of(list(self.classes))

    def tasks(self, part: int, payload: LayerInputs) -> list[Any]:
        if "splits" in self.method.needs:
            assert self.splits is not None
            self.splits.check(payload.image_ids)  # an empty train or val split: an error naming it, before any task
        self.method.validate(payload, self.params)
        return [(self.method, self.params, task) for task in self.method.tasks(payload, self.params)]

    def follow_up(self, part: int, results: list[Any], payload: LayerInputs) -> list[Any]:
        return [(self.method, self.params, task) for task in self.method.follow_up(results, payload, self.params)]

    def assemble(self, part: int, results: list[Any], payload: LayerInputs) -> dict[str, pa.Table]:
        output = self.method.assemble(results, payload, self.params)
        self._marker = {**output.marker, "images": len(payload.image_ids), "units": payload.units}
        return {"labels": output.table}

    def marker(self, output: Output) -> dict[str, Any]:
        return {"method": self.method.name, "params": self.params.model_dump(mode="json"), **self._marker}

    def counts(self) -> dict[str, Any]:
        return {k: v for k, v in self._marker.items() if k in ("images", "units")} | (
            {"concepts": len(self.source.concepts)} if self.source else {})


class ExplainStage(ReduceStage):
    """EXPLAIN: a method that writes weighted explanations (Linear Explanations) on one layer; the same work as
    REDUCE (neuron chunks as tasks, on a GPU when the cluster has one), named for what it writes."""

    name = "EXPLAIN"


#: the stage that runs a method, by the table it writes (REDUCE for the rest)
STAGES_BY_TABLE: dict[str, type[ReduceStage]] = {"explanations": ExplainStage}


def stage_for(method: Method) -> type[ReduceStage]:
    """The stage kind of ``method`` (a stage module registers itself here when ``dissection.stages`` is imported)."""
    return STAGES_BY_TABLE.get(method.writes, ReduceStage)
