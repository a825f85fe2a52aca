"""Every table the store holds, defined once: how each is written and how each is read back.

Tables:

- ``activations``: one row per probe image, ``image_id`` then one float32 column per unit (``u00042``, or
  ``b0012_u03`` inside LWTA blocks of U), plus ``position_active_fraction`` for LWTA layers (the fraction
  of the layer's unpooled outputs that are non-zero: exactly 1/U at every position).
- ``labels``: ranked concept labels, one row per (unit, rank): unit, block, index_in_block, rank,
  concept, concept_index, score.
- ``image_embeddings`` / ``concept_embeddings``: an id column and a fixed-size float32 ``embedding``.
- ``pixels``: decoded probe images in one preprocessing's input geometry (uint8, H×W×3 per row).
- ``explanations``: weighted multi-concept explanations (Linear Explanations): one row per (unit, term)
  with the term's concept and weight, the unit's bias, validation correlation and whether it is dead.
- ``descriptions``: free-text descriptions with their candidates (Describe-and-Dissect): one row per
  (unit, candidate) with the candidate's text, score and whether it was chosen.
- ``scores``: per-unit scores of any description (simulation correlation, verification AUC, ...).

Shard tables carry the images that failed to load in their metadata (``discover.failed``: image id,
reason, position in the probe set). ``VERSIONS`` is part of every stage key: changing a table's layout
bumps its version and recomputes what depends on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "VERSIONS",
    "Activations",
    "Descriptions",
    "Explanations",
    "Labels",
    "Scores",
    "activation_table",
    "concept_embedding_table",
    "description_table",
    "explanation_table",
    "failed_of",
    "format_linear",
    "image_embedding_table",
    "label_table",
    "pixel_table",
    "read_activations",
    "read_embeddings",
    "read_pixels",
    "score_table",
    "unit_columns",
    "unit_names",
    "with_failed",
]

#: part of every dataset key: a change to what a table holds, or to how its values are computed, bumps it (pixels 2 and
#: activations 3: very large JPEGs are draft-decoded and every image is resized as it is decoded)
VERSIONS: dict[str, int] = {
    "activations": 3,
    "labels": 1,
    "image_embeddings": 1,
    "concept_embeddings": 1,
    "pixels": 2,
    "explanations": 1,
    "descriptions": 2,
    "scores": 2,
}

FAILED_KEY = b"discover.failed"
ACTIVE_FRACTION = "position_active_fraction"
_UNIT = re.compile(r"^(u\d{5}|b\d{4}_u\d{2})$")

Failed = tuple[str, str, int]  # image_id, reason, position in the probe set


# -- shared ---------------------------------------------------------------------------------------------
def unit_names(n_units: int, block_size: int = 1) -> list[str]:
    """Column names: ``u00042``, or ``b0012_u03`` for units inside competition blocks of ``block_size``."""
    if block_size <= 1:
        return [f"u{i:05d}" for i in range(n_units)]
    if n_units % block_size:
        raise ValueError(f"{n_units} units do not split into blocks of {block_size}")
    return [f"b{i // block_size:04d}_u{i % block_size:02d}" for i in range(n_units)]


def unit_columns(names: Sequence[str]) -> list[str]:
    """The unit columns among a table's column names, in order."""
    return [n for n in names if _UNIT.match(n)]


