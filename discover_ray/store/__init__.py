"""The output store: immutable, content-addressed datasets under a local path or an fsspec URI (``s3://…``).

A dataset is a directory ``{prefix}/{key}/`` of Parquet parts, where ``key`` is the content hash of
everything that changes its output (see ``pipeline.stage``). Two runs that differ in anything that
matters write to different directories; two that agree share one. A dataset counts as done only once
its ``_SUCCESS.json`` is written, last, after ``commit`` has checked that every expected part is there
with the expected number of rows; after that no run writes to it again (``gc`` is the only thing that
removes datasets). Parts are written atomically (a temporary name renamed into place locally; a single
object put on object stores), so a part is whole or absent, and an interrupted writer of a key leaves
only parts that a resumed writer of the same key would write bit for bit the same.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from discover_ray.errors import DatasetError
from discover_ray.faults import fault_point
from discover_ray.ids import content_id
from discover_ray.schema import VERSIONS, failed_of

__all__ = ["DEFAULT_ROOT", "SUCCESS", "Dataset", "Store", "config_hash", "safe_segment"]

DEFAULT_ROOT = "./discover-runs"
SUCCESS = "_SUCCESS.json"
PART = "part-{:05d}.parquet"


def config_hash(config: Any) -> str:
    """A content id of any JSON-serialisable config (key order does not matter)."""
    return content_id(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str))


def safe_segment(name: str, what: str = "name") -> str:
    """A name that becomes one path segment of the store: no separators, no ``.``/``..``, no control characters."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise DatasetError(f"{what} {name!r} cannot be a path segment of the store (no '/', '..' or control characters)")
    return name


