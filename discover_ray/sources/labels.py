"""Label concepts (the LE(Label) style): P is one-hot class membership, plus superclass indicators, plus
attribute columns of the probe set.

No encoder is involved: a concept is a class (or superclass) name, or one value of an attribute column
(the world's colour, shape, pattern, size and background; Broden-style attributes, where a column may hold
a list of values per image), and P[n, m] is 1 when image n has it. On a classifier's final layer this is
the cleanest test of a method: each output unit should be labelled with its own class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from discover_ray.concepts import ConceptSet
from discover_ray.encoders.labels import label_concept_scores, resolve_superclasses
from discover_ray.errors import ConfigError, ProbeError
from discover_ray.ids import content_id
from discover_ray.methods.base import ConceptScores
from discover_ray.sources.base import ConceptSourceKind, PreparedSource, SourceConfig, SourceContext
from discover_ray.sources.registry import register_source
from discover_ray.store import config_hash

__all__ = ["LabelConcepts", "LabelSource", "attribute_scores"]


class LabelConcepts(SourceConfig):
    """P from the probe set's labels: one-hot classes, plus superclasses (a built-in table or a mapping)."""

    kind: Literal["labels"] = "labels"
    superclasses: str | dict[str, list[str]] | None = None
    classes: bool = Field(True, description="one concept per class of the label column (and the superclasses)")
    columns: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="attribute columns of the probe set, one concept per value; a mapping names each column's "
        "concepts by a template of {value} and {column} (e.g. background: '{value} background')")

    def templates(self) -> dict[str, str]:
        return dict.fromkeys(self.columns, "{value}") if isinstance(self.columns, list) else dict(self.columns)

    def default_name(self) -> str:
        return "labels"


class LabelSource(PreparedSource):
    def __init__(self, config: LabelConcepts, concepts: ConceptSet, scores: np.ndarray, rows: dict[str, int]):
        super().__init__(config, concepts, "labels")
        self.scores, self.rows = scores, rows
        self.table = resolve_superclasses(config.superclasses)

    def data_key(self) -> str:
        key = {"labels": self.concepts.id, "superclasses": {k: list(v) for k, v in self.table.items()}}
        if self.config.columns:  # attribute values are not part of the probe id: name P by its content
            key["values"] = content_id(np.packbits(self.scores.astype(bool)).tobytes())
        return config_hash(key)

    def load(self, image_ids: list[str]) -> tuple[ConceptScores, np.ndarray]:
        return (ConceptScores(scores=self.scores[[self.rows[i] for i in image_ids]], source=self.name),
                np.arange(len(image_ids)))


@register_source
class Labels(ConceptSourceKind):
    kind = "labels"
    Config = LabelConcepts

    def prepare(self, config: LabelConcepts, context: SourceContext) -> LabelSource:  # type: ignore[override]
        probe = context.probe
        names: list[str] = []
        blocks: list[np.ndarray] = []
        if config.classes:
            if not probe.classes:
                raise ConfigError(
                    f"label concepts need a labelled probe set, but {probe.source!r} has no labels; add a label column "
                    "(or class folders), name attribute columns with classes: false, or use a clip concept source")
            try:
                concepts, scores = label_concept_scores([im.label for im in probe.images], probe.classes,
                                                        config.superclasses)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            names += concepts.concepts
            blocks.append(scores.numpy())
        for column, template in config.templates().items():
            try:
                values = probe.column(column)
            except ProbeError as err:
                raise ConfigError(f"label concepts: {err}") from None
            column_names, column_scores = attribute_scores(values, column, template)
            clash = sorted(set(column_names) & set(names))
            if clash:
                raise ConfigError(f"label concepts: column {column!r} gives concepts {clash[:5]} that another column or a "
                                  "class already names; give it a template such as '{value} " + column + "'")
            names += column_names
            blocks.append(column_scores)
        if not names:
            raise ConfigError("label concepts with classes: false need attribute columns (columns: [...])")
        suffix = "+superclasses" if config.classes and config.superclasses else ""
        concepts = ConceptSet(("labels" if config.classes else "attributes") + suffix
                              + ("+" + "+".join(config.templates()) if config.columns else ""), tuple(names))
        return LabelSource(config, concepts, np.concatenate(blocks, axis=1).astype(np.float32),
                           {im.image_id: i for i, im in enumerate(probe.images)})


def attribute_scores(values: Sequence[object], column: str, template: str) -> tuple[list[str], np.ndarray]:
    """One 0/1 concept per distinct value of an attribute column (a value may be a list: several attributes
    per image); concepts in sorted value order, named by ``template``."""
    per_image = [() if v is None else tuple(str(x) for x in v) if isinstance(v, list | tuple) else (str(v),)
                 for v in values]
    vocabulary = sorted({v for vs in per_image for v in vs})
    if not vocabulary:
        raise ConfigError(f"label concepts: probe column {column!r} holds no values")
    index = {v: i for i, v in enumerate(vocabulary)}
    scores = np.zeros((len(per_image), len(vocabulary)), np.float32)
    for row, vs in enumerate(per_image):
        scores[row, [index[v] for v in vs]] = 1
    return [template.replace("{value}", v).replace("{column}", column) for v in vocabulary], scores
