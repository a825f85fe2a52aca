"""Concept sources: where P, the image–concept scores a method ranks concepts by, comes from.

A kind of source registers its config model and a ``prepare`` that, on the driver, checks its inputs
and returns a ``PreparedSource``: its concept set, the content ids that name it, the stages that compute
its data (e.g. CLIP embeddings) and how to load P for the images a layer was recorded on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from discover_ray.concepts import ConceptSet
from discover_ray.config_files import Strict
from discover_ray.methods.base import ConceptScores
from discover_ray.pipeline.chunks import ProbeHandle
from discover_ray.pipeline.stage import Stage
from discover_ray.probe import ProbeSet
from discover_ray.store import Store

__all__ = ["ConceptSourceKind", "PreparedSource", "SourceConfig", "SourceContext"]


class SourceConfig(Strict):
    """A concept source in a config; ``name`` is how the CLI and the report call it (a default is derived)."""

    kind: str
    name: str | None = None

    def default_name(self) -> str:
        return self.kind

    @property
    def label(self) -> str:
        return self.name or self.default_name()

    def identity(self) -> dict[str, Any]:
        """The fields that change P other than through the content ids of its inputs (files, tags)."""
        return self.model_dump(mode="json", exclude={"name"})


@dataclass
class SourceContext:
    """What a source may use while it is prepared and while its stages are planned."""

    store: Store
    probe: ProbeSet
    probe_id: str
    handle: ProbeHandle
    shard_size: int
    notes: list[str] = field(default_factory=list)  # things the user should read (e.g. a cleaned concept file)


class PreparedSource:
    """A concept source ready to plan and to load."""

    def __init__(self, config: SourceConfig, concepts: ConceptSet, encoder_id: str):
        self.config, self.concepts, self.encoder_id = config, concepts, encoder_id

    @property
    def name(self) -> str:
        return self.config.label

    def input_ids(self) -> dict[str, str]:
        """Content ids of what this source reads (for the run id)."""
        return {"concept_set": self.concepts.id, "encoder": self.encoder_id}

    def has_values(self) -> bool:
        """Whether the source can give concept values in [0, 1] (a CLIP source needs a calibration)."""
        return True

    def stages(self, context: SourceContext) -> list[Stage]:
        """The stages that compute this source's data (none for label concepts)."""
        return []

    def data_key(self) -> str:
        """A content id of P: part of the key of every dataset computed from it."""
        raise NotImplementedError

    def data_paths(self) -> list[str]:
        """The datasets P is read from."""
        return []

    def load(self, image_ids: list[str]) -> tuple[ConceptScores, np.ndarray]:
        """P for the images of ``image_ids`` it has, and the positions in ``image_ids`` of those rows."""
        raise NotImplementedError


class ConceptSourceKind:
    """One kind of concept source (``labels``, ``clip``)."""

    kind: ClassVar[str]
    Config: ClassVar[type[SourceConfig]]

    def prepare(self, config: SourceConfig, context: SourceContext) -> PreparedSource:
        raise NotImplementedError
