"""The Ray executor: model passes on Ray Data actor pools, task stages as Ray tasks.

On GPU clusters each pass runs one actor per GPU holding the pass's heads, fed by loader actors of their
own (decoding 224 px JPEGs fast enough for a GPU takes several cores). On CPU-only clusters one actor with
fractional CPUs loads its own chunks (separate decode actors would only compete with the forward pass for
the same cores), two calls at a time so the next chunk loads while this one runs. Task stages run each
task as a Ray task, on a GPU when the cluster has one; the payload is put in the object store once and
shared by consecutive stages that read the same data. The cluster is joined only once a stage has work.

Faults are bounded: a worker that dies (a lost node, an OOM kill, a crash on one image) is restarted and
its chunk or task retried, up to ``ray.max_retries`` restarts of an actor (retries of a task), then the
stage fails naming the chunk's images or the task (``StageCrashed``); a stage that makes no progress for
``ray.no_progress_timeout_s`` (its node lost with no capacity left to take over) fails saying what the
cluster has (``ClusterStalled``), never waiting forever. Each pass keeps a tally of the chunks that
started and finished (in the GCS's key-value store), so that the chunk that kept killing its workers can
be named. The fault-injection variables (``discover_ray.faults``) are passed on to every worker started.
"""

from __future__ import annotations

import contextlib
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.data.exceptions import ExecutionTimeoutError
from ray.experimental import internal_kv
from ray.util.annotations import RayDeprecationWarning

from discover_ray import faults
from discover_ray.config import RayConfig
from discover_ray.errors import ClusterStalled, ConfigError, StageCrashed
from discover_ray.on_ray.cluster import Resources, connect
from discover_ray.on_ray.console import without_ray_log_lines
from discover_ray.pipeline.chunks import ChunkSource, Heads, LoadThen, ModelPass, ShardAssembler
from discover_ray.pipeline.stage import ShardOutput

__all__ = ["Pool", "RayExecutor", "plan_pool"]

#: what Ray raises when the worker, actor or node that ran something died (as opposed to an error of its code)
CRASHES: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
    ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError, ray.exceptions.LocalRayletDiedError,
)


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


class _Tally:
    """Per chunk of a pass, how many times a worker started it and whether one finished it: a chunk that
    started several times and never finished is the one that killed its workers. Kept in the GCS's
    key-value store (each start its own key, written before the chunk runs), so it needs no process of its
    own and outlives any worker node."""

    NAMESPACE = "discover_ray"

    def __init__(self) -> None:
        self.prefix = f"tally/{uuid.uuid4().hex}/"

    def start(self, key: str) -> None:
        internal_kv._internal_kv_put(f"{self.prefix}{key}/{uuid.uuid4().hex}", b"", namespace=self.NAMESPACE)

    def finish(self, key: str) -> None:
        internal_kv._internal_kv_put(f"{self.prefix}{key}/done", b"", namespace=self.NAMESPACE)

    def unfinished(self) -> dict[str, int]:
        started: dict[str, int] = {}
        done = set()
        for name in internal_kv._internal_kv_list(self.prefix, namespace=self.NAMESPACE):
            key, attempt = name.decode()[len(self.prefix):].rsplit("/", 1)
            if attempt == "done":
                done.add(key)
            else:
                started[key] = started.get(key, 0) + 1
        return {k: n for k, n in started.items() if k not in done}

    def clear(self) -> None:
        internal_kv._internal_kv_del(self.prefix, del_by_prefix=True, namespace=self.NAMESPACE)


