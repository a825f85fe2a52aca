"""The output store: immutable, content-addressed datasets under a local path or an fsspec URI (``s3://…``).

A dataset is a directory ``{prefix}/{key}/`` of Parquet parts, where ``key`` is the content hash of
everything that changes its output (see ``pipeline.stage``). Two runs that differ in anything that
matters write to different directories; two that agree share one. A dataset counts as done only once
its ``_SUCCESS.json`` is written, last, after ``commit`` has checked that every expected part is there
with the expected number of rows; after that no run writes to it again (``gc`` is the only thing that
removes datasets). Parts are written atomically (a temporary name renamed into place locally; a single
object put, or a multipart upload completed, on object stores), so a part is whole or absent, and an
interrupted writer of a key leaves only parts that a resumed writer of the same key would write bit for
bit the same. A write that fails leaves nothing: its temporary file is removed, its multipart upload
aborted. A writer killed mid-write leaves a temporary file named after its host and pid
(``.tmp-{pid}@{host}@{uuid}-{name}``); the next commit of that dataset (and the next run of that run id)
removes it once that process is gone (or, from another host, once it is older than ``STALE_TEMPORARY_S``).
A multipart upload of a killed writer stays invisible; a bucket lifecycle rule
(``AbortIncompleteMultipartUpload``) frees its storage.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
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

__all__ = ["DEFAULT_ROOT", "SUCCESS", "Dataset", "Store", "config_hash", "is_safe_segment", "safe_segment"]

DEFAULT_ROOT = "./discover-runs"
SUCCESS = "_SUCCESS.json"
PART = "part-{:05d}.parquet"
TEMPORARY = ".tmp-"  # prefix of the temporary files of local writes
STALE_TEMPORARY_S = 3600.0  # a temporary file of another host's writer older than this is abandoned


def config_hash(config: Any) -> str:
    """A content id of any JSON-serialisable config (key order does not matter)."""
    return content_id(json.dumps(config, sort_keys=True, separators=(",", ":"), default=str))


def is_safe_segment(name: str) -> bool:
    """Whether ``name`` can be one path segment of the store: not empty, no separators, not ``.``/``..``, no
    control characters (so a name from a config or the command line can never reach outside its folder)."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and \
        not any(ord(c) < 32 or ord(c) == 127 for c in name)


def safe_segment(name: str, what: str = "name") -> str:
    """A name that becomes one path segment of the store (see ``is_safe_segment``)."""
    if not is_safe_segment(name):
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
        """Write a file atomically: readers see the old content or the new one, never a part of it; a write that
        fails (a full disk, an upload refused) leaves nothing behind and raises its own error."""
        final = self.path(relative)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        if self.is_local:
            name = f"{TEMPORARY}{os.getpid()}@{socket.gethostname()}@{uuid.uuid4().hex}-{posixpath.basename(final)}"
            temporary = posixpath.join(posixpath.dirname(final), name)
            try:
                with self.fs.open(temporary, "wb") as handle:
                    handle.write(data)
                    fault_point("store_write", detail=relative)
                self.fs.mv(temporary, final)
            except Exception as err:
                _note_failed_write(err, final)
                raise
            finally:
                try:
                    if os.path.lexists(temporary):
                        os.remove(temporary)
                except OSError:
                    pass  # never hide the write's own error behind the clean-up's; the next commit sweeps it
            return
        # object stores: one put when small; a multipart upload (s3fs block size) when large, visible only once
        # completed. The handle is closed by hand: a `with` would complete the upload even when the write failed.
        handle = self.fs.open(final, "wb")
        try:
            handle.write(data)
            fault_point("store_write", detail=relative)
            handle.close()
        except BaseException as err:
            _abandon(handle)
            if isinstance(err, Exception):
                _note_failed_write(err, f"{self.root.split('://', 1)[0]}://{final}" if "://" in self.root else final)
            raise

    def sweep_temporaries(self, relative: str, recursive: bool = False) -> list[str]:
        """Remove the temporary files that killed writers left under ``relative`` (local stores; object stores
        have none): those of a process of this host that is gone, and those older than ``STALE_TEMPORARY_S``.
        Returns what was removed."""
        directory = self.path(relative)
        if not self.is_local or not os.path.isdir(directory):
            return []
        if recursive:
            candidates = [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]
        else:
            candidates = [os.path.join(directory, n) for n in os.listdir(directory)]
        removed = []
        for path in candidates:
            name = os.path.basename(path)
            if not name.startswith(TEMPORARY) or not _abandoned(name, path):
                continue
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    def write_json(self, relative: str, obj: Any, sort_keys: bool = True) -> None:
        self.write_bytes(relative, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str).encode("utf-8"))

    def read_json(self, relative: str) -> Any:
        """One whole read (a single GET on object stores: an open would fail with ``FileExpired`` when another
        writer replaces the file between its HEAD and its GET, as a lease renewal or an attempt record does)."""
        return json.loads(self.fs.cat_file(self.path(relative)))

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
        images), then write the marker, last. Returns the marker (another writer's, when it committed first).
        Temporary files that killed writers of this dataset left are removed here."""
        self.store.sweep_temporaries(self.relative)
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


def _note_failed_write(err: Exception, where: str) -> None:
    """Say which file failed and that nothing of it was kept; the error itself (its type, its message) stays."""
    err.add_note(f"writing {where} failed and left nothing of it (no partial file); fix the cause (free space, "
                 "access to the store) and re-run: what was finished is kept and only the rest is computed")


def _abandon(handle: Any) -> None:
    """Throw away a write in progress on an object store: abort its multipart upload, so nothing becomes
    visible, and keep the handle from completing it when it is closed or collected."""
    try:
        handle.discard()
    except Exception:
        pass  # the upload may be gone already; the write's own error is the one to report
    try:
        handle.closed = True
    except (AttributeError, TypeError):
        pass


def _abandoned(name: str, path: str) -> bool:
    """Whether a temporary file's writer is gone: its process of this host no longer exists, or the file is old."""
    owner = name[len(TEMPORARY):].split("@", 2)
    if len(owner) == 3 and owner[0].isdigit() and owner[1] == socket.gethostname():
        try:
            os.kill(int(owner[0]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    try:
        return os.path.getmtime(path) < time.time() - STALE_TEMPORARY_S
    except FileNotFoundError:
        return False
