"""VERIFY: check any method's labels on one layer against the units themselves (CoSy, Kopf et al., NeurIPS 2024).

For each unit's label (a method's top concept; Linear Explanations' first term; Describe-and-Dissect's label 1)
a generator backend draws ``images`` images, and the target at the layer is shown them; a control set of
``control`` probe images (seeded, the same for every unit) gives the baseline from the recorded activations.
Scores per unit (``evaluate.verification``): AUC (generated vs control) and MAD. The same images also score
the labels *shuffled* among the units (a seeded derangement): the chance baseline a label must beat, ≈ 0.5.
A label the generator cannot draw, or whose generation fails, gets no score (recorded, with the reason). Labels shared by several units are drawn once.
The dataset is ``verification/{checkpoint}/{probe}/{layer}/{labelling}__by__{generator}/{key}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from discover_ray.backends.base import BackendError
from discover_ray.backends.settings import BackendSet
from discover_ray.describe.dnd import seed_for
from discover_ray.describe.target import TargetRef
from discover_ray.dissection.stages.reduce import ReduceStage
from discover_ray.evaluate.verification import verification_scores
from discover_ray.pipeline.stage import Output, TaskStage, stage_key
from discover_ray.runs.read import READERS
from discover_ray.schema import VERSIONS, read_activations, score_table
from discover_ray.store import Store

__all__ = ["VerifyInputs", "VerifyStage", "draw_labels"]


@dataclass
class VerifyInputs:
    target: TargetRef
    backends: BackendSet
    images: int
    seed: int


def draw_labels(loaded: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The target's pooled activations [images, K] on each label's generated images (None: not drawable)."""
    payload: VerifyInputs = loaded["inputs"]
    backends = payload.backends.build()
    assert backends.generator is not None
    probe = payload.target.probe()
    out: dict[str, np.ndarray | None] = {}
    failed: dict[str, str] = {}
    for label in labels:
        base = seed_for(payload.seed, "verify", label)
        try:
            drawn = backends.generator.generate(label, [(base + i) & 0x7FFFFFFF for i in range(payload.images)])
        except BackendError as err:  # this label gets no score; the others go on
            failed[label] = str(err)
            drawn = None
        out[label] = None if drawn is None else probe.activations([g.image for g in drawn])
    return {"activations": out, "failed": failed, "calls": backends.cache.stats.misses,
            "hits": backends.cache.stats.hits, "generator": backends.generator.identity.as_dict()}


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation of n ≥ 2 items that moves every item (each unit gets another unit's label)."""
    while True:
        order = rng.permutation(n)
        if n < 2 or not (order == np.arange(n)).any():
            return order


class VerifyStage(TaskStage):
    name = "VERIFY"
    compute = staticmethod(draw_labels)
    resident = "backends"  # the generator stays loaded in the workers DESCRIBE used
    resumes_parts = False  # the marker holds what assemble found

    def __init__(self, store: Store, labelling: ReduceStage, backends: BackendSet, target: TargetRef, images: int,
                 control: int, seed: int, probe_id: str, labels_per_task: int = 16):
        self.labelling, self.backends, self.target = labelling, backends, target
        self.images, self.control, self.seed, self.labels_per_task = images, control, seed, labels_per_task
        generator = backends.generator
        assert generator is not None
        key = stage_key("VERIFY", "scores", VERSIONS["scores"], labels=labelling.dataset.key,
                        activations=labelling.activations.dataset.key, generator=generator.model_dump(mode="json"),
                        images=images, control=control, seed=seed, conv_pool=target.conv_pool,
                        token_pool=target.token_pool)
        source = labelling.source
        where = (f"verification/{labelling.model.checkpoint_id}/{probe_id}/{labelling.layer}/{labelling.method.name}__"
                 f"{source.concepts.id if source else 'none'}__{source.encoder_id if source else 'none'}__by__{generator.kind}")
        self.dataset = store.dataset(where, key, "scores")
        title = f"{labelling.model.label}/{labelling.layer}/{source.name if source else '-'} by {generator.kind}: " \
                f"{labelling.method.name}"
        super().__init__(title, [Output("scores", self.dataset, {0: None})],
                         [labelling.dataset.relative, labelling.activations.path])
        self._marker: dict[str, Any] = {}

    def payload_key(self) -> tuple[str, ...]:
        return (repr(self), self.dataset.key)

    def load(self) -> dict[str, Any]:
        stage = self.labelling
        acts = read_activations(stage.activations.dataset.read(), stage.model.block_sizes[stage.layer])
        ranked = READERS[stage.method.writes](stage.dataset.read()).ranked()
        labels = [ranked[u][0][0] if ranked.get(u) else None for u in acts.units]
        rng = np.random.default_rng(seed_for(self.seed, "control"))
        rows = np.sort(rng.choice(len(acts.image_ids), size=min(self.control, len(acts.image_ids)), replace=False))
        self._state = {"units": acts.units, "labels": labels, "control": acts.values[rows]}
        return {"inputs": VerifyInputs(self.target, self.backends, self.images, self.seed),
                "labels": sorted({label for label in labels if label})}

    def tasks(self, part: int, payload: dict[str, Any]) -> list[Any]:
        labels = payload["labels"]
        return [labels[s : s + self.labels_per_task] for s in range(0, len(labels), self.labels_per_task)] or [[]]

    def assemble(self, part: int, results: list[Any], payload: dict[str, Any]) -> dict[str, pa.Table]:
        drawn: dict[str, np.ndarray | None] = {}
        failed: dict[str, str] = {}
        for r in results:
            drawn.update(r["activations"])
            failed.update(r["failed"])
        units, labels, control = self._state["units"], self._state["labels"], self._state["control"]
        auc, mad, dead = _scores(labels, drawn, control)
        scored = [k for k, label in enumerate(labels) if label and drawn.get(label) is not None]
        shuffled = [None] * len(labels)
        if len(scored) >= 2:
            order = derangement(len(scored), np.random.default_rng(seed_for(self.seed, "shuffle")))
            for k, j in zip(scored, order, strict=True):
                shuffled[k] = labels[scored[j]]
        auc_s, _, dead_s = _scores(shuffled, drawn, control)
        tables = [score_table(units, "auc", auc, dead), score_table(units, "mad", mad, dead),
                  score_table(units, "auc_shuffled", auc_s, dead_s)]
        live = ~np.asarray(dead)
        live_s = ~np.asarray(dead_s)
        undrawable = sorted({label for label in labels if label and drawn.get(label) is None} - set(failed))
        self._marker = {
            "auc_mean": float(np.mean(np.asarray(auc)[live])) if live.any() else None,
            "mad_mean": float(np.mean(np.asarray(mad)[live])) if live.any() else None,
            "auc_shuffled_mean": float(np.mean(np.asarray(auc_s)[live_s])) if live_s.any() else None,
            "units": len(units), "scored": int(live.sum()), "unlabelled": sum(label is None for label in labels),
            "undrawable": undrawable[:50], "failed": dict(sorted(failed.items())[:50]), "control_images": int(len(control)), "images_per_label": self.images,
            "calls": sum(r["calls"] for r in results), "cache_hits": sum(r["hits"] for r in results),
            "generator": results[0].get("generator") if results else None}
        return {"scores": pa.concat_tables(tables)}

    def marker(self, output: Output) -> dict[str, Any]:
        return {"method": self.labelling.method.name, **self._marker}

    def counts(self) -> dict[str, Any]:
        return {k: self._marker[k] for k in ("scored", "calls", "cache_hits") if k in self._marker}


def _scores(labels: list[str | None], drawn: dict[str, np.ndarray | None],
            control: np.ndarray) -> tuple[list[float], list[float], list[bool]]:
    """Per unit: AUC and MAD of its label's images against the control; no score (dead) without images, or
    for a unit constant on the control set."""
    rows = []
    for k, label in enumerate(labels):
        acts = drawn.get(label) if label else None
        if acts is None or not len(acts):
            rows.append((0.0, 0.0, True))
            continue
        s = verification_scores(torch.from_numpy(np.asarray(acts)[:, [k]]), torch.from_numpy(np.asarray(control)[:, [k]]))
        rows.append((float(s.auc[0]), float(s.mad[0]), bool(s.dead[0])))
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
