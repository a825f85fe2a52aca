"""Garbage collection of the store: datasets no run record names.

Runs never delete or overwrite a committed dataset, so a store only grows; datasets stop being needed when
the run records that name them are deleted (``runs/{run_id}/``), or when they were written by an older
layout of the store. ``collect`` lists every dataset (a folder holding Parquet parts or a ``_SUCCESS.json``),
keeps those any run record or attempt names (a running attempt names its datasets when it starts), and
with ``apply=True`` removes the rest. Nothing under ``runs/`` is ever touched.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from discover_ray.runs import list_runs, referenced_datasets
from discover_ray.store import SUCCESS, Store

__all__ = ["Garbage", "GarbageReport", "collect"]


@dataclass(frozen=True)
class Garbage:
    path: str  # relative to the store root
    files: int
    bytes: int


@dataclass
class GarbageReport:
    datasets: int
    referenced: int
    runs: int
    garbage: list[Garbage] = field(default_factory=list)
    removed: bool = False

    @property
    def garbage_bytes(self) -> int:
        return sum(g.bytes for g in self.garbage)


def collect(store: Store | str, apply: bool = False) -> GarbageReport:
    """The datasets of ``store`` that no run record references (removed when ``apply``)."""
    store = Store.of(store)
    folders: dict[str, list[int]] = {}
    for path, size in store.files().items():
        if path.startswith("runs/") or path == "runs":
            continue
        name = posixpath.basename(path)
        if name == SUCCESS or (name.startswith("part-") and name.endswith(".parquet")) or name.startswith(".tmp-"):
            folders.setdefault(posixpath.dirname(path), []).append(size)
    referenced = referenced_datasets(store)
    garbage = [Garbage(path, len(sizes), sum(sizes)) for path, sizes in sorted(folders.items()) if path not in referenced]
    if apply:
        for item in garbage:
            store.fs.rm(store.path(item.path), recursive=True)
    return GarbageReport(len(folders), len(set(folders) & referenced), len(list_runs(store)), garbage, apply)
