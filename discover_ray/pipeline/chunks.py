"""A model pass over the probe set, cut into fixed chunks: loading them, running heads on them, gathering shards.

The unit of work is a fixed chunk of a shard (``batch_size`` images in id order), so a model always sees
the same batches whatever ran before, on whichever worker: outputs are bit-identical across re-runs,
resumes and executors. A chunk is loaded by decoding its images or by reading them, already decoded,
from the store's pixel cache (``ChunkSource``). Executors run ``ChunkSource`` and the heads where they
like (in this process, or in Ray actors) and hand every finished chunk to a ``ShardAssembler``, which
yields each shard once all its chunks are back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from discover_ray.errors import InputChanged, ProbeError
from discover_ray.faults import fault_point
from discover_ray.pipeline.stage import Head, ShardOutput
from discover_ray.probe import ProbeSet, decode_images
from discover_ray.probe.pixels import PixelFormat, split_preprocess
from discover_ray.schema import failed_of, read_pixels
from discover_ray.store import Store

__all__ = ["CARRIED", "ChunkSource", "Heads", "LoadThen", "ModelPass", "PixelCache", "ProbeHandle", "ShardAssembler",
           "chunk_ids", "chunk_rows"]
CARRIED = ("shard", "chunk", "image_ids", "failed")  # what a chunk carries besides its pixels and outputs


@dataclass(frozen=True)
class ProbeHandle:
    """What workers open the probe set from: its config, not its image list.

    A probe set of a million images pickles to tens of megabytes; shipped as actor constructor arguments
    it would sit in the object store, which Ray warns breaks actor restarts (ray#53727). The opened set
    is checked against the driver's, so a source that changed under a run fails clearly.
    """

    config: Any  # config.ProbeConfig
    size: int
    first: str
    last: str

    @classmethod
    def of(cls, config: Any, probe: ProbeSet) -> ProbeHandle:
        return cls(config, len(probe), probe.images[0].image_id, probe.images[-1].image_id)

    def open(self) -> ProbeSet:
        probe = self.config.open()
        if (len(probe), probe.images[0].image_id, probe.images[-1].image_id) != (self.size, self.first, self.last):
            raise InputChanged(
                f"the probe set {self.config.source!r} changed during the run ({len(probe)} images, the run started "
                f"with {self.size}); re-run the dissection"
            )
        return probe


@dataclass(frozen=True)
class PixelCache:
    """Where one preprocessing's decoded pixels live in the store, and which shards are there already."""

    store_root: str
    relative: str
    format: PixelFormat
    cached: frozenset[int]


@dataclass
class ModelPass:
    """One pass over (some shards of) the probe set: one loader, any number of heads."""

    probe: ProbeHandle
    images: int
    shard_size: int
    batch_size: int
    shards: list[int]
    preprocess: Callable[[Any], torch.Tensor]
    heads: list[Head]
    cache: PixelCache | None
    raw_shards: frozenset[int]  # decoded shards whose uint8 pixels come back too (to fill the cache)
    failure_budget: float

    def rows(self) -> list[dict[str, int]]:
        return chunk_rows(self.images, self.shard_size, self.shards, self.batch_size)

    def source(self) -> ChunkSource:
        return ChunkSource(self.probe, self.preprocess, self.cache, self.raw_shards)


def chunk_rows(images: int, shard_size: int, shards: Sequence[int], batch_size: int) -> list[dict[str, int]]:
    rows = []
    for shard in shards:
        first = shard * shard_size
        last = min(first + shard_size, images)
        for chunk, start in enumerate(range(first, last, batch_size)):
            rows.append({"shard": shard, "chunk": chunk, "start": start, "stop": min(start + batch_size, last)})
    return rows


class ChunkSource:
    """Turns a chunk's row into model-ready float32 ``pixels``, by decoding its images or, when its shard is
    in the ``PixelCache``, from the cached uint8 pixels.

    Decoded chunks of ``raw_shards`` also carry their uint8 ``raw`` pixels, so the driver can fill the
    cache while the pass runs. Both ways give the same tensors (``PixelFormat.to_tensor`` is the
    transform's arithmetic). Opened lazily, in the process that runs it.
    """

    def __init__(self, probe: ProbeSet | ProbeHandle, preprocess: Callable[[Any], torch.Tensor],
                 cache: PixelCache | None = None, raw_shards: frozenset[int] = frozenset()):
        self.source, self.preprocess, self.cache, self.raw_shards = probe, preprocess, cache, raw_shards
        self._probe: ProbeSet | None = None
        self._store: Store | None = None
        self._split: tuple[PixelFormat | None] | None = None  # the transform's split, once worked out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for position in range(int(batch["start"][0]), int(batch["stop"][0])):
            fault_point("image", index=position)
        if self.cache is not None and int(batch["shard"][0]) in self.cache.cached:
            return self._read(batch)
        return self._decode(batch)

    def _decode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each image is cut to the model's input geometry as soon as it is decoded (the transform's head, JPEGs
        far larger than that draft-decoded), so a chunk never holds images at full resolution; the same steps
        in the same order as on whole chunks, so the pixels are the same. Unreadable images are listed, not
        raised (the failure budget is probe-wide)."""
        if self._probe is None:
            self._probe = self.source.open() if isinstance(self.source, ProbeHandle) else self.source
        start, stop = int(batch["start"][0]), int(batch["stop"][0])
        images = self._probe.images[start:stop]
        fmt = self._format()
        if fmt is not None:
            decoded = decode_images(self._probe, images, failure_budget=1.0, draft=fmt.draft_size,
                                    convert=lambda image: fmt.apply(image.convert("RGB")))
        else:  # a transform that does not split: all of it, image by image
            decoded = decode_images(self._probe, images, failure_budget=1.0,
                                    convert=lambda image: self.preprocess(image.convert("RGB")))
        position = {im.image_id: start + i for i, im in enumerate(images)}
        out = _chunk(batch, [im.image_id for im in decoded.kept], [(i, why, position[i]) for i, why in decoded.failed])
        raw = fmt.stack(decoded.images) if fmt is not None else None
        if raw is not None:
            if self.cache is not None and int(batch["shard"][0]) in self.raw_shards:
                out["raw"] = raw[None]
            out["pixels"] = fmt.to_tensor(raw).numpy()[None]
        elif decoded.images:
            tail = self._tail(fmt)
            out["pixels"] = torch.stack([tail(head) for head in decoded.images]).numpy()[None]
        else:
            out["pixels"] = np.zeros((1, 0, 3, 1, 1), dtype=np.float32)
        return out

    def _format(self) -> PixelFormat | None:
        """The cache's pixel format, else the transform's head and tail (``None``: it does not split)."""
        if self.cache is not None:
            return self.cache.format
        if self._split is None:
            self._split = (split_preprocess(self.preprocess),)
        return self._split[0]

    def _tail(self, fmt: PixelFormat | None) -> Callable[[Any], torch.Tensor]:
        """What of the transform is left to run on one decoded image: the steps after the head (the head's
        outputs differ in size or mode, so they are not stacked first), or nothing (it all ran)."""
        if fmt is None:
            return lambda done: done
        steps = list(getattr(self.preprocess, "transforms", ()))
        assert [repr(s) for s in steps[: len(fmt.head)]] == [repr(s) for s in fmt.head], "the cache is of another head"
        from torchvision import transforms as T

        return T.Compose(steps[len(fmt.head):])

    def _read(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The chunk's rows of its shard's cache part: only the row groups it overlaps are read."""
        cache = self.cache
        assert cache is not None
        if self._store is None:
            self._store = Store(cache.store_root)
        shard, start, stop = int(batch["shard"][0]), int(batch["start"][0]), int(batch["stop"][0])
        part = self._store.path(f"{cache.relative}/part-{shard:05d}.parquet")
        with self._store.fs.open(part, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            groups = _overlapping_groups(parquet.metadata, start, stop)
            table = parquet.read_row_groups(groups, columns=["image_id", "index", "pixels"]) if groups else None
        failed = [f for f in failed_of(schema) if start <= f[2] < stop]
        if table is None or table.num_rows == 0:
            return {**_chunk(batch, [], failed), "pixels": np.zeros((1, 0, 3, 1, 1), dtype=np.float32)}
        index = table["index"].to_numpy()
        table = table.filter(pa.array((index >= start) & (index < stop)))
        ids, pixels = read_pixels(table, schema)
        return {**_chunk(batch, ids, failed), "pixels": cache.format.to_tensor(pixels).numpy()[None]}


def _overlapping_groups(metadata: pq.FileMetaData, start: int, stop: int) -> list[int]:
    """Row groups whose ``index`` range meets [start, stop) (from their statistics; all if there are none)."""
    column = metadata.schema.names.index("index")
    groups = []
    for g in range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or (stats.min < stop and stats.max >= start):
            groups.append(g)
    return groups


def _chunk(batch: dict[str, np.ndarray], ids: list[str], failed: list[tuple[str, str, int]]) -> dict[str, np.ndarray]:
    return {
        "shard": batch["shard"],
        "chunk": batch["chunk"],
        "image_ids": np.array([json.dumps(ids)], dtype=object),
        "failed": np.array([json.dumps(failed)], dtype=object),
    }


def chunk_ids(batch: dict[str, np.ndarray]) -> list[str]:
    """The image ids a loaded chunk holds (JSON: ids may contain any character, newlines included)."""
    return json.loads(str(batch["image_ids"][0]))


class Heads:
    """Every head of a pass in one worker: each runs on the chunks of its own shards; outputs are keyed
    ``{head}:{name}``. A lock keeps forward passes one at a time, each with all of the worker's threads."""

    def __init__(self, heads: Sequence[Head], threads: int):
        self.heads = [(h.name, h.shards, h.actor(**h.kwargs, threads=threads)) for h in heads]
        self.lock = threading.Lock()

    def __call__(self, loaded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: loaded[k] for k in (*CARRIED, "raw") if k in loaded}
        shard = int(loaded["shard"][0])
        with self.lock:
            for name, shards, actor in self.heads:
                if shard in shards:
                    for key, value in actor(loaded).items():
                        out[f"{name}:{key}"] = value
        return out


class LoadThen:
    """Loads its chunk itself, then runs the heads on it: one worker does both (CPU-only clusters, and the
    in-process executor). Two calls may run at once, so the next chunk loads while this one runs."""

    CONCURRENT_CALLS = 2

    def __init__(self, source: ChunkSource, heads: Sequence[Head], threads: int):
        self.source = source
        self.heads = Heads(heads, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.heads(self.source(batch))


class ShardAssembler:
    """Gathers finished chunks into shards (in chunk order), enforcing the probe-wide failure budget."""

    def __init__(self, model_pass: ModelPass):
        self.expected: dict[int, int] = {}
        for row in model_pass.rows():
            self.expected[row["shard"]] = self.expected.get(row["shard"], 0) + 1
        self.pending: dict[int, dict[int, dict[str, Any]]] = {}
        self.failed_total = 0
        self.images = model_pass.images
        self.allowed = model_pass.failure_budget * model_pass.images
        self.budget = model_pass.failure_budget

    def add(self, chunk: dict[str, np.ndarray]) -> ShardOutput | None:
        """Takes one chunk's outputs (arrays with a leading axis of 1); returns its shard once whole."""
        shard, index = int(chunk["shard"][0]), int(chunk["chunk"][0])
        failed = [(str(i), str(why), int(at)) for i, why, at in json.loads(str(chunk["failed"][0]))]
        self.failed_total += len(failed)
        if self.failed_total > self.allowed:
            shown = "; ".join(f"{i} ({why})" for i, why, _ in failed[:3])
            raise ProbeError(
                f"more than {self.budget:.2%} of the {self.images} probe images could not be decoded "
                f"({self.failed_total} so far, e.g. {shown}); fix or remove them, or raise probe.failure_budget"
            )
        ids = chunk_ids(chunk)
        arrays = {k: np.asarray(v[0]) for k, v in chunk.items() if k not in CARRIED}
        self.pending.setdefault(shard, {})[index] = {"ids": ids, "failed": failed, "arrays": arrays}
        if len(self.pending[shard]) < self.expected[shard]:
            return None
        done = self.pending.pop(shard)
        chunks = [done[c] for c in range(self.expected[shard])]
        loaded = [c for c in chunks if c["ids"]]  # a chunk with no readable image has no outputs
        names = list(dict.fromkeys(n for c in loaded for n in c["arrays"]))
        joined = {n: np.concatenate([c["arrays"][n] for c in loaded if n in c["arrays"]]) for n in names}
        outputs: dict[str, dict[str, np.ndarray]] = {}
        for name, value in joined.items():
            if ":" in name:
                head, key = name.split(":", 1)
                outputs.setdefault(head, {})[key] = value
        return ShardOutput(shard, [i for c in chunks for i in c["ids"]], outputs,
                           [f for c in chunks for f in c["failed"]], joined.get("raw"))

    def run(self, chunks: Iterator[dict[str, np.ndarray]], on_images: Callable[[int], None] | None = None) -> Iterator[ShardOutput]:
        for chunk in chunks:
            done = self.add(chunk)
            if on_images is not None:
                on_images(len(chunk_ids(chunk)) + len(json.loads(str(chunk["failed"][0]))))
            if done is not None:
                yield done