class _Watched:
    """A pass's Ray Data worker that reports each chunk it starts (before: a worker killed while on it
    leaves the start counted) and finishes to the pass's tally."""

    role = "chunk"
    worker: Callable[..., Any]

    def __init__(self, tally: Any, **kwargs: Any):
        self.tally = tally
        self.run = type(self).worker(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = f"{self.role}:{int(batch['shard'][0])}:{int(batch['chunk'][0])}"
        self.tally.start(key)
        out = self.run(batch)
        self.tally.finish(key)
        return out


class LoadAndRun(_Watched):
    """``LoadThen``: loads a chunk and runs the heads on it (CPU-only clusters)."""

    role, worker = "load+run", LoadThen


class Load(_Watched):
    """``ChunkLoader``: loads chunks for the GPU actors."""

    role, worker = "load", ChunkLoader


class Run(_Watched):
    """``Heads``: runs the heads on chunks the loaders loaded (one actor per GPU)."""

    role, worker = "run", Heads


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

    def _env(self) -> dict[str, Any]:
        """The fault-injection variables of this process for the workers it starts (none when unset)."""
        env = faults.forwarded_env()
        return {"runtime_env": {"env_vars": env}} if env else {}

    def run_pass(self, model_pass: ModelPass, assembler: ShardAssembler,
                 on_images: Callable[[int], None]) -> Iterator[ShardOutput]:
        pool, rows = self.pool, model_pass.rows()
        if not rows:
            return
        name = _pass_name(model_pass)
        # Bounded restarts (Ray Data's default restarts a dead actor for ever); its chunks' retries stay unbounded:
        # while a lost node's actor restarts elsewhere each retry fails at once (connection refused), so a bound
        # would fail the pass within milliseconds instead of waiting for the restart. Ray 2.60 has no named
        # parameter for either (the ``**ray_remote_args`` it warns about until 2.64): its warning is muted here.
        restarts = {"max_restarts": self.config.max_retries, "max_task_retries": -1}
        env = self._env().get("runtime_env")
        tally = _Tally()
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        source = model_pass.source()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated", category=RayDeprecationWarning)
            if pool.readers:
                dataset = dataset.map_batches(
                    Load, fn_constructor_kwargs={"tally": tally, "source": source}, batch_size=1,
                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.readers), num_cpus=pool.read_cpus,
                    runtime_env=env, **restarts,
                )
                actor: type[_Watched] = Run
                kwargs, concurrency = {"heads": model_pass.heads, "threads": pool.torch_threads}, {}
            else:
                actor = LoadAndRun
                kwargs = {"source": source, "heads": model_pass.heads, "threads": pool.torch_threads}
                concurrency = {"max_concurrent_calls_per_actor": LoadThen.CONCURRENT_CALLS,
                               "enable_true_multi_threading": True}
            dataset = dataset.map_batches(
                actor, fn_constructor_kwargs={"tally": tally, **kwargs}, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=pool.actors, **concurrency),
                num_cpus=pool.actor_cpus, num_gpus=pool.actor_gpus, runtime_env=env, **restarts,
            )
        dataset.context.execution_no_progress_timeout_s = self.config.no_progress_timeout_s
        chunks = dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2)
        try:
            with without_ray_log_lines():
                yield from assembler.run(chunks, on_images)
        except ExecutionTimeoutError:
            raise self._stalled(name, self._pass_reserves(pool)) from None
        except Exception as err:
            if _crash(err) is None:
                raise
            raise self._pass_crashed(name, model_pass, tally, err) from None
        finally:
            with contextlib.suppress(Exception):
                tally.clear()

    def run_tasks(self, fn: Callable[[Any, Any], Any], payload: Any, payload_key: tuple[str, ...],
                  tasks: list[Any], resident: str | None = None) -> list[Any]:
        resources = self.resources  # join (or start) the cluster first: a bare ray.put would join any stale one
        if self._payload is None or self._payload[0] != payload_key:
            self._payload = None
            self._payload = (payload_key, ray.put(payload))
        ref = self._payload[1]
        demand = {"GPU": 1.0, "CPU": 1.0} if resources.has_gpu else {"CPU": 1.0}
        options = {"num_gpus": 1, "num_cpus": 1} if resources.has_gpu else {"num_cpus": 1}
        threads = self.config.torch_threads or max(1, int(resources.cpus))
        name = f"the {getattr(fn, '__qualname__', repr(fn))} tasks"
        if resident is not None:
            return self._run_resident(resident, options, demand, name, tasks,
                                      lambda actor, task: actor.run.remote(fn, ref, task, threads))
        retries = {"max_retries": self.config.max_retries, "retry_exceptions": False, **self._env()}
        refs = [_task.options(**options, **retries).remote(fn, ref, task, threads) for task in tasks]
        return self._gather(refs, name, tasks, demand)

    def _gather(self, refs: list[Any], name: str, tasks: list[Any], demand: dict[str, float]) -> list[Any]:
        """The tasks' results in order; a task whose worker kept dying, or a wait with no task finishing while
        no live node can run one, is a clear error (an error raised by a task's own code is raised as it is)."""
        results: list[Any] = [None] * len(refs)
        index = {r: i for i, r in enumerate(refs)}
        pending, last = list(refs), time.monotonic()
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=self._poll_s)
            for r in ready:
                try:
                    results[index[r]] = ray.get(r)
                except Exception as err:
                    if _crash(err) is None:
                        raise
                    raise self._task_crashed(name, index[r], tasks, err) from None
            if ready:
                last = time.monotonic()
            elif time.monotonic() - last >= self.config.no_progress_timeout_s and not _fits(demand):
                raise self._stalled(name, _format(demand) + " per task")
        return results

    def _run_resident(self, name: str, options: dict[str, Any], demand: dict[str, float], stage: str,
                      tasks: list[Any], call: Callable[[Any, Any], Any]) -> list[Any]:
        """The tasks on the pool's resident workers, each given the next task as it finishes one (results in
        task order), with the same bounds as plain tasks."""
        idle = list(self._resident_pool(name, options))
        results: list[Any] = [None] * len(tasks)
        running: dict[Any, tuple[int, Any]] = {}  # ref → (task index, worker)
        given, last = 0, time.monotonic()
        while given < len(tasks) or running:
            while idle and given < len(tasks):
                worker = idle.pop()
                running[call(worker, tasks[given])] = (given, worker)
                given += 1
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self._poll_s)
            if not ready:
                if time.monotonic() - last >= self.config.no_progress_timeout_s and not _fits(demand):
                    raise self._stalled(stage, _format(demand) + " per resident worker")
                continue
            for ref in ready:
                i, worker = running.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except Exception as err:
                    if _crash(err) is None:
                        raise
                    self._drop_residents(name)  # dead: the next stage of the pool starts new ones
                    raise self._task_crashed(stage, i, tasks, err) from None
                idle.append(worker)
            last = time.monotonic()
        return results

    @property
    def _poll_s(self) -> float:
        return min(5.0, self.config.no_progress_timeout_s / 4)

    def _resident_pool(self, name: str, options: dict[str, Any]) -> list[Any]:
        """One resident worker per GPU (one on a CPU-only cluster), started on first use, kept until ``close``."""
        if name not in self._residents:
            count = self.config.actors or (int(self.resources.gpus) if self.resources.has_gpu else 1)
            retries = self.config.max_retries
            actor = _Resident.options(**options, max_restarts=retries, max_task_retries=-1, **self._env())
            self._residents[name] = [actor.remote() for _ in range(max(1, count))]
        return self._residents[name]

    def _drop_residents(self, name: str) -> None:
        for actor in self._residents.pop(name, []):
            with contextlib.suppress(Exception):
                ray.kill(actor)

    # -- clear errors -------------------------------------------------------------------------------
    def _pass_reserves(self, pool: Pool) -> str:
        out = f"{pool.actors} actor(s) × {pool.actor_cpus:g} CPU" + (f" + {pool.actor_gpus:g} GPU" if pool.actor_gpus else "")
        if pool.readers:
            out += f", up to {pool.readers} reader(s) × {pool.read_cpus:g} CPU"
        return out

    def _stalled(self, stage: str, reserves: str) -> ClusterStalled:
        timeout = self.config.no_progress_timeout_s
        try:
            total, free = _format(ray.cluster_resources()), _format(ray.available_resources())
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            has = f"the cluster has {total} on {nodes} live node(s), {free} free"
        except Exception as err:  # the cluster itself is gone
            has = f"the cluster cannot be asked what it has ({type(err).__name__}: {_first_line(err)})"
        return ClusterStalled(
            f"{stage} made no progress for {timeout:g} s (ray.no_progress_timeout_s): {has}, and the stage "
            f"reserves {reserves}. A node was probably lost with nothing left that can take over its work, or the "
            "cluster is too small for the stage. Add a node (or let the autoscaler add one), lower ray.actors / "
            "ray.actor_cpus, or raise ray.no_progress_timeout_s if the work is legitimately this slow; re-running "
            "resumes from the shards already written."
        )

    def _pass_crashed(self, stage: str, model_pass: ModelPass, tally: Any, err: BaseException) -> StageCrashed:
        retries, cause = self.config.max_retries, _crash(err)
        try:
            unfinished = tally.unfinished()
        except Exception:
            unfinished = {}
        last = f"last: {type(cause).__name__}: {_first_line(cause)}"
        if not unfinished:
            return StageCrashed(
                f"{stage}: its workers died more than ray.max_retries={retries} times ({last}). Check the workers' "
                "logs in the Ray session folder (an OOM kill, a lost node), then re-run (it resumes), or raise "
                "ray.max_retries.")
        # (times, shard, chunk) of each chunk that never finished, the most often started first
        chunks = sorted((-n, *map(int, key.rsplit(":", 2)[1:])) for key, n in unfinished.items())
        times = -chunks[0][0]
        rows = {(r["shard"], r["chunk"]): r for r in model_pass.rows()}
        images = _probe_ids(model_pass)
        suspects = [_chunk_words(rows[s, c], images) for n, s, c in chunks if -n == times][:3]
        what = suspects[0] if len(suspects) == 1 else "one of " + " or ".join(suspects) + " (they ran together)"
        lost = [_chunk_words(rows[s, c]) for n, s, c in chunks if -n < times][:5]
        also = f"; lost with it: {', '.join(lost)}" if lost else ""
        return StageCrashed(
            f"{stage}: {what} killed the worker that ran it {times} times; ray.max_retries={retries} restarts are "
            f"used up ({last}{also}). One of these images probably crashes the model or its decoder (or needs more "
            "memory than the worker has: see the workers' logs in the Ray session folder); fix or remove it and "
            "re-run (the run resumes), or raise ray.max_retries if the deaths were lost nodes."
        )

    def _task_crashed(self, stage: str, i: int, tasks: list[Any], err: BaseException) -> StageCrashed:
        cause = _crash(err)
        shown = repr(tasks[i])
        shown = shown if len(shown) <= 200 else shown[:200] + "…"
        return StageCrashed(
            f"{stage}: task {i + 1} of {len(tasks)} ({shown}) killed the worker that ran it "
            f"{self.config.max_retries + 1} times (ray.max_retries={self.config.max_retries} retries used up; last: "
            f"{type(cause).__name__}: {_first_line(cause)}). See the workers' logs in the Ray session folder (an OOM "
            "kill, a lost node), then re-run (the run resumes), or raise ray.max_retries."
        )

    def close(self) -> None:
        """Stop the resident workers (their reserved CPUs and GPUs go back to the cluster)."""
        for name in list(self._residents):
            self._drop_residents(name)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"executor": self.name}
        if self._resources is not None:
            out.update(cpus=self._resources.cpus, gpus=self._resources.gpus)
        return out


