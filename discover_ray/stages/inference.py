"""Sharded batch inference over a probe set with Ray Data: read+decode tasks feed an actor pool.

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
import ray
import torch

from discover_ray.config import ProbeConfig
from discover_ray.probe import ProbeError, ProbeSet, decode_images, preprocess_batch
from discover_ray.stages.cluster import Resources


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


class ChunkDecoder:
    """A Ray Data actor that reads and decodes chunks into float32 tensors in the model's input format.

    An actor rather than tasks: the probe set, the transform and the open Parquet row groups are set up
    once, and no fresh worker process pays for importing torch per task.
    """

    def __init__(self, probe: ProbeSet | ProbeHandle, preprocess: Callable[[Any], torch.Tensor]):
        torch.set_num_threads(1)
        self.probe, self.preprocess = _opened(probe), preprocess

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return decode_chunk(batch, self.probe, self.preprocess)


class DecodeThen:
    """A Ray Data actor that decodes its chunk itself, then runs ``actor`` on it.

    Used on CPU-only clusters: there, separate decode actors only compete with the forward pass for the
    same cores (and an OpenMP forward pass stalls whenever one of its threads is preempted). Two calls
    run at once (``CONCURRENT_CALLS``), so the next chunk decodes while this one runs the model; a lock
    keeps the forward passes one at a time, each with all of the actor's threads.
    """

    CONCURRENT_CALLS = 2

    def __init__(
        self, probe: ProbeSet | ProbeHandle, preprocess: Callable[[Any], torch.Tensor], actor: type, actor_kwargs: dict[str, Any]
    ):
        self.probe, self.preprocess = _opened(probe), preprocess
        self.inner = actor(**actor_kwargs)
        self.forward_lock = threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = decode_chunk(batch, self.probe, self.preprocess)
        with self.forward_lock:
            return self.inner(decoded)


def decode_chunk(batch: dict[str, np.ndarray], probe: ProbeSet, preprocess: Callable[[Any], torch.Tensor]) -> dict[str, np.ndarray]:
    """Read and decode one chunk; unreadable images are listed, not raised (the budget is probe-wide)."""
    start, stop = int(batch["start"][0]), int(batch["stop"][0])
    images = probe.images[start:stop]
    decoded = decode_images(probe, images, failure_budget=1.0)
    if decoded.images:
        pixels = preprocess_batch(decoded.images, preprocess).numpy()
    else:
        pixels = np.zeros((0, 3, 1, 1), dtype=np.float32)
    return {
        "shard": batch["shard"],
        "chunk": batch["chunk"],
        "image_ids": np.array(["\n".join(im.image_id for im in decoded.kept)], dtype=object),
        "failed": np.array([json.dumps(decoded.failed)], dtype=object),
        "pixels": pixels[None],
    }


def run_chunks(
    probe: ProbeSet,
    shard_size: int,
    shards: list[int],
    batch_size: int,
    preprocess: Callable[[Any], torch.Tensor],
    actor: type,
    actor_kwargs: dict[str, Any],
    pool: Pool,
    failure_budget: float,
    on_images: Callable[[int], None] | None = None,
    opener: ProbeConfig | None = None,
) -> Iterator[ShardOutput]:
    """Run ``actor`` over the chunks of ``shards``; yields each shard once all its chunks are back.

    ``actor(**actor_kwargs)(batch)`` receives one decoded chunk and returns its outputs as arrays whose
    first axis runs over the chunk's decoded images. More unreadable images than ``failure_budget`` of
    the whole probe set stops the stage with a ``ProbeError`` (shards already written stay). With
    ``opener`` (the config ``probe`` was opened from) the actors open the probe set themselves.
    """
    shipped = ProbeHandle.of(opener, probe) if opener is not None else probe
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
            ChunkDecoder,
            fn_constructor_kwargs={"probe": shipped, "preprocess": preprocess},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.readers),
            num_cpus=pool.read_cpus,
        )
        actor_class, constructor, concurrency = actor, inner, {}
    else:
        actor_class = DecodeThen
        constructor = {"probe": shipped, "preprocess": preprocess, "actor": actor, "actor_kwargs": inner}
        concurrency = {"max_concurrent_calls_per_actor": DecodeThen.CONCURRENT_CALLS, "enable_true_multi_threading": True}
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
        outputs = {k: np.asarray(v[0]) for k, v in batch.items() if k not in ("shard", "chunk", "image_ids", "failed")}
        pending.setdefault(shard, {})[chunk] = {"ids": ids, "failed": failed, "outputs": outputs}
        if on_images is not None:
            on_images(len(ids) + len(failed))
        if len(pending[shard]) == expected[shard]:  # the shard is whole: hand it over in image-id order
            done = pending.pop(shard)
            chunks = [done[c] for c in range(expected[shard])]
            names = chunks[0]["outputs"].keys()
            yield ShardOutput(
                shard,
                [i for c in chunks for i in c["ids"]],
                {n: np.concatenate([c["outputs"][n] for c in chunks if len(c["ids"])]) for n in names},
                [f for c in chunks for f in c["failed"]],
            )
