"""Typed run records: one pydantic model shared by the writer and every reader.

``runs/{run_id}/run.json`` is the record of the run's latest successful attempt: the stored form of its
config (``${VAR}`` kept as written, URLs without credentials), the content ids of its inputs, versions,
the probe set, each model, every stage's event, the datasets of its labels and the neuron identification.
Each attempt is written apart (``runs/{run_id}/attempts/{attempt}/``) and promoted to ``run.json`` only
when it succeeds, so a failed re-run never hides a finished one.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CompetitionInfo", "FailedImage", "Identification", "LabelEntry", "ModelInfo", "ProbeInfo", "RunRecord",
    "SimulationEntry", "SplitInfo", "StageEvent", "versions",
]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("discover-ray", "torch", "torchvision", "ray", "timm", "open_clip_torch", "pyarrow", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


class StageEvent(_Record):
    """One stage of an attempt: done (with its timing and counts), skipped (its outputs were there), failed."""

    stage: str
    title: str
    status: Literal["done", "skipped", "failed"]
    seconds: float = 0.0
    outputs: list[str] = Field(default_factory=list)
    counts: dict[str, Any] = Field(default_factory=dict)
    at: str | None = None


class ProbeInfo(_Record):
    id: str
    source: str
    kind: str
    images: int
    shards: int
    shard_size: int
    classes: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)  # stored form of the probe config, to reopen it


class CompetitionInfo(_Record):
    """How a model's LWTA layers were recorded: one pass per image, its noise seeded from (seed, image_id)."""

    mode: str
    passes: int
    seed: int
    layers: dict[str, dict[str, float]]


class ModelInfo(_Record):
    checkpoint_id: str
    weights_sha256: str | None = None
    spec: dict[str, Any]
    layers: dict[str, str]  # layer → its activation dataset
    units: dict[str, int] = Field(default_factory=dict)
    block_sizes: dict[str, int] = Field(default_factory=dict)
    competition: CompetitionInfo | None = None
    heads: dict[str, str] = Field(default_factory=dict)  # layer → the linear head its pooled output feeds


class LabelEntry(_Record):
    """A method's output on one layer (over one concept source), and where it is."""

    model: str
    checkpoint_id: str
    layer: str
    method: str
    source: str
    concept_set_id: str
    encoder_id: str
    dataset: str  # prefix/key, relative to the store root
    table: str = "labels"


class Identification(_Record):
    """Final-layer neuron identification of one labelling (a layer with one unit per class)."""

    model: str
    layer: str
    source: str
    method: str
    units: int
    top1: float
    top5: float
    mean_rank: float
    median_rank: int
    text_cosine: float | None = None


class SimulationEntry(_Record):
    """One labelling scored by simulation (methods.md §3.6): the layer's mean and SEM over live units."""

    model: str
    layer: str
    method: str
    source: str
    simulator: str
    scoring: str  # correlation | ablation_optim | ablation_norm
    correlation_mean: float | None  # the scoring's mean over live units (None: every unit dead)
    correlation_sem: float | None
    units: int
    dead_units: int
    dataset: str  # the per-unit scores


class VerificationEntry(_Record):
    """One labelling verified on generated images (CoSy): the layer's mean AUC and MAD over the scored units, and
    the mean AUC of the same labels shuffled among the units (the chance baseline, ≈ 0.5)."""

    model: str
    layer: str
    method: str
    source: str
    generator: str  # the generator backend's kind
    auc_mean: float | None  # None: no unit could be scored (no label the generator can draw)
    mad_mean: float | None
    auc_shuffled_mean: float | None = None
    units: int
    scored: int
    undrawable: list[str] = Field(default_factory=list)  # labels the generator could not draw (first 50)
    failed: dict[str, str] = Field(default_factory=dict)  # labels whose generation failed → why (first 50)
    dataset: str  # the per-unit scores (auc, mad, auc_shuffled)


class SplitInfo(_Record):
    """The train / val / test split of the probe images that explanation fitting and scoring used."""

    id: str
    seed: int
    fractions: list[float]
    column: str | None = None
    counts: dict[str, int]


class FailedImage(_Record):
    image_id: str
    reason: str


class RunRecord(_Record):
    run_id: str
    name: str
    status: Literal["running", "succeeded", "failed"]
    attempt: str
    started: str
    finished: str | None = None
    error: str | None = None
    executor: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any]
    inputs: dict[str, Any]
    versions: dict[str, str] = Field(default_factory=versions)
    probe: ProbeInfo
    models: dict[str, ModelInfo] = Field(default_factory=dict)
    labels: list[LabelEntry] = Field(default_factory=list)
    identification: list[Identification] = Field(default_factory=list)
    splits: SplitInfo | None = None
    simulation: list[SimulationEntry] = Field(default_factory=list)
    verification: list[VerificationEntry] = Field(default_factory=list)
    #: the model backends the run called, as built: role → kind, model, revision, parameters (never a secret)
    backends: dict[str, Any] = Field(default_factory=dict)
    failed_images: list[FailedImage] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)  # every dataset the plan names (kept by `discover gc`)
    stages: list[StageEvent] = Field(default_factory=list)

    def recomputed(self) -> list[StageEvent]:
        """The stages this attempt ran (the others were done already)."""
        return [s for s in self.stages if s.status == "done"]