def _pass_name(model_pass: ModelPass) -> str:
    """The pass in words: the models its heads run (RECORD: a target model; EMBED: a CLIP), or decoding only."""
    heads = []
    for head in model_pass.heads:
        spec = head.kwargs.get("spec")
        what = getattr(spec, "name", None) or (spec.describe() if hasattr(spec, "describe") else None)
        heads.append(f"{head.actor.__name__}({what})" if what else head.actor.__name__)
    return f"the model pass [{', '.join(heads) or 'decoding only'}]"


def _crash(err: BaseException | None) -> BaseException | None:
    """The Ray error in ``err``'s chain that says a worker, actor or node died; None for an error of the code."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, CRASHES):
            return err
        if isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, CRASHES):
            return err.cause
        err = err.__cause__ or err.__context__
    return None


def _fits(demand: dict[str, float]) -> bool:
    """Whether a live node could ever hold ``demand`` (its total resources, not what is free now)."""
    try:
        nodes = ray.nodes()
    except Exception:
        return False
    return any(n.get("Alive") and all(n.get("Resources", {}).get(k, 0) >= v for k, v in demand.items()) for n in nodes)


def _format(resources: dict[str, float]) -> str:
    shown = [f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU")]
    return ", ".join(shown)


def _probe_ids(model_pass: ModelPass) -> list[str] | None:
    """The probe set's image ids, to name a chunk's images (None: it cannot be opened here)."""
    try:
        return [im.image_id for im in model_pass.probe.open().images]
    except Exception:
        return None


def _chunk_words(row: dict[str, int], ids: list[str] | None = None) -> str:
    """A chunk in words: its shard, its positions in the probe set and (given ``ids``) its first image ids."""
    out = f"chunk {row['chunk']} of shard {row['shard']} (probe images {row['start']}–{row['stop'] - 1}"
    if ids is not None:
        shown = ids[row["start"]:row["stop"]]
        out += ": " + ", ".join(shown[:4]) + (f" … {shown[-1]}" if len(shown) > 4 else "")
    return out + ")"


def _first_line(err: BaseException | None) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""