def _blocks(n_rows_units: np.ndarray, block_size: int) -> tuple[pa.Array, pa.Array]:
    blocked = block_size > 1
    block = pa.array(n_rows_units // block_size if blocked else [None] * len(n_rows_units), pa.int32())
    index = pa.array(n_rows_units % block_size if blocked else [None] * len(n_rows_units), pa.int32())
    return block, index


def with_failed(table: pa.Table, failed: Sequence[Failed]) -> pa.Table:
    """``table`` with the images that failed to load named in its metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata[FAILED_KEY] = json.dumps([list(f) for f in failed]).encode()
    return table.replace_schema_metadata(metadata)


def failed_of(schema: pa.Schema) -> list[Failed]:
    """The failed images a shard table names (none for tables that are not shards)."""
    raw = (schema.metadata or {}).get(FAILED_KEY)
    return [(str(i), str(why), int(at)) for i, why, at in json.loads(raw)] if raw else []


def _fixed_list(values: np.ndarray) -> pa.Array:
    width = values.shape[1] if values.ndim == 2 and values.shape[1] else 1
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, 0), np.float32)
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width).astype(np.float32, copy=False)


# -- activations ----------------------------------------------------------------------------------------
def activation_table(
    image_ids: Sequence[str], values: np.ndarray, block_size: int, *, failed: Sequence[Failed] = (),
    active_fraction: np.ndarray | None = None, **metadata: str,
) -> pa.Table:
    """One shard of a layer: ``image_id``, a float32 column per unit, the LWTA position statistic if any."""
    names = unit_names(values.shape[1], block_size) if values.size else []
    columns: dict[str, pa.Array] = {"image_id": pa.array(list(image_ids), pa.string())}
    for j, name in enumerate(names):
        columns[name] = pa.array(np.ascontiguousarray(values[:, j], dtype=np.float32), pa.float32())
    if active_fraction is not None:
        columns[ACTIVE_FRACTION] = pa.array(np.asarray(active_fraction, np.float32), pa.float32())
    meta = {"units": str(len(names)), "block_size": str(block_size), **metadata}
    table = pa.table(columns).replace_schema_metadata({f"discover.{k}".encode(): str(v).encode() for k, v in meta.items()})
    return with_failed(table, failed)


@dataclass
class Activations:
    """A recorded layer: one row per image, one column per unit."""

    image_ids: list[str]
    units: list[str]
    values: np.ndarray  # [images, units], float32
    block_size: int = 1
    active_fraction: np.ndarray | None = None  # [images]: LWTA layers' non-zero fraction over positions

    def row(self, image_id: str) -> np.ndarray:
        try:
            return self.values[self.image_ids.index(image_id)]
        except ValueError:
            from discover_ray.errors import UnknownName

            raise UnknownName(
                f"image {image_id!r} is not in the probe set of this run (ids look like {self.image_ids[:3]})"
            ) from None


def read_activations(table: pa.Table, block_size: int = 1) -> Activations:
    units = unit_columns(table.column_names)
    values = np.empty((table.num_rows, len(units)), dtype=np.float32)
    for j, name in enumerate(units):
        values[:, j] = table[name].to_numpy()
    fraction = table[ACTIVE_FRACTION].to_numpy() if ACTIVE_FRACTION in table.column_names else None
    return Activations(table["image_id"].to_pylist(), units, values, block_size, fraction)


# -- labels -----------------------------------------------------------------------------------------------
def label_table(values: np.ndarray, index: np.ndarray, concepts: Sequence[str], block_size: int) -> pa.Table:
    """Each unit's top-k concepts, best first: ``values`` and ``index`` are [units, k]."""
    n_units, k = values.shape
    names = unit_names(n_units, block_size)
    unit = np.repeat(np.arange(n_units), k)
    block, in_block = _blocks(unit, block_size)
    return pa.table({
        "unit": pa.array([names[u] for u in unit], pa.string()),
        "block": block,
        "index_in_block": in_block,
        "rank": pa.array(np.tile(np.arange(k), n_units), pa.int16()),
        "concept": pa.array([concepts[int(i)] for i in index.reshape(-1)], pa.string()),
        "concept_index": pa.array(index.reshape(-1), pa.int32()),
        "score": pa.array(values.reshape(-1).astype(np.float32), pa.float32()),
    })


class _UnitTable:
    """What every label table read back offers: its units (in table order) and its rows."""

    table: pa.Table

    def ranked(self) -> dict[str, list[tuple[str, float]]]:
        raise NotImplementedError

    @property
    def units(self) -> list[str]:
        return list(self.ranked())

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def to_pylist(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


@dataclass
class Labels(_UnitTable):
    """A label table read back: each unit's ranked concepts."""

    table: pa.Table
    _ranked: dict[str, list[tuple[str, float]]] | None = field(default=None, repr=False)

    def ranked(self) -> dict[str, list[tuple[str, float]]]:
        """unit → [(concept, score), ...], best first; units in table order."""
        if self._ranked is None:
            rows: dict[str, list[tuple[int, str, float]]] = {}
            for unit, rank, concept, score in zip(self.table["unit"].to_pylist(), self.table["rank"].to_pylist(),
                                                  self.table["concept"].to_pylist(), self.table["score"].to_pylist(),
                                                  strict=True):
                rows.setdefault(unit, []).append((rank, concept, score))
            self._ranked = {u: [(c, s) for _, c, s in sorted(r)] for u, r in rows.items()}
        return self._ranked

    def top(self) -> dict[str, tuple[str, float]]:
        """unit → its best concept and score."""
        return {u: r[0] for u, r in self.ranked().items() if r}



# -- embeddings ---------------------------------------------------------------------------------------------
def image_embedding_table(image_ids: Sequence[str], embeddings: np.ndarray, failed: Sequence[Failed] = ()) -> pa.Table:
    table = pa.table({"image_id": pa.array(list(image_ids), pa.string()), "embedding": _fixed_list(embeddings)})
    return with_failed(table, failed)


def concept_embedding_table(concepts: Sequence[str], embeddings: np.ndarray) -> pa.Table:
    return pa.table({"concept": pa.array(list(concepts), pa.string()), "embedding": _fixed_list(embeddings)})


def read_embeddings(table: pa.Table) -> tuple[list[str], np.ndarray]:
    """(ids, [rows, d] float32) of an image or concept embedding table."""
    id_column = "image_id" if "image_id" in table.column_names else "concept"
    return table[id_column].to_pylist(), _matrix(table["embedding"])


# -- pixels -----------------------------------------------------------------------------------------------
def pixel_table(image_ids: Sequence[str], positions: Sequence[int], raw: np.ndarray, failed: Sequence[Failed]) -> pa.Table:
    """One shard's decoded pixels: image_id, its position in the probe set, uint8 (H, W, 3) bytes per row."""
    shape = list(raw.shape[1:])
    width = int(np.prod(shape)) if len(raw) else 1
    table = pa.table({
        "image_id": pa.array(list(image_ids), pa.string()),
        "index": pa.array(list(positions), pa.int64()),
        "pixels": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(image_ids), [None, pa.py_buffer(np.ascontiguousarray(raw).tobytes())]),
    })
    table = table.replace_schema_metadata({b"discover.shape": json.dumps(shape).encode()})
    return with_failed(table, failed)


def read_pixels(table: pa.Table, schema: pa.Schema) -> tuple[list[str], np.ndarray]:
    """(image ids, uint8 [n, H, W, 3]) of (some rows of) a pixel table."""
    shape = json.loads((schema.metadata or {})[b"discover.shape"])
    width = int(np.prod(shape))
    flat = table["pixels"].combine_chunks()
    data = np.frombuffer(flat.buffers()[1], dtype=np.uint8)[flat.offset * width : (flat.offset + len(flat)) * width]
    return table["image_id"].to_pylist(), data.reshape(len(flat), *shape)


# -- explanations, descriptions, scores ---------------------------------------------------------------------
def explanation_table(
    units: Sequence[str], concepts: Sequence[Sequence[str]], concept_index: Sequence[Sequence[int]],
    weights: Sequence[Sequence[float]], bias: Sequence[float], val_correlation: Sequence[float],
    dead: Sequence[bool], block_size: int = 1,
) -> pa.Table:
    """One row per (unit, term); a dead unit gets one row with no concept."""
    rows: dict[str, list[Any]] = {k: [] for k in ("position", "unit", "term", "concept", "concept_index", "weight",
                                                  "bias", "val_correlation", "dead")}
    for u, name in enumerate(units):
        terms = list(zip(concepts[u], concept_index[u], weights[u], strict=True)) or [(None, None, None)]
        for t, (concept, index, weight) in enumerate(terms):
            for key, value in (("position", u), ("unit", name), ("term", t), ("concept", concept),
                               ("concept_index", index), ("weight", weight), ("bias", bias[u]),
                               ("val_correlation", val_correlation[u]), ("dead", bool(dead[u]))):
                rows[key].append(value)
    block, in_block = _blocks(np.asarray(rows["position"], dtype=np.int64), block_size)
    return pa.table({
        "unit": pa.array(rows["unit"], pa.string()), "block": block, "index_in_block": in_block,
        "term": pa.array(rows["term"], pa.int16()), "concept": pa.array(rows["concept"], pa.string()),
        "concept_index": pa.array(rows["concept_index"], pa.int32()), "weight": pa.array(rows["weight"], pa.float32()),
        "bias": pa.array(rows["bias"], pa.float32()), "val_correlation": pa.array(rows["val_correlation"], pa.float32()),
        "dead": pa.array(rows["dead"], pa.bool_()),
    })


@dataclass
class Explanations(_UnitTable):
    """Weighted explanations read back: unit → ([(concept, weight), ...], bias, val_correlation, dead)."""

    table: pa.Table
    _by_unit: dict[str, tuple[list[tuple[str, float]], float, float, bool]] | None = field(default=None, repr=False)

    def by_unit(self) -> dict[str, tuple[list[tuple[str, float]], float, float, bool]]:
        if self._by_unit is None:
            out: dict[str, tuple[list[tuple[str, float]], float, float, bool]] = {}
            for row in self.table.to_pylist():
                terms, *_ = out.setdefault(row["unit"], ([], row["bias"], row["val_correlation"], row["dead"]))
                if row["concept"] is not None:
                    terms.append((row["concept"], row["weight"]))
            self._by_unit = out
        return self._by_unit

    def ranked(self) -> dict[str, list[tuple[str, float]]]:
        """unit → its terms [(concept, weight), ...] in the order they were chosen (as ``Labels.ranked``)."""
        return {u: terms for u, (terms, *_) in self.by_unit().items()}

    def top(self) -> dict[str, tuple[str, float]]:
        """unit → (its explanation as text, validation correlation), for units that have one."""
        return {u: (self.describe(u, correlation=False), r) for u, (terms, _, r, _) in self.by_unit().items() if terms}

    def describe(self, unit: str, correlation: bool = True) -> str:
        """``0.82·cat + 0.41·animal − 0.10  (val r 0.63)``; ``dead`` for a constant unit."""
        terms, bias, r, dead = self.by_unit()[unit]
        if dead:
            return "dead (constant activation)"
        text = format_linear(terms, bias) if terms else f"{bias:.3g} (no concept explains it)"
        return text + (f"  (val r {r:.2f})" if correlation and terms else "")



def format_linear(terms: Sequence[tuple[str, float]], bias: float) -> str:
    """Σ w·concept + b as people write it: ``0.82·cat + 0.41·animal − 0.10``."""
    parts = []
    for i, (concept, weight) in enumerate(terms):
        sign = "−" if weight < 0 else "+"
        parts.append(f"{'−' if weight < 0 else ''}{abs(weight):.2f}·{concept}" if i == 0 else f"{sign} {abs(weight):.2f}·{concept}")
    parts.append(f"{'−' if bias < 0 else '+'} {abs(bias):.2f}")
    return " ".join(parts)


_CAPTIONED = pa.struct([("image_id", pa.string()), ("box", pa.list_(pa.int32())), ("activation", pa.float32()),
                        ("caption", pa.string())])


def description_table(units: Sequence[str], described: Sequence[Any], block_size: int = 1) -> pa.Table:
    """Free-text descriptions (Describe-and-Dissect): one row per (unit, candidate concept), best first (``rank``
    0, 1, …), with its TopK-Squared score and ordinal, Image-Products, final score and generated images (cache
    entries); the unit's captioned images and summaries repeat on its rows. A unit without candidates (dead, or
    failed: ``status`` and ``error`` say why) has one row of rank −1. ``described[i]`` is a
    ``describe.dnd.UnitDescription`` of unit ``units[i]``."""
    cols: dict[str, list[Any]] = {k: [] for k in ("unit", "position", "rank", "concept", "score", "topk_score", "ordinal",
                                                  "image_products", "drawn", "images", "status", "error", "captioned",
                                                  "summaries")}
    for position, (name, d) in enumerate(zip(units, described, strict=True)):
        captioned = [{"image_id": c.image_id, "box": list(c.box) if c.box else None, "activation": c.activation,
                      "caption": c.caption} for c in d.captioned]
        rows = list(enumerate(d.candidates)) if d.status == "ok" and d.candidates else [(-1, None)]
        for rank, c in rows:
            cols["unit"].append(name)
            cols["position"].append(position)
            cols["rank"].append(rank)
            cols["concept"].append(c.concept if c else "")
            cols["score"].append(c.score if c else float("nan"))
            cols["topk_score"].append(c.topk_score if c else float("nan"))
            cols["ordinal"].append(c.ordinal if c else 0)
            cols["image_products"].append(c.image_products if c else float("nan"))
            cols["drawn"].append(c.drawn if c else False)
            cols["images"].append(c.images if c else [])
            cols["status"].append(d.status)
            cols["error"].append(d.error)
            cols["captioned"].append(captioned)
            cols["summaries"].append(d.summaries)
    block, in_block = _blocks(np.asarray(cols.pop("position"), dtype=np.int64), block_size)
    return pa.table({
        "unit": pa.array(cols["unit"], pa.string()), "block": block, "index_in_block": in_block,
        "rank": pa.array(cols["rank"], pa.int16()), "concept": pa.array(cols["concept"], pa.string()),
        "score": pa.array(cols["score"], pa.float32()), "topk_score": pa.array(cols["topk_score"], pa.float32()),
        "ordinal": pa.array(cols["ordinal"], pa.int32()),
        "image_products": pa.array(cols["image_products"], pa.float32()),
        "drawn": pa.array(cols["drawn"], pa.bool_()), "images": pa.array(cols["images"], pa.list_(pa.string())),
        "status": pa.array(cols["status"], pa.string()), "error": pa.array(cols["error"], pa.string()),
        "captioned": pa.array(cols["captioned"], pa.list_(_CAPTIONED)),
        "summaries": pa.array(cols["summaries"], pa.list_(pa.string())),
    })


@dataclass
class Descriptions(_UnitTable):
    """A description table read back: each described unit's candidate concepts, best first, and what led to them."""

    table: pa.Table
    _rows: dict[str, list[dict[str, Any]]] | None = field(default=None, repr=False)

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """unit → its rows, best candidate first (a unit without candidates: one row of rank −1)."""
        if self._rows is None:
            rows: dict[str, list[dict[str, Any]]] = {}
            for row in self.table.to_pylist():
                rows.setdefault(row["unit"], []).append(row)
            self._rows = {u: sorted(r, key=lambda x: x["rank"]) for u, r in rows.items()}
        return self._rows

    def ranked(self) -> dict[str, list[tuple[str, float]]]:
        """unit → [(concept, final score), ...], best first, for the units described (not failed, not dead)."""
        return {u: [(r["concept"], r["score"]) for r in rows] for u, rows in self.rows().items()
                if rows[0]["status"] == "ok" and rows[0]["rank"] >= 0}

    def top(self) -> dict[str, tuple[str, float]]:
        return {u: r[0] for u, r in self.ranked().items() if r}

    def failures(self) -> dict[str, tuple[str, str]]:
        """unit → (status, reason) for the units not described (failed or dead)."""
        return {u: (rows[0]["status"], rows[0]["error"] or "") for u, rows in self.rows().items()
                if rows[0]["status"] != "ok" or rows[0]["rank"] < 0}

    def chosen(self) -> dict[str, tuple[str, float]]:
        return self.top()


def score_table(units: Sequence[str], metric: str, values: Sequence[float], dead: Sequence[bool] | None = None) -> pa.Table:
    """One row per unit: a named score of its description (e.g. simulation correlation); ``dead`` units (constant
    on the images scored) have no score (0, marked)."""
    dead = [False] * len(units) if dead is None else [bool(d) for d in dead]
    return pa.table({"unit": pa.array(list(units), pa.string()), "metric": pa.array([metric] * len(units), pa.string()),
                     "value": pa.array(np.asarray(values, np.float32), pa.float32()), "dead": pa.array(dead, pa.bool_())})


@dataclass
class Scores:
    table: pa.Table

    def by_unit(self, metric: str) -> dict[str, float | None]:
        """unit → its score for ``metric`` (None for a dead unit)."""
        return {r["unit"]: None if r.get("dead") else r["value"] for r in self.table.to_pylist() if r["metric"] == metric}

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.table["metric"].to_pylist()))
