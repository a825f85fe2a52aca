"""The output store: the run layout under a local path or an fsspec URI (``s3://bucket/prefix``).

Each dataset is a directory of Parquet parts that counts as done only once its ``_SUCCESS.json``
marker is written, last. Parts are written atomically (a temporary name renamed into place locally; a
single object put on object stores, which appears whole or not at all), so nothing half-written is
ever read as done, and a re-run that rewrites a part replaces it instead of adding rows.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from discover_ray.ids import content_id

__all__ = ["DEFAULT_ROOT", "Dataset", "Store", "config_hash"]

DEFAULT_ROOT = "./discover-runs"
SUCCESS = "_SUCCESS.json"
STARTED = "_STARTED.json"


def config_hash(config: Any) -> str:
    """A content id of any JSON-serialisable config (key order does not matter)."""
    return content_id(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str))


class Store:
    """The layout of architecture.md under ``root``; every path it hands out is relative to the root."""

    def __init__(self, root: str = DEFAULT_ROOT, **storage_options: Any):
        self.root = root.rstrip("/") or root
        self.fs, self.base = fsspec.core.url_to_fs(self.root, **storage_options)
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.base, exist_ok=True)

    # -- the layout --------------------------------------------------------------------------------
    def image_embeddings(self, encoder_id: str, probe_id: str) -> Dataset:
        return self.dataset(f"embeddings/{encoder_id}/images/{probe_id}")

    def concept_embeddings(self, encoder_id: str, concept_set_id: str) -> Dataset:
        return self.dataset(f"embeddings/{encoder_id}/concepts/{concept_set_id}")

    def pixels(self, probe_id: str, format_id: str) -> Dataset:
        """Decoded probe images in one preprocessing's input geometry (``probe.pixels.PixelFormat``)."""
        return self.dataset(f"pixels/{probe_id}/{format_id}")

    def activations(self, checkpoint_id: str, probe_id: str, layer: str) -> Dataset:
        return self.dataset(f"activations/{checkpoint_id}/{probe_id}/{_safe(layer)}")

    def labels(
        self, checkpoint_id: str, probe_id: str, layer: str, method: str, concept_set_id: str, encoder_id: str
    ) -> Dataset:
        return self.dataset(
            f"labels/{checkpoint_id}/{probe_id}/{_safe(layer)}/{method}__{concept_set_id}__{encoder_id}"
        )

    def run_dir(self, run_id: str) -> str:
        return self.path(f"runs/{run_id}")

    # -- plumbing ----------------------------------------------------------------------------------
    def dataset(self, relative: str) -> Dataset:
        return Dataset(self, relative.strip("/"))

    def path(self, relative: str) -> str:
        return posixpath.join(self.base, relative) if relative else self.base

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file atomically: readers see the old content or the new one, never a part of it."""
        final = self.path(relative)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            temporary = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
            try:
                with self.fs.open(temporary, "wb") as handle:
                    handle.write(data)
                self.fs.mv(temporary, final)
            finally:
                if self.fs.exists(temporary):
                    self.fs.rm(temporary)
        else:  # an object put is atomic on object stores
            with self.fs.open(final, "wb") as handle:
                handle.write(data)

    def write_json(self, relative: str, obj: Any) -> None:
        self.write_bytes(relative, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def read_json(self, relative: str) -> Any:
        with self.fs.open(self.path(relative), "rb") as handle:
            return json.loads(handle.read())

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))


@dataclass(frozen=True)
class Dataset:
    """A directory of ``part-NNNNN.parquet`` files, complete once ``_SUCCESS.json`` exists."""

    store: Store
    relative: str

    def part_name(self, index: int) -> str:
        return f"part-{index:05d}.parquet"

    def write_part(self, index: int, table: pa.Table, **write_options: Any) -> None:
        """Write (or replace) part ``index`` atomically; the dataset is marked incomplete first.
        ``write_options`` go to ``pyarrow.parquet.write_table`` (row group size, compression)."""
        self.invalidate()
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **write_options)
        self.store.write_bytes(f"{self.relative}/{self.part_name(index)}", sink.getvalue().to_pybytes())

    def parts(self) -> list[int]:
        """Indices of the parts present, whether or not the dataset is complete."""
        directory = self.store.path(self.relative)
        if not self.store.fs.exists(directory):
            return []
        names = [posixpath.basename(p) for p in self.store.fs.ls(directory, detail=False)]
        return sorted(int(n[5:10]) for n in names if n.startswith("part-") and n.endswith(".parquet"))

    def missing_parts(self, expected: Iterable[int]) -> list[int]:
        present = set(self.parts())
        return [i for i in expected if i not in present]

    def begin(self, config_hash: str) -> list[int]:
        """Start (or resume) writing this dataset for ``config_hash``; returns the parts that can be kept.

        Parts left by an interrupted run of the same config are kept (resume); parts written for another
        config, complete or not, are removed first, so a dataset never mixes two configs.
        """
        marker = self.marker()
        started = self.store.read_json(f"{self.relative}/{STARTED}") if self.store.exists(f"{self.relative}/{STARTED}") else None
        owner = (marker or started or {}).get("config_hash")
        if owner is not None and owner != config_hash:
            self.invalidate()
            for index in self.parts():
                self.store.fs.rm(self.store.path(f"{self.relative}/{self.part_name(index)}"))
        if marker is None or owner != config_hash:
            self.store.write_json(f"{self.relative}/{STARTED}", {"config_hash": config_hash})
        return self.parts()

    def commit(self, config_hash: str, rows: int, schema: pa.Schema | None = None, **extra: Any) -> None:
        """Write the marker, last: the parts now form a complete dataset for this config."""
        marker = {"config_hash": config_hash, "rows": rows, "parts": self.parts(), **extra}
        if schema is not None:
            marker["schema"] = schema.to_string(show_schema_metadata=False)
        self.store.write_json(f"{self.relative}/{SUCCESS}", marker)

    def marker(self) -> dict[str, Any] | None:
        if not self.store.exists(f"{self.relative}/{SUCCESS}"):
            return None
        return self.store.read_json(f"{self.relative}/{SUCCESS}")

    def is_complete(self, config_hash: str | None = None) -> bool:
        """Done, and (when given) done for this very config: a changed config means redo; a missing part
        means the dataset is resumed (only that part is redone)."""
        marker = self.marker()
        if marker is None or (config_hash is not None and marker.get("config_hash") != config_hash):
            return False
        return set(marker.get("parts", [])) <= set(self.parts())  # a part deleted since counts as not done

    def invalidate(self) -> None:
        """Remove the marker so that readers stop treating the dataset as done."""
        path = self.store.path(f"{self.relative}/{SUCCESS}")
        if self.store.fs.exists(path):
            self.store.fs.rm(path)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All parts as one table; refuses a dataset that was never committed."""
        marker = self.marker()
        if marker is None:
            raise FileNotFoundError(f"{self.store.path(self.relative)} is not a complete dataset (no {SUCCESS})")
        tables = []
        for index in marker["parts"]:
            with self.store.fs.open(self.store.path(f"{self.relative}/{self.part_name(index)}"), "rb") as handle:
                tables.append(pq.read_table(handle, columns=columns))
        return pa.concat_tables(tables) if tables else pa.table({})


def _safe(layer: str) -> str:
    """Layer names become one path segment: dotted names are kept, path separators are not allowed."""
    if not layer or "/" in layer or layer in (".", ".."):
        raise ValueError(f"layer name {layer!r} cannot be a path segment")
    return layer
