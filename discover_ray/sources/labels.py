"""Label concepts (the LE(Label) style): P is one-hot class membership, plus superclass indicators.

No encoder is involved: a concept is a class (or superclass) name and P[n, m] is 1 when image n belongs
to it. On a classifier's final layer this is the cleanest test of a method: each output unit should be
labelled with its own class.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from discover_ray.concepts import ConceptSet
from discover_ray.encoders.labels import label_concept_scores, resolve_superclasses
from discover_ray.errors import ConfigError
from discover_ray.methods.base import ConceptScores
from discover_ray.sources.base import ConceptSourceKind, PreparedSource, SourceConfig, SourceContext
from discover_ray.sources.registry import register_source
from discover_ray.store import config_hash

__all__ = ["LabelConcepts", "LabelSource"]


class LabelConcepts(SourceConfig):
    """P from the probe set's labels: one-hot classes, plus superclasses (a built-in table or a mapping)."""

    kind: Literal["labels"] = "labels"
    superclasses: str | dict[str, list[str]] | None = None

    def default_name(self) -> str:
        return "labels"


class LabelSource(PreparedSource):
    def __init__(self, config: LabelConcepts, concepts: ConceptSet, scores: np.ndarray, rows: dict[str, int]):
        super().__init__(config, concepts, "labels")
        self.scores, self.rows = scores, rows
        self.table = resolve_superclasses(config.superclasses)

    def data_key(self) -> str:
        return config_hash({"labels": self.concepts.id, "superclasses": {k: list(v) for k, v in self.table.items()}})

    def load(self, image_ids: list[str]) -> tuple[ConceptScores, np.ndarray]:
        return ConceptScores(scores=self.scores[[self.rows[i] for i in image_ids]]), np.arange(len(image_ids))


@register_source
class Labels(ConceptSourceKind):
    kind = "labels"
    Config = LabelConcepts

    def prepare(self, config: LabelConcepts, context: SourceContext) -> LabelSource:  # type: ignore[override]
        probe = context.probe
        if not probe.classes:
            raise ConfigError(
                f"label concepts need a labelled probe set, but {probe.source!r} has no labels; "
                "add a label column (or class folders), or use a clip concept source"
            )
        try:
            concepts, scores = label_concept_scores([im.label for im in probe.images], probe.classes, config.superclasses)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return LabelSource(config, concepts, scores.numpy(), {im.image_id: i for i, im in enumerate(probe.images)})
