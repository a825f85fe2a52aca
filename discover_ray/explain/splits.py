"""Train / validation / test splits of a probe set, by image id.

Linear Explanations fits on train, chooses concepts on validation and is scored on test; the split must be
the same on every run and every worker, whatever the sharding. ``seeded_splits`` ranks the image ids by a
seeded hash and cuts the ranking at the fractions (70 / 10 / 20 by default): a pure function of the seed
and the set of ids, with exact proportions. ``column_splits`` takes the split from a probe-set column
(``train`` / ``val`` / ``test``) for data sets that ship one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from discover_ray.errors import ExplainInputError

__all__ = ["SPLIT_NAMES", "Splits", "column_splits", "seeded_splits"]

SPLIT_NAMES = ("train", "val", "test")
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Splits:
    """Which split each image id is in."""

    of: dict[str, str]  # image id → "train" | "val" | "test"

    def positions(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Row positions of each split among ``image_ids`` (rows of a layer's activations), in row order."""
        names = np.array([self.of.get(i, "") for i in image_ids])
        return {name: np.flatnonzero(names == name) for name in SPLIT_NAMES}

    @cached_property
    def id(self) -> str:
        """A content id of the assignment (part of the key of everything fitted or scored on it)."""
        from discover_ray.ids import content_id

        return content_id("\n".join(f"{i}\t{s}" for i, s in sorted(self.of.items())))

    def counts(self) -> dict[str, int]:
        values = list(self.of.values())
        return {name: values.count(name) for name in SPLIT_NAMES}

    def check(self, image_ids: Sequence[str], need: Iterable[str] = ("train", "val")) -> dict[str, np.ndarray]:
        """``positions``, with an error naming any needed split that holds no image of ``image_ids``."""
        positions = self.positions(image_ids)
        empty = [name for name in need if not len(positions[name])]
        if empty:
            counts = ", ".join(f"{name} {len(positions[name])}" for name in SPLIT_NAMES)
            raise ExplainInputError(
                f"the {' and '.join(empty)} split{'s hold' if len(empty) > 1 else ' holds'} no image of this layer "
                f"({counts} of {len(image_ids)} images); use more probe images or change simulate.splits")
        return positions


def _rank_key(seed: int, image_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()


def seeded_splits(image_ids: Sequence[str], seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> Splits:
    """Image ids ranked by sha256(seed, id), cut into train / val / test at ``fractions`` (rounded down, the
    remainder to test)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ExplainInputError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    ranked = sorted(image_ids, key=lambda i: _rank_key(seed, i))
    n = len(ranked)
    n_train = int(np.floor(fractions[0] * n + 1e-9))
    n_val = int(np.floor((fractions[0] + fractions[1]) * n + 1e-9)) - n_train
    of = {i: "train" for i in ranked[:n_train]}
    of.update({i: "val" for i in ranked[n_train : n_train + n_val]})
    of.update({i: "test" for i in ranked[n_train + n_val :]})
    return Splits(of)


def column_splits(image_ids: Sequence[str], values: Sequence[object], column: str) -> Splits:
    """The split named per image by a probe-set column (train / val / test; validation, valid, training too)."""
    of: dict[str, str] = {}
    for image_id, value in zip(image_ids, values, strict=True):
        name = _ALIASES.get(str(value).strip().lower()) if value is not None else None
        if name is None:
            raise ExplainInputError(
                f"split column {column!r} holds {value!r} for image {image_id!r}; each value must be train, val or test")
        of[image_id] = name
    return Splits(of)
