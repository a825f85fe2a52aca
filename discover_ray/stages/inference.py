"""Sharded batch inference over a probe set with Ray Data: chunk loaders feed an actor pool.

A chunk is loaded by decoding its images or by reading them, already decoded, from the store's pixel
cache (``ChunkSource``): on GPU nodes in loader actors of their own, on CPU-only clusters inside the
inference actor.

The unit of work is a fixed chunk of a shard (``batch_size`` images in id order), so a model always
sees the same batches whatever ran before, on whichever actor: outputs are bit-identical across
re-runs and resumes. The driver gathers chunks per shard and hands each complete shard to a writer,
so part files are named by shard index and appear atomically, one per shard.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from discover_ray.config import ProbeConfig
from discover_ray.probe import ProbeError, ProbeSet, decode_images, preprocess_batch
from discover_ray.probe.pixels import PixelFormat
from discover_ray.stages.cluster import Resources
from discover_ray.store import Store


@dataclass
class ShardOutput:
    """One finished shard: the ids that were decoded, each output as an array aligned with them."""

    shard: int
    image_ids: list[str]
    outputs: dict[str, np.ndarray]
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Pool:
    """How wide the actor pool is and what each actor reserves."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    read_cpus: float
    readers: int
    torch_threads: int


def plan_pool(
    resources: Resources,
    actors: int | None,
    actor_cpus: float | None,
    read_cpus: float,
    readers: int | None,
    threads: int | None,
) -> Pool:
    """One inference actor per GPU, fed by up to ``readers`` decode actors (decoding 224 px JPEGs fast
    enough for a GPU takes several cores). On CPU-only clusters one actor with fractional CPUs that
    decodes its own chunks (``readers=0``), leaving headroom: an actor pool that holds every CPU stalls
    the pipeline."""
    if resources.has_gpu:
        n = actors or int(resources.gpus)
        cpus = actor_cpus if actor_cpus is not None else 1.0
        return Pool(n, cpus, 1.0, read_cpus, readers if readers is not None else 4 * n, threads or 4)
    n = actors or 1
    cpus = actor_cpus if actor_cpus is not None else 0.5
    n_readers = readers if readers is not None else 0
    if n * cpus + n_readers * read_cpus > resources.cpus:
        raise ValueError(
            f"{n} actors × {cpus} CPUs plus {n_readers} readers × {read_cpus} exceed the cluster's "
            f"{resources.cpus:g} CPUs; lower ray.actors / ray.actor_cpus / ray.readers / ray.read_cpus"
        )
    return Pool(n, cpus, 0.0, read_cpus, n_readers, threads or max(1, int(resources.cpus) // n))


@dataclass(frozen=True)
class ProbeHandle:
    """What the actors need to open the probe set themselves: its config, not its image list.

    A probe set of a million images pickles to tens of megabytes; shipped as actor constructor
    arguments it would sit in the object store, which Ray warns breaks actor restarts (ray#53727).
    The opened set is checked against the driver's, so a source that changed under a run fails clearly.
    """

    config: ProbeConfig
    size: int
    first: str
    last: str

    @classmethod
    def of(cls, config: ProbeConfig, probe: ProbeSet) -> ProbeHandle:
        return cls(config, len(probe), probe.images[0].image_id, probe.images[-1].image_id)

    def open(self) -> ProbeSet:
        probe = self.config.open()
        if (len(probe), probe.images[0].image_id, probe.images[-1].image_id) != (self.size, self.first, self.last):
            raise ProbeError(
                f"the probe set {self.config.source!r} changed during the run ({len(probe)} images, the run started "
                f"with {self.size}); re-run the dissection"
            )
        return probe


def _opened(probe: ProbeSet | ProbeHandle) -> ProbeSet:
    return probe.open() if isinstance(probe, ProbeHandle) else probe


def chunk_rows(probe: ProbeSet, shard_size: int, shards: list[int], batch_size: int) -> list[dict[str, int]]:
    rows = []
    for shard in shards:
        first = shard * shard_size
        last = min(first + shard_size, len(probe))
        for chunk, start in enumerate(range(first, last, batch_size)):
            rows.append({"shard": shard, "chunk": chunk, "start": start, "stop": min(start + batch_size, last)})
    return rows


CARRIED = ("shard", "chunk", "image_ids", "failed", "raw")  # what an actor passes on with its outputs


def carried(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys of a loaded chunk that every inference actor hands back unchanged."""
    return {k: batch[k] for k in CARRIED if k in batch}


@dataclass(frozen=True)
class PixelCache:
    """Where a preprocessing's decoded pixels live in the store (the dataset ``relative`` begun for
    ``key``), and which of its shards are there already."""

    store_root: str
    relative: str
    key: str
    format: PixelFormat
    cached: frozenset[int]


class ChunkSource:
    """Turns a chunk's row into model-ready float32 ``pixels``, by decoding its images or, with a
    ``PixelCache``, from the cached uint8 pixels of its shard when they are there.

    Decoded chunks also carry their uint8 ``raw`` pixels when a cache is given, so the driver can fill
    the cache while the stage runs: every later model with the same preprocessing reads instead of
    decoding. Both ways give the same tensors (``PixelFormat.to_tensor`` is the transform's arithmetic).
    Opened lazily, in the process that runs it: the probe set and its open Parquet row groups are set up
    once per actor.
    """

    def __init__(self, probe: ProbeSet | ProbeHandle, preprocess: Callable[[Any], torch.Tensor], cache: PixelCache | None = None):
        self.source, self.preprocess, self.cache = probe, preprocess, cache
        self._probe: ProbeSet | None = None
        self._store: Store | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.cache is not None and int(batch["shard"][0]) in self.cache.cached:
            return self._read(batch)
        return self._decode(batch)

    def _decode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Unreadable images are listed, not raised (the budget is probe-wide)."""
        if self._probe is None:
            self._probe = _opened(self.source)
        start, stop = int(batch["start"][0]), int(batch["stop"][0])
        decoded = decode_images(self._probe, self._probe.images[start:stop], failure_budget=1.0)
        out = _chunk(batch, [im.image_id for im in decoded.kept], decoded.failed)
        raw = self.cache.format.to_uint8(decoded.images) if self.cache is not None else None
        if raw is not None:
            out["raw"] = raw[None]
            out["pixels"] = self.cache.format.to_tensor(raw).numpy()[None]
        elif decoded.images:
            out["pixels"] = preprocess_batch(decoded.images, self.preprocess).numpy()[None]
        else:
            out["pixels"] = np.zeros((1, 0, 3, 1, 1), dtype=np.float32)
        return out

    def _read(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The chunk's rows of its shard's cache part: only the row groups it overlaps are read."""
        cache = self.cache
        assert cache is not None
        if self._store is None:
            self._store = Store(cache.store_root)
        shard, start, stop = int(batch["shard"][0]), int(batch["start"][0]), int(batch["stop"][0])
        part = self._store.path(f"{cache.relative}/{self._store.dataset(cache.relative).part_name(shard)}")
        with self._store.fs.open(part, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            meta = parquet.schema_arrow.metadata or {}
            groups = _overlapping_groups(parquet.metadata, start, stop)
            table = parquet.read_row_groups(groups, columns=["image_id", "index", "pixels"]) if groups else None
        failed = [(i, why) for i, why, at in json.loads(meta.get(b"discover.failed", b"[]")) if start <= at < stop]
        if table is None or table.num_rows == 0:
            return {**_chunk(batch, [], failed), "pixels": np.zeros((1, 0, 3, 1, 1), dtype=np.float32)}
        index = table["index"].to_numpy()
        table = table.filter(pa.array((index >= start) & (index < stop)))
        shape = json.loads(meta[b"discover.shape"])
        width = int(np.prod(shape))
        flat = table["pixels"].combine_chunks()
        data = np.frombuffer(flat.buffers()[1], dtype=np.uint8)[flat.offset * width : (flat.offset + len(flat)) * width]
        pixels = cache.format.to_tensor(data.reshape(len(flat), *shape)).numpy()
        return {**_chunk(batch, table["image_id"].to_pylist(), failed), "pixels": pixels[None]}


PIXEL_ROW_GROUP = 256


def pixel_table(image_ids: list[str], positions: list[int], raw: np.ndarray, failed: list[tuple[str, str, int]]) -> pa.Table:
    """One shard's cache part: image_id, its position in the probe set and its uint8 pixels (H, W, 3);
    the images that failed to decode are named, with their reason and position, in the metadata."""
    shape = list(raw.shape[1:])
    width = int(np.prod(shape)) if len(raw) else 1
    table = pa.table({
        "image_id": pa.array(image_ids, pa.string()),
        "index": pa.array(positions, pa.int64()),
        "pixels": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(image_ids), [None, pa.py_buffer(np.ascontiguousarray(raw).tobytes())]),
    })
    return table.replace_schema_metadata({"discover.shape": json.dumps(shape), "discover.failed": json.dumps(failed)})


def _overlapping_groups(metadata: pq.FileMetaData, start: int, stop: int) -> list[int]:
    """Row groups whose ``index`` range meets [start, stop) (from their statistics; all if there are none)."""
    column = metadata.schema.names.index("index")
    groups = []
    for g in range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or (stats.min < stop and stats.max >= start):
            groups.append(g)
    return groups


def _chunk(batch: dict[str, np.ndarray], ids: list[str], failed: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    return {
        "shard": batch["shard"],
        "chunk": batch["chunk"],
        "image_ids": np.array(["\n".join(ids)], dtype=object),
        "failed": np.array([json.dumps(failed)], dtype=object),
    }


class ChunkLoader:
    """A Ray Data actor that only loads chunks (a ``ChunkSource``), feeding GPU actors."""

    def __init__(self, loader: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
        torch.set_num_threads(1)
        self.loader = loader

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.loader(batch)


class LoadThen:
    """A Ray Data actor that loads its chunk itself, then runs ``actor`` on it.

    Used on CPU-only clusters: there, separate decode actors only compete with the forward pass for the
    same cores (and an OpenMP forward pass stalls whenever one of its threads is preempted). Two calls
    run at once (``CONCURRENT_CALLS``), so the next chunk loads while this one runs the model; a lock
    keeps the forward passes one at a time, each with all of the actor's threads.
    """

    CONCURRENT_CALLS = 2

    def __init__(self, loader: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], actor: type, actor_kwargs: dict[str, Any]):
        self.loader = loader
        self.inner = actor(**actor_kwargs)
        self.forward_lock = threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = self.loader(batch)
        with self.forward_lock:
            return self.inner(loaded)


def run_chunks(
    probe: ProbeSet,
    shard_size: int,
    shards: list[int],
    batch_size: int,
    loader: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    actor: type,
    actor_kwargs: dict[str, Any],
    pool: Pool,
    failure_budget: float,
    on_images: Callable[[int], None] | None = None,
) -> Iterator[ShardOutput]:
    """Run ``actor`` over the chunks of ``shards``; yields each shard once all its chunks are back.

    ``loader`` (a ``ChunkSource``) turns a chunk's row into its ``pixels``;
    ``actor(**actor_kwargs)(batch)`` receives the loaded chunk and returns its outputs as arrays whose
    first axis runs over the chunk's decoded images. More unreadable images than ``failure_budget`` of
    the whole probe set stops the stage with a ``ProbeError`` (shards already written stay).
    """
    rows = chunk_rows(probe, shard_size, shards, batch_size)
    if not rows:
        return
    expected: dict[int, int] = {}
    for row in rows:
        expected[row["shard"]] = expected.get(row["shard"], 0) + 1
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    inner = {**actor_kwargs, "threads": pool.torch_threads}
    if pool.readers:
        dataset = dataset.map_batches(
            ChunkLoader,
            fn_constructor_kwargs={"loader": loader},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.readers),
            num_cpus=pool.read_cpus,
        )
        actor_class, constructor, concurrency = actor, inner, {}
    else:
        actor_class = LoadThen
        constructor = {"loader": loader, "actor": actor, "actor_kwargs": inner}
        concurrency = {"max_concurrent_calls_per_actor": LoadThen.CONCURRENT_CALLS, "enable_true_multi_threading": True}
    dataset = dataset.map_batches(
        actor_class,
        fn_constructor_kwargs=constructor,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=pool.actors, **concurrency),
        num_cpus=pool.actor_cpus,
        num_gpus=pool.actor_gpus,
    )
    pending: dict[int, dict[int, dict[str, Any]]] = {}
    failed_total = 0
    allowed = failure_budget * len(probe)
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        shard, chunk = int(batch["shard"][0]), int(batch["chunk"][0])
        failed = [tuple(f) for f in json.loads(batch["failed"][0])]
        failed_total += len(failed)
        if failed_total > allowed:
            shown = "; ".join(f"{i} ({why})" for i, why in failed[:3])
            raise ProbeError(
                f"more than {failure_budget:.2%} of the {len(probe)} probe images could not be decoded "
                f"({failed_total} so far, e.g. {shown}); fix or remove them, or raise probe.failure_budget"
            )
        ids = batch["image_ids"][0].split("\n") if batch["image_ids"][0] else []
        outputs = {k: np.asarray(v[0]) for k, v in batch.items() if k not in ("shard", "chunk", "image_ids", "failed")}  # raw too
        pending.setdefault(shard, {})[chunk] = {"ids": ids, "failed": failed, "outputs": outputs}
        if on_images is not None:
            on_images(len(ids) + len(failed))
        if len(pending[shard]) == expected[shard]:  # the shard is whole: hand it over in image-id order
            done = pending.pop(shard)
            chunks = [done[c] for c in range(expected[shard])]
            names = {n: None for c in chunks if len(c["ids"]) for n in c["outputs"]}  # a chunk with no image has none
            yield ShardOutput(
                shard,
                [i for c in chunks for i in c["ids"]],
                {n: np.concatenate([c["outputs"][n] for c in chunks if len(c["ids"])]) for n in names},
                [f for c in chunks for f in c["failed"]],
            )
