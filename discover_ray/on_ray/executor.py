"""The Ray executor: model passes on Ray Data actor pools, task stages as Ray tasks.

On GPU clusters each pass runs one actor per GPU holding the pass's heads, fed by loader actors of their
own (decoding 224 px JPEGs fast enough for a GPU takes several cores). On CPU-only clusters one actor with
fractional CPUs loads its own chunks (separate decode actors would only compete with the forward pass for
the same cores), two calls at a time so the next chunk loads while this one runs. Task stages run each
task as a Ray task, on a GPU when the cluster has one; the payload is put in the object store once and
shared by consecutive stages that read the same data. The cluster is joined only once a stage has work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from discover_ray.config import RayConfig
from discover_ray.errors import ConfigError
from discover_ray.on_ray.cluster import Resources, connect
from discover_ray.on_ray.console import without_ray_log_lines
from discover_ray.pipeline.chunks import ChunkSource, Heads, LoadThen, ModelPass, ShardAssembler
from discover_ray.pipeline.stage import ShardOutput

__all__ = ["Pool", "RayExecutor", "plan_pool"]


@dataclass
class Pool:
    """How wide the actor pool is and what each actor reserves."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    read_cpus: float
    readers: int
    torch_threads: int


def plan_pool(resources: Resources, config: RayConfig) -> Pool:
    """One inference actor per GPU, fed by up to ``readers`` decode actors; on CPU-only clusters one actor
    with fractional CPUs that decodes its own chunks (``readers=0``), leaving headroom: an actor pool that
    holds every CPU stalls the pipeline."""
    if resources.has_gpu:
        n = config.actors or int(resources.gpus)
        cpus = config.actor_cpus if config.actor_cpus is not None else 1.0
        readers = config.readers if config.readers is not None else 4 * n
        return Pool(n, cpus, 1.0, config.read_cpus, readers, config.torch_threads or 4)
    n = config.actors or 1
    cpus = config.actor_cpus if config.actor_cpus is not None else 0.5
    readers = config.readers if config.readers is not None else 0
    if n * cpus + readers * config.read_cpus > resources.cpus:
        raise ConfigError(
            f"{n} actors × {cpus} CPUs plus {readers} readers × {config.read_cpus} exceed the cluster's "
            f"{resources.cpus:g} CPUs; lower ray.actors / ray.actor_cpus / ray.readers / ray.read_cpus"
        )
    return Pool(n, cpus, 0.0, config.read_cpus, readers, config.torch_threads or max(1, int(resources.cpus) // n))


class ChunkLoader:
    """A Ray Data actor that only loads chunks, feeding the GPU actors."""

    def __init__(self, source: ChunkSource):
        torch.set_num_threads(1)
        self.source = source

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.source(batch)


@ray.remote
def _task(fn: Callable[[Any, Any], Any], payload: Any, task: Any, threads: int) -> Any:
    torch.set_num_threads(threads)
    return fn(payload, task)


@ray.remote
class _Resident:
    """A long-lived worker of a pool: the models its tasks load (memoised per process) stay loaded for the
    next task and the next stage of the pool (DnD's captioner and generator, VERIFY's generator)."""

    def run(self, fn: Callable[[Any, Any], Any], payload: Any, task: Any, threads: int) -> Any:
        torch.set_num_threads(threads)
        return fn(payload, task)


class RayExecutor:
    name = "ray"

    def __init__(self, config: RayConfig):
        self.config = config
        self._resources: Resources | None = None
        self._pool: Pool | None = None
        self._payload: tuple[tuple[str, ...], Any] | None = None
        self._residents: dict[str, list[Any]] = {}

    @property
    def resources(self) -> Resources:
        if self._resources is None:
            self._resources = connect(self.config.address, self.config.num_cpus)
        return self._resources

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = plan_pool(self.resources, self.config)
        return self._pool

    def run_pass(self, model_pass: ModelPass, assembler: ShardAssembler,
                 on_images: Callable[[int], None]) -> Iterator[ShardOutput]:
        pool, rows = self.pool, model_pass.rows()
        if not rows:
            return
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        source = model_pass.source()
        if pool.readers:
            dataset = dataset.map_batches(
                ChunkLoader, fn_constructor_kwargs={"source": source}, batch_size=1,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.readers), num_cpus=pool.read_cpus,
            )
            actor, kwargs, concurrency = Heads, {"heads": model_pass.heads, "threads": pool.torch_threads}, {}
        else:
            actor = LoadThen
            kwargs = {"source": source, "heads": model_pass.heads, "threads": pool.torch_threads}
            concurrency = {"max_concurrent_calls_per_actor": LoadThen.CONCURRENT_CALLS, "enable_true_multi_threading": True}
        dataset = dataset.map_batches(
            actor, fn_constructor_kwargs=kwargs, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=pool.actors, **concurrency),
            num_cpus=pool.actor_cpus, num_gpus=pool.actor_gpus,
        )
        chunks = dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2)
        with without_ray_log_lines():
            yield from assembler.run(chunks, on_images)

    def run_tasks(self, fn: Callable[[Any, Any], Any], payload: Any, payload_key: tuple[str, ...],
                  tasks: list[Any], resident: str | None = None) -> list[Any]:
        resources = self.resources  # join (or start) the cluster first: a bare ray.put would join any stale one
        if self._payload is None or self._payload[0] != payload_key:
            self._payload = None
            self._payload = (payload_key, ray.put(payload))
        options = {"num_gpus": 1, "num_cpus": 1} if resources.has_gpu else {"num_cpus": 1}
        threads = self.config.torch_threads or max(1, int(resources.cpus))
        if resident is not None:
            pool = ray.util.ActorPool(self._resident_pool(resident, options))
            return list(pool.map(lambda actor, task: actor.run.remote(fn, self._payload[1], task, threads), tasks))
        return ray.get([_task.options(**options).remote(fn, self._payload[1], task, threads) for task in tasks])

    def _resident_pool(self, name: str, options: dict[str, Any]) -> list[Any]:
        """One resident worker per GPU (one on a CPU-only cluster), started on first use, kept until ``close``."""
        if name not in self._residents:
            count = self.config.actors or (int(self.resources.gpus) if self.resources.has_gpu else 1)
            self._residents[name] = [_Resident.options(**options).remote() for _ in range(max(1, count))]
        return self._residents[name]

    def close(self) -> None:
        """Stop the resident workers (their reserved CPUs and GPUs go back to the cluster)."""
        for actors in self._residents.values():
            for actor in actors:
                ray.kill(actor)
        self._residents.clear()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"executor": self.name}
        if self._resources is not None:
            out.update(cpus=self._resources.cpus, gpus=self._resources.gpus)
        return out