class Store:
    """The store under ``root``; every path it hands out is relative to the root."""

    def __init__(self, root: str = DEFAULT_ROOT, **storage_options: Any):
        self.root = root.rstrip("/") or root
        self.fs, self.base = fsspec.core.url_to_fs(self.root, **storage_options)
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.base, exist_ok=True)

    @classmethod
    def of(cls, store: Store | str) -> Store:
        return store if isinstance(store, Store) else cls(str(store))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def dataset(self, prefix: str, key: str, table: str) -> Dataset:
        """The dataset of ``key`` under ``prefix`` (e.g. ``activations/{checkpoint}/{probe}/{layer}``),
        holding tables of the schema kind ``table``."""
        for segment in prefix.split("/"):
            safe_segment(segment, "path segment")
        return Dataset(self, prefix.strip("/"), safe_segment(key, "key"), table)

    def committed(self, path: str, key: str | None = None) -> Dataset:
        """A committed dataset by its path (``prefix/key``, as a run record names it); checks that its marker
        names the same key, so a record never reads another run's data."""
        prefix, _, last = path.strip("/").rpartition("/")
        marker = Dataset.read_marker(self, path)
        if marker is None:
            raise DatasetError(f"{self.path(path)} is not a complete dataset (no {SUCCESS}); re-run the dissection")
        if marker.get("key") != last or (key is not None and key != last):
            raise DatasetError(f"{self.path(path)} holds dataset {marker.get('key')!r}, not {key or last!r}")
        return Dataset(self, prefix, last, marker.get("table", ""))

    # -- files ---------------------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        return posixpath.join(self.base, relative) if relative else self.base

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file atomically: readers see the old content or the new one, never a part of it."""
        final = self.path(relative)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        if self.is_local:
            temporary = posixpath.join(posixpath.dirname(final), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
            try:
                with self.fs.open(temporary, "wb") as handle:
                    handle.write(data)
                    fault_point("store_write", detail=relative)
                self.fs.mv(temporary, final)
            finally:
                if self.fs.exists(temporary):
                    self.fs.rm(temporary)
        else:  # an object put is atomic on object stores
            with self.fs.open(final, "wb") as handle:
                handle.write(data)
                fault_point("store_write", detail=relative)

    def write_json(self, relative: str, obj: Any, sort_keys: bool = True) -> None:
        self.write_bytes(relative, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str).encode("utf-8"))

    def read_json(self, relative: str) -> Any:
        with self.fs.open(self.path(relative), "rb") as handle:
            return json.loads(handle.read())

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def listdir(self, relative: str) -> list[str]:
        """Names directly under ``relative`` (empty when it does not exist)."""
        directory = self.path(relative)
        if not self.fs.exists(directory):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(directory, detail=False))

    def files(self, relative: str = "") -> dict[str, int]:
        """Every file under ``relative``: its path relative to the root → its size in bytes."""
        base = self.path(relative)
        if not self.fs.exists(base):
            return {}
        prefix = self.base.rstrip("/") + "/"
        found = self.fs.find(base, detail=True)
        return {p.removeprefix(prefix): int(info.get("size") or 0) for p, info in found.items()}


@dataclass(frozen=True)
class Dataset:
    """``{prefix}/{key}/``: ``part-NNNNN.parquet`` files, complete and immutable once ``_SUCCESS.json`` exists."""

    store: Store
    prefix: str
    key: str
    table: str

    @property
    def relative(self) -> str:
        return f"{self.prefix}/{self.key}"

    def part_name(self, index: int) -> str:
        return PART.format(index)

    def part_path(self, index: int) -> str:
        return self.store.path(f"{self.relative}/{self.part_name(index)}")

    def write_part(self, index: int, table: pa.Table, **write_options: Any) -> bool:
        """Write part ``index`` atomically (``write_options`` go to ``pyarrow.parquet.write_table``); returns
        False, writing nothing, when the dataset is committed: a committed dataset is never written again
        (another writer of the same key finished it, with the same bytes)."""
        if self.is_committed():
            return False
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **write_options)
        self.store.write_bytes(f"{self.relative}/{self.part_name(index)}", sink.getvalue().to_pybytes())
        fault_point("part_written", detail=f"{self.relative}/{self.part_name(index)}")
        return True

    def parts(self) -> list[int]:
        """Indices of the parts present, whether or not the dataset is complete."""
        names = self.store.listdir(self.relative)
        return sorted(int(n[5:10]) for n in names if n.startswith("part-") and n.endswith(".parquet"))

    @staticmethod
    def read_marker(store: Store, relative: str) -> dict[str, Any] | None:
        if not store.exists(f"{relative}/{SUCCESS}"):
            return None
        return store.read_json(f"{relative}/{SUCCESS}")

    def marker(self) -> dict[str, Any] | None:
        return self.read_marker(self.store, self.relative)

    def is_committed(self) -> bool:
        """Committed for this key with every part its marker lists still present."""
        marker = self.marker()
        return marker is not None and marker.get("key") == self.key and set(marker.get("parts", [])) <= set(self.parts())

    def part_schema(self, index: int) -> pa.Schema:
        with self.store.fs.open(self.part_path(index), "rb") as handle:
            return pq.read_schema(handle)

    def part_rows(self, index: int) -> tuple[int, int]:
        """(rows, images named as failed in the part's metadata)."""
        with self.store.fs.open(self.part_path(index), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            return parquet.metadata.num_rows, len(failed_of(parquet.schema_arrow))

    def commit(self, expected: Mapping[int, int | None], **extra: Any) -> dict[str, Any]:
        """Check that every expected part is there and holds its rows (``expected``: part → rows plus failed
        images), then write the marker, last. Returns the marker (another writer's, when it committed first)."""
        if self.is_committed():
            return self.marker() or {}
        present = set(self.parts())
        missing = [p for p in expected if p not in present]
        if missing:
            raise DatasetError(f"cannot commit {self.store.path(self.relative)}: parts {missing[:10]} are missing")
        rows = 0
        for part, want in sorted(expected.items()):
            have, failed = self.part_rows(part)
            if want is not None and have + failed != want:
                raise DatasetError(
                    f"cannot commit {self.store.path(self.relative)}: part {part} holds {have} rows and {failed} "
                    f"failed images, {want} were expected"
                )
            rows += have
        marker = {"key": self.key, "table": self.table, "version": VERSIONS.get(self.table), "rows": rows,
                  "parts": sorted(expected), **extra}
        fault_point("before_commit", detail=self.relative)
        self.store.write_json(f"{self.relative}/{SUCCESS}", marker)
        return marker

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All parts as one table; refuses a dataset that is not committed for its key."""
        marker = self.marker()
        if marker is None or marker.get("key") != self.key:
            raise DatasetError(f"{self.store.path(self.relative)} is not a complete dataset (no {SUCCESS})")
        tables = []
        for index in marker["parts"]:
            with self.store.fs.open(self.part_path(index), "rb") as handle:
                tables.append(pq.read_table(handle, columns=columns))
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def read_part(self, index: int, columns: list[str] | None = None) -> pa.Table:
        with self.store.fs.open(self.part_path(index), "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def failed(self) -> list[tuple[str, str, int]]:
        """The images every part names as failed to load."""
        return [f for part in self.parts() for f in failed_of(self.part_schema(part))]

