"""Stages as data: what a stage reads, what it writes under which key, its parts, and how one is computed.

A stage writes one or more *outputs*, each a store dataset ``{prefix}/{key}`` whose key is the content
hash of everything that changes it (the keys of the datasets it reads, its parameters, the version of its
table's schema). Its work is cut into *parts* (part ``i`` of every output), the unit of resume: a part
that is there is never computed again. Two kinds:

- a ``ModelStage`` runs a model (or only a loader) over the probe set, shard by shard (a part is a shard);
  stages that load images the same way share one pass over the probe set;
- a ``TaskStage`` computes each part from plain tasks (pure functions of a payload it loads once), in rounds
  when later tasks need earlier results (``follow_up``).

``pipeline.runner.Runner`` owns skipping, resuming, committing and events for every stage; an executor
(in-process or Ray) only computes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from discover_ray.store import Dataset, config_hash

__all__ = ["CacheRef", "Head", "ModelStage", "Output", "ShardOutput", "Stage", "TaskStage", "shard_lengths", "stage_key"]


def shard_lengths(images: int, shard_size: int) -> dict[int, int]:
    """Each shard of a probe set of ``images`` images and how many images it holds (the last may be short)."""
    return {s: min(shard_size, images - s * shard_size) for s in range(-(-images // shard_size))}


def stage_key(stage: str, table: str, version: int | None, **parts: Any) -> str:
    """The key of an output: its stage, its table's schema version and whatever else changes it."""
    return config_hash({"stage": stage, "table": table, "version": version, **parts})


@dataclass(frozen=True)
class Output:
    """A dataset a stage writes, with the parts it must hold and how many images (rows plus failed) each has."""

    name: str
    dataset: Dataset
    expected: Mapping[int, int | None]  # part → rows + failed images (None: any number of rows)

    @property
    def parts(self) -> list[int]:
        return sorted(self.expected)

    @property
    def path(self) -> str:
        return self.dataset.relative


@dataclass(frozen=True)
class CacheRef:
    """A pixel cache a model stage's loader reads: the DECODE dataset and the pixel format it holds."""

    dataset: Dataset
    format: Any  # probe.pixels.PixelFormat

    @property
    def path(self) -> str:
        return self.dataset.relative


@dataclass
class ShardOutput:
    """One finished shard of a model pass: the ids that loaded, each head's outputs aligned with them."""

    shard: int
    image_ids: list[str]
    outputs: dict[str, dict[str, np.ndarray]]  # head name → output name → array over the loaded images
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # image_id, reason, position
    raw: np.ndarray | None = None  # uint8 pixels of the loaded images, when the pass decoded them for a cache


@dataclass(frozen=True)
class Head:
    """A model an actor loads once and runs on every loaded chunk of its shards: ``actor(**kwargs, threads=n)``."""

    name: str
    actor: type
    kwargs: Mapping[str, Any]
    shards: frozenset[int]


class Stage:
    """The common part of every stage: its name (``RECORD``), a title for people, its outputs and inputs."""

    name: ClassVar[str] = "STAGE"
    kind: ClassVar[str] = "task"
    #: a cache (the pixel cache): computed only while a stage that reads it has work to do
    optional: ClassVar[bool] = False

    def __init__(self, title: str, outputs: Sequence[Output], inputs: Sequence[str] = ()):
        self.title, self.outputs, self.inputs = title, list(outputs), list(inputs)

    def marker(self, output: Output) -> dict[str, Any]:
        """Extra fields for an output's ``_SUCCESS.json`` (units, block size, identification, ...)."""
        return {}

    def counts(self) -> dict[str, Any]:
        """What the stage's event reports besides its timing (rows, shards, where pixels came from, ...)."""
        return {}

    def __repr__(self) -> str:
        return f"{self.name}({self.title})"


class TaskStage(Stage):
    """Parts computed from tasks: ``compute(payload, task)`` is a module-level function (it is shipped to
    workers by reference), ``payload`` is loaded once on the driver (``load``) and shared by the tasks."""

    kind = "task"
    compute: ClassVar[Callable[[Any, Any], Any]]
    #: the name of a pool of long-lived workers that run this stage's tasks and keep what they load (models of
    #: backends) between tasks and stages; None: plain tasks
    resident: ClassVar[str | None] = None
    #: whether a part an interrupted run left is kept; False when the marker sums up what assembling the parts found
    #: (a method's counts, neuron identification): then every part of an uncommitted output is computed again
    resumes_parts: ClassVar[bool] = True

    def payload_key(self) -> tuple[str, ...]:
        """Stages whose payload keys are equal share one loaded payload (the runner keeps the last)."""
        return (repr(self),)

    def load(self) -> Any:
        return None

    def tasks(self, part: int, payload: Any) -> list[Any]:
        raise NotImplementedError

    def follow_up(self, part: int, results: list[Any], payload: Any) -> list[Any]:
        """More tasks that need the results so far (a second round of work items); [] when there are none."""
        return []

    def assemble(self, part: int, results: list[Any], payload: Any) -> Mapping[str, pa.Table]:
        """The tables of ``part``, by output name, from its tasks' results (in task order)."""
        raise NotImplementedError


class ModelStage(Stage):
    """Parts are shards of the probe set, each loaded chunk by chunk (``batch_size`` images) and handed to
    the stage's head. Stages with the same ``loader`` id share one pass: the images are loaded once."""

    kind = "model"
    #: set by stages that want the decoded uint8 pixels of the shards they lack (the DECODE stage)
    wants_raw: ClassVar[bool] = False

    def __init__(self, title: str, outputs: Sequence[Output], *, loader: str, batch_size: int | None,
                 inputs: Sequence[str] = ()):
        super().__init__(title, outputs, inputs)
        self.loader, self.batch_size = loader, batch_size

    def transform(self) -> Callable[[Any], Any]:
        """The preprocessing of the images this stage's head sees (built only when the stage runs)."""
        raise NotImplementedError

    def head(self, outputs: Sequence[Output], shards: frozenset[int]) -> Head | None:
        """The model that computes ``outputs`` on ``shards`` (``None``: the stage only needs the loader)."""
        return None

    def write(self, outputs: Sequence[Output], shard: ShardOutput, head: dict[str, np.ndarray]) -> None:
        """Write the parts of ``outputs`` for a finished shard (``head``: this stage's head outputs)."""
        raise NotImplementedError

    def cache(self) -> CacheRef | None:
        """The pixel cache this stage's loader reads, if any."""
        return None
