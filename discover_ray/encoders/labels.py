"""Label-derived concepts (the LE(Label) style): P is one-hot class membership, plus superclass indicators.

No text encoder is involved: a concept is a class (or superclass) name and P[n, m] is 1 when image n
belongs to it. On a classifier's final layer this is the cleanest test of a similarity function: each
output unit should be labelled with its own class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from discover_ray.concepts import ConceptSet, superclass_members

__all__ = ["label_concept_scores", "label_concept_set", "resolve_superclasses"]


def resolve_superclasses(spec: str | Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """A superclass table: ``None`` (none), a built-in name (``cifar100_superclasses``) or a mapping."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        return superclass_members(spec)
    return {str(name): tuple(str(m) for m in members) for name, members in spec.items()}


def label_concept_set(classes: Sequence[str], superclasses: Mapping[str, Sequence[str]] | None = None) -> ConceptSet:
    """Concept names: the classes in label order, then the superclasses that are not also class names."""
    table = resolve_superclasses(superclasses)
    unknown = sorted({m for members in table.values() for m in members} - set(classes))
    if unknown:
        raise ValueError(f"superclass members {unknown[:8]} are not classes of the probe set ({', '.join(classes)})")
    extra = tuple(name for name in table if name not in classes)
    name = "labels" + ("+superclasses" if extra else "")
    return ConceptSet(name, tuple(classes) + extra)


def label_concept_scores(
    labels: Sequence[int | None], classes: Sequence[str], superclasses: Mapping[str, Sequence[str]] | None = None
) -> tuple[ConceptSet, Tensor]:
    """``(concepts, P[N, C + S])`` for the probe images' class indices ``labels``."""
    missing = sum(label is None for label in labels)
    if missing:
        raise ValueError(
            f"{missing} of {len(labels)} probe images have no label; label concepts need a labelled probe set "
            "(a label column, or class folders), or use a CLIP concept source instead"
        )
    concepts = label_concept_set(classes, superclasses)
    table = resolve_superclasses(superclasses)
    index = torch.as_tensor(labels, dtype=torch.long)
    if len(index) and (index.min() < 0 or index.max() >= len(classes)):
        raise ValueError(f"labels must lie in [0, {len(classes)}), got {int(index.min())}..{int(index.max())}")
    scores = torch.zeros(len(index), len(concepts))
    scores[torch.arange(len(index)), index] = 1
    class_index = {c: i for i, c in enumerate(classes)}
    for column, name in enumerate(concepts.concepts[len(classes) :], start=len(classes)):
        members = torch.as_tensor([class_index[m] for m in table[name]], dtype=torch.long)
        scores[:, column] = torch.isin(index, members).float()
    return concepts, scores
