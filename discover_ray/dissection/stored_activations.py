"""A recorded layer as a reference that tasks read where they run, so the driver never holds the layer.

At N = 50 000 images and K = 2 048 units a layer is 400 MB of float32; loaded on the driver and put in
Ray's object store it would sit in the driver's memory, in the store and in each worker. REDUCE instead
hands its tasks a ``StoredActivations``: the dataset's path, the rows aligned with the concept source's
P, and the layer's width (read from the dataset's marker). A worker reads the parts itself, column
batches straight into one preallocated array, and keeps the last layer it read for the next task on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from discover_ray.errors import DatasetError
from discover_ray.schema import unit_columns
from discover_ray.store import Store

__all__ = ["StoredActivations"]

_lock = threading.Lock()
_last: tuple[tuple[Any, ...], np.ndarray] | None = None  # this process's last layer read (tasks of a layer share it)


@dataclass(frozen=True, eq=False)
class StoredActivations:
    """Where a committed activation dataset is and which of its rows a stage uses (``rows``: None for all)."""

    store_root: str
    path: str  # the dataset, relative to the store root (``activations/…/{key}``)
    units: int
    images: int  # rows of the dataset (every part)
    rows: np.ndarray | None = None  # row positions kept, in order (images unreadable for the concept source dropped)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.images if self.rows is None else len(self.rows), self.units)

    def _cache_key(self) -> tuple[Any, ...]:
        rows = None if self.rows is None else (len(self.rows), hash(self.rows.tobytes()))
        return (self.store_root, self.path, rows)

    def load(self) -> np.ndarray:
        """The values [rows, units] as float32, read in this process (once per layer and process)."""
        global _last
        key = self._cache_key()
        with _lock:
            if _last is not None and _last[0] == key:
                return _last[1]
            _last = None  # the previous layer goes before this one is read
            values = self._read()
            _last = (key, values)
            return values

    def _read(self) -> np.ndarray:
        store = Store(self.store_root)
        dataset = store.committed(self.path)
        marker = dataset.marker() or {}
        values = np.empty((self.images, self.units), dtype=np.float32)
        at = 0
        for part in marker.get("parts", []):
            with store.fs.open(dataset.part_path(part), "rb") as handle:
                parquet = pq.ParquetFile(handle)
                units = unit_columns(parquet.schema_arrow.names)
                if len(units) != self.units and parquet.metadata.num_rows:
                    raise DatasetError(f"{store.path(self.path)} part {part} has {len(units)} units, the layer {self.units}")
                for batch in parquet.iter_batches(batch_size=8192, columns=units):
                    n = batch.num_rows
                    for j, column in enumerate(batch.columns):
                        values[at : at + n, j] = column.to_numpy(zero_copy_only=False)
                    at += n
        if at != self.images:
            raise DatasetError(f"{store.path(self.path)} holds {at} rows, its marker {self.images}")
        if self.rows is not None and (len(self.rows) != self.images or not np.array_equal(self.rows, np.arange(self.images))):
            values = np.ascontiguousarray(values[self.rows])
        return values
