"""The one runner every stage goes through: skip what is committed, resume what is partial, commit, record.

For each stage, in plan order:

1. an output whose dataset is committed for its key is done; a stage whose outputs are all done is
   *skipped* (an event says so);
2. otherwise the parts already there (left by an interrupted run of the same key: the key is in the path,
   so they can only be that) are kept, and only the missing parts are computed — model stages that load
   the probe set the same way in one pass, task stages part by part — by the executor (a task stage whose
   marker sums up the assembly of its parts, ``resumes_parts = False``, computes them all again);
3. each finished part is written atomically as it arrives; once all are there every output is committed
   (``Dataset.commit`` checks parts and row counts) and a *done* event with timings and counts is emitted.

A cache stage (``Stage.optional``) is computed only while a stage that reads it has work to do. Nothing
here knows what a stage computes, nor where it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from discover_ray.errors import DatasetError
from discover_ray.pipeline.chunks import ModelPass, PixelCache, ProbeHandle, ShardAssembler
from discover_ray.pipeline.stage import ModelStage, Stage, TaskStage
from discover_ray.store import SUCCESS

__all__ = ["Event", "Executor", "ProbeContext", "Progress", "Runner"]

DEFAULT_BATCH = 256


@dataclass
class Event:
    """What happened to one stage: done (with seconds and counts), skipped, or failed."""

    stage: str
    title: str
    status: str
    seconds: float
    outputs: list[str]
    counts: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    """Where work runs: ``pipeline.local.LocalExecutor`` (this process) or ``on_ray.RayExecutor``."""

    name: str

    def run_pass(self, model_pass: ModelPass, assembler: ShardAssembler,
                 on_images: Callable[[int], None]) -> Any: ...  # an iterator of ShardOutput

    def run_tasks(self, fn: Callable[[Any, Any], Any], payload: Any, payload_key: tuple[str, ...],
                  tasks: list[Any], resident: str | None = None) -> list[Any]: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class Progress(Protocol):
    def start(self, title: str, images: int) -> Callable[[int], None]: ...

    def stop(self) -> None: ...


class _NoProgress:
    def start(self, title: str, images: int) -> Callable[[int], None]:
        return lambda n: None

    def stop(self) -> None:
        pass


@dataclass(frozen=True)
class ProbeContext:
    """The probe set model passes run over."""

    handle: ProbeHandle
    images: int
    shard_size: int
    failure_budget: float
    store_root: str

    def shard_length(self, shard: int) -> int:
        return min(self.shard_size, self.images - shard * self.shard_size)


class Runner:
    """Runs stages through an ``executor``; every event goes to ``on_event``."""

    def __init__(self, executor: Executor, probe: ProbeContext | None, on_event: Callable[[Event], None],
                 progress: Progress | None = None):
        self.executor, self.probe, self.on_event = executor, probe, on_event
        self.progress = progress or _NoProgress()
        self._payload: tuple[tuple[str, ...], Any] | None = None

    def run(self, stages: Sequence[Stage]) -> None:
        todo = {id(s): self._todo(s) for s in stages}
        for stage in stages:
            if stage.optional and todo[id(stage)] and not self._read_by_pending(stage, stages, todo):
                todo[id(stage)] = {}
        done: set[int] = set()
        for stage in stages:
            if id(stage) in done:
                continue
            pending = todo[id(stage)]
            if not pending:
                if not stage.optional or all(o.dataset.is_committed() for o in stage.outputs):
                    self.on_event(Event(stage.name, stage.title, "skipped", 0.0, [o.path for o in stage.outputs]))
                done.add(id(stage))
                continue
            if isinstance(stage, ModelStage):
                group = [s for s in stages if isinstance(s, ModelStage) and id(s) not in done and todo[id(s)]
                         and s.loader == stage.loader and _batches_agree(s, stage)]
                self._run_pass(group, todo)
                done.update(id(s) for s in group)
            else:
                assert isinstance(stage, TaskStage)
                self._run_tasks(stage, pending)
                done.add(id(stage))

    # -- what is left to do -------------------------------------------------------------------------
    @staticmethod
    def _todo(stage: Stage) -> dict[str, list[int]]:
        """Per output that is not committed, the parts still missing (every part, for a task stage that does not
        resume parts: its marker sums up what assembling them found, which a part left by a killed run lacks)."""
        left = {}
        for output in stage.outputs:
            if output.dataset.is_committed():
                continue
            keeps = isinstance(stage, ModelStage) or (isinstance(stage, TaskStage) and stage.resumes_parts)
            present = set(output.dataset.parts()) if keeps else set()
            left[output.name] = [p for p in output.parts if p not in present]
        return left

    @staticmethod
    def _read_by_pending(cache: Stage, stages: Sequence[Stage], todo: dict[int, dict[str, list[int]]]) -> bool:
        paths = {o.path for o in cache.outputs}
        for stage in stages:
            if stage is cache or not todo[id(stage)] or not isinstance(stage, ModelStage):
                continue
            reading = stage.cache()
            if reading is not None and reading.path in paths:
                return True
        return False

    # -- model stages: one pass per loader ------------------------------------------------------------
    def _run_pass(self, group: list[ModelStage], todo: dict[int, dict[str, list[int]]]) -> None:
        assert self.probe is not None, "model stages need a probe set"
        started = time.perf_counter()
        shards_of = {id(s): sorted({p for parts in todo[id(s)].values() for p in parts}) for s in group}
        every = sorted({p for s in group for p in shards_of[id(s)]})
        cache = self._cache(group)
        raw_shards = frozenset(p for s in group if s.wants_raw for p in shards_of[id(s)])
        heads, owner = [], {}
        for i, stage in enumerate(group):
            outputs = [o for o in stage.outputs if o.name in todo[id(stage)]]
            head = stage.head(outputs, frozenset(shards_of[id(stage)]))
            if head is not None:
                head = type(head)(f"h{i}", head.actor, head.kwargs, head.shards)
                heads.append(head)
                owner[id(stage)] = head.name
        batch = next((s.batch_size for s in group if s.batch_size), DEFAULT_BATCH)
        model_pass = ModelPass(self.probe.handle, self.probe.images, self.probe.shard_size, batch, every,
                               group[0].transform(), heads, cache, raw_shards, self.probe.failure_budget)
        images = sum(self.probe.shard_length(s) for s in every)
        clock = _Throughput(started)
        advance = self.progress.start(" + ".join(f"{s.name} {s.title}" for s in group), images)
        rows = {id(s): 0 for s in group}
        try:
            for shard in self.executor.run_pass(model_pass, ShardAssembler(model_pass), clock.wrap(advance)):
                for stage in group:
                    if shard.shard not in shards_of[id(stage)]:
                        continue
                    outputs = [o for o in stage.outputs if shard.shard in todo[id(stage)].get(o.name, [])]
                    stage.write(outputs, shard, shard.outputs.get(owner.get(id(stage), ""), {}))
                    rows[id(stage)] += len(shard.image_ids)
        finally:
            self.progress.stop()
        seconds = time.perf_counter() - started
        for stage in group:
            committed = self._commit(stage, todo[id(stage)])
            counts = {"shards": len(shards_of[id(stage)]), "rows": rows[id(stage)], **clock.summary(),
                      **stage.counts()}
            if len(group) > 1:
                counts["pass"] = [s.name for s in group]
            if cache is not None:
                read = [p for p in shards_of[id(stage)] if p in cache.cached]
                counts["pixels"] = {"cache": cache.relative, "shards_read": len(read),
                                    "shards_decoded": len(shards_of[id(stage)]) - len(read)}
            self.on_event(Event(stage.name, stage.title, "done", seconds, committed, counts))

    def _cache(self, group: list[ModelStage]) -> PixelCache | None:
        reading = next((s.cache() for s in group if s.cache() is not None), None)
        if reading is None:
            return None
        return PixelCache(self.probe.store_root, reading.path, reading.format, frozenset(reading.dataset.parts()))

    # -- task stages ----------------------------------------------------------------------------------
    def _run_tasks(self, stage: TaskStage, pending: dict[str, list[int]]) -> None:
        started = time.perf_counter()
        store = stage.outputs[0].dataset.store if stage.outputs else None
        for path in stage.inputs:  # what it reads was committed by an earlier stage (or an earlier run)
            if store is not None and not store.exists(f"{path}/{SUCCESS}"):
                raise DatasetError(f"{stage.name} {stage.title} reads {store.path(path)}, which is not complete; "
                                   "run the stages that write it first")
        key = stage.payload_key()
        if self._payload is None or self._payload[0] != key:
            self._payload = None  # free the previous payload before loading the next
            self._payload = (key, stage.load())
        payload = self._payload[1]
        parts = sorted({p for left in pending.values() for p in left})
        tasks = 0
        for part in parts:
            work = stage.tasks(part, payload)
            results: list[Any] = []
            while work:  # a round of tasks; a stage may ask for another that needs these results
                tasks += len(work)
                results += self.executor.run_tasks(type(stage).compute, payload, key, work, type(stage).resident)
                work = stage.follow_up(part, results, payload)
            tables = stage.assemble(part, results, payload)
            for output in stage.outputs:
                if part in pending.get(output.name, []):
                    output.dataset.write_part(part, tables[output.name])
        committed = self._commit(stage, pending)
        self.on_event(Event(stage.name, stage.title, "done", time.perf_counter() - started, committed,
                            {"parts": len(parts), "tasks": tasks, **stage.counts()}))

    def _commit(self, stage: Stage, pending: dict[str, list[int]]) -> list[str]:
        committed = []
        for output in stage.outputs:
            if output.name in pending:
                output.dataset.commit(output.expected, **stage.marker(output))
                committed.append(output.path)
        return committed


def _batches_agree(a: ModelStage, b: ModelStage) -> bool:
    return a.batch_size is None or b.batch_size is None or a.batch_size == b.batch_size


class _Throughput:
    """Start-up latency (until the first chunk is back: workers started, models loaded) and the rate after it."""

    def __init__(self, started: float):
        self.started, self.first, self.last, self.images_after_first = started, None, None, 0

    def wrap(self, advance: Callable[[int], None]) -> Callable[[int], None]:
        def counted(n: int) -> None:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            else:
                self.images_after_first += n
            self.last = now
            advance(n)

        return counted

    def summary(self) -> dict[str, float]:
        if self.first is None or self.last is None or self.last <= self.first:
            return {}
        return {"startup_s": round(self.first - self.started, 3),
                "images_per_s_after_startup": round(self.images_after_first / (self.last - self.first), 1)}

