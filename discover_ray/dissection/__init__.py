"""The dissection job: probe set → EMBED (CLIP) → DECODE → RECORD (activations) → REDUCE (methods), resumably.

``dissect`` plans the run (every input checked on the driver, the run named by content), opens an attempt
record, and hands the stages to the one runner with an executor: Ray (``executor="ray"``, the default) or
this process (``"local"``: no Ray at all). Everything committed before is skipped; an interrupted run
resumes with the parts that are missing; the attempt is promoted to the run's record only on success.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from discover_ray.config import DissectConfig
from discover_ray.dissection.identity import RunIdentity, run_identity, submission_id
from discover_ray.dissection.plan import Plan, plan_dissection
from discover_ray.pipeline import Event, Executor, LocalExecutor, Runner
from discover_ray.runs import (
    Attempt,
    FailedImage,
    Identification,
    LabelEntry,
    RunRecord,
    SimulationEntry,
    StageEvent,
    VerificationEntry,
)
from discover_ray.store import Store

__all__ = ["DissectResult", "Plan", "RunIdentity", "dissect", "make_executor", "plan_dissection", "run_identity",
           "submission_id"]


@dataclass
class DissectResult:
    run_id: str
    store: str
    record: RunRecord

    @property
    def labels(self) -> list[LabelEntry]:
        return self.record.labels

    @property
    def identification(self) -> list[Identification]:
        return self.record.identification

    @property
    def recomputed(self) -> list[StageEvent]:
        """The stages this call actually ran (the rest were already done)."""
        return self.record.recomputed()


def make_executor(executor: str | Executor | None, config: DissectConfig) -> Executor:
    """``"ray"`` (default), ``"local"``, or an executor object."""
    if executor is None or executor == "ray":
        from discover_ray.on_ray.executor import RayExecutor

        return RayExecutor(config.ray)
    if executor == "local":
        return LocalExecutor(config.ray.torch_threads)
    if isinstance(executor, str):
        from discover_ray.errors import ConfigError

        raise ConfigError(f"unknown executor {executor!r}; choose 'ray' or 'local'")
    return executor


def dissect(config: DissectConfig, *, executor: str | Executor | None = None, console: Console | None = None,
            lease_wait_s: float | None = None) -> DissectResult:
    """Run (or resume) a dissection; returns where everything went. Raises on bad input, before any work.

    One job at a time computes a run: while another holds the run's lease (``runs.lease``) this one waits up
    to ``lease_wait_s`` seconds (default ``DISCOVER_LEASE_WAIT_S``, else 0), then stops with ``RunInProgress``."""
    from discover_ray.runs.lease import RunLease

    console = console or Console(stderr=True)
    began = time.perf_counter()
    store = Store(config.store)
    plan = plan_dissection(config, store)
    for note in plan.notes:
        console.print(note, highlight=False)
    lease = RunLease(store, plan.run_id, wait_s=lease_wait_s).acquire()  # before anything of the run is written
    try:
        if lease.took_over is not None:
            owner = lease.took_over.get("owner") or {}
            console.print(f"took over the lapsed lease of run {plan.run_id} (pid {owner.get('pid')} on "
                          f"{owner.get('host')}, expiring {lease.took_over.get('expires')})", highlight=False)
        store.sweep_temporaries(f"runs/{plan.run_id}", recursive=True)  # what a killed attempt left half-written
        runner_executor = make_executor(executor, config)
        try:
            attempt = Attempt.begin(store, plan.header())
            attempt.event(StageEvent(stage="PREPARE", title="inputs", status="done",
                                     seconds=round(time.perf_counter() - began, 3)))
            printer = _Printer(console, config.ray.progress)

            def on_event(event: Event) -> None:
                lease.check()  # another job took the run over (ours lapsed): stop rather than run it twice
                attempt.event(StageEvent(stage=event.stage, title=event.title, status=event.status,  # type: ignore[arg-type]
                                         seconds=round(event.seconds, 3), outputs=event.outputs, counts=event.counts))
                printer.event(event)

            try:
                Runner(runner_executor, plan.probe_context, on_event, printer).run(plan.stages)
                attempt.record = _results(plan, attempt.record, runner_executor)
                printer.done(plan, attempt.record)
                record = attempt.finish("succeeded")
            except BaseException as err:
                try:
                    attempt.record.executor = runner_executor.describe()
                    attempt.finish("failed", f"{type(err).__name__}: {err}")
                except Exception as unrecorded:  # e.g. the disk is still full: the first error is the one to report
                    err.add_note(f"the attempt {store.path(attempt.folder)} could not be recorded as failed: "
                                 f"{type(unrecorded).__name__}: {unrecorded}")
                raise
        finally:
            runner_executor.close()
    finally:
        lease.release()
    return DissectResult(plan.run_id, store.root, record)


def _results(plan: Plan, record: RunRecord, executor: Executor) -> RunRecord:
    """What the committed datasets say: neuron identification and the images that could not be read."""
    identification = []
    for stage in plan.reduces:
        marker = stage.dataset.marker() or {}
        ident = marker.get("identification")
        if ident:
            identification.append(Identification(model=stage.model.label, layer=stage.layer, method=stage.method.name,
                                                 source=stage.source.name if stage.source else "", **ident))
    simulation = []
    for sim in plan.simulations:
        marker = sim.dataset.marker() or {}
        for scoring, summary in marker.get("scorings", {}).items():
            simulation.append(SimulationEntry(
                model=sim.labelling.model.label, layer=sim.labelling.layer, method=sim.labelling.method.name,
                source=sim.labelling.source.name if sim.labelling.source else "", simulator=sim.simulator.name,
                scoring=scoring, dataset=sim.dataset.relative, **summary))
    verification = []
    for stage in plan.verifications:
        marker = stage.dataset.marker() or {}
        labelling = stage.labelling
        verification.append(VerificationEntry(
            model=labelling.model.label, layer=labelling.layer, method=labelling.method.name,
            source=labelling.source.name if labelling.source else "", generator=stage.backends.generator.kind,
            auc_mean=marker.get("auc_mean"), mad_mean=marker.get("mad_mean"),
            auc_shuffled_mean=marker.get("auc_shuffled_mean"), units=marker.get("units", 0),
            scored=marker.get("scored", 0), undrawable=marker.get("undrawable", []), failed=marker.get("failed", {}),
            dataset=stage.dataset.relative))
    backends: dict[str, Any] = {}
    for stage in plan.reduces:
        if stage.name == "DESCRIBE":
            backends.update((stage.dataset.marker() or {}).get("backends", {}))
    for stage in plan.verifications:
        generator = (stage.dataset.marker() or {}).get("generator")
        if generator:
            backends.setdefault("verify_generator", generator)
    failed: dict[str, str] = {}
    for stage in plan.stages:
        if stage.name in ("RECORD", "EMBED", "DECODE"):
            for output in stage.outputs:
                for image_id, reason, _ in (output.dataset.marker() or {}).get("failed", []):
                    failed.setdefault(image_id, reason)
    return record.model_copy(update={
        "identification": identification, "simulation": simulation, "verification": verification, "backends": backends,
        "executor": executor.describe(),
        "failed_images": [FailedImage(image_id=i, reason=r) for i, r in sorted(failed.items())],
    })


class _Printer:
    """A progress bar per model pass, a line per finished stage (the methods on one layer and concept source
    on one line), one line for what was already done."""

    def __init__(self, console: Console, bars: bool):
        self.console, self.bars = console, bars
        self.progress: Progress | None = None
        self.skipped = 0
        self.methods: tuple[str, list[str], float] | None = None  # lines waiting: "STAGE where", methods, seconds

    def start(self, title: str, images: int) -> Any:
        self._flush()
        if not self.bars:
            return lambda n: None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("images"), TimeElapsedColumn(), console=self.console, transient=True)
        task = self.progress.add_task(title, total=images)
        self.progress.start()
        progress = self.progress
        return lambda n: progress.advance(task, n)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def event(self, event: Event) -> None:
        if event.status == "skipped":
            self.skipped += 1
            return
        if event.stage in ("REDUCE", "EXPLAIN", "DESCRIBE", "SIMULATE", "VERIFY"):  # one line for the methods of a layer and concept source
            where, _, method = event.title.rpartition(": ")
            where = f"{event.stage} {where}"
            if self.methods is not None and self.methods[0] != where:
                self._flush()
            previous = self.methods or (where, [], 0.0)
            self.methods = (where, [*previous[1], method], previous[2] + event.seconds)
            return
        self._flush()
        counts = event.counts
        tasks = counts.get("tasks", 0)
        what = f"{counts['rows']} images" if "rows" in counts else f"{tasks} task{'s' if tasks != 1 else ''}"
        self.console.print(f"{event.stage} {event.title}: {what} in {event.seconds:.1f} s", highlight=False)

    def _flush(self) -> None:
        if self.methods is not None:
            where, methods, seconds = self.methods
            self.console.print(f"{where}: {', '.join(methods)} in {seconds:.1f} s", highlight=False)
            self.methods = None

    def done(self, plan: Plan, record: RunRecord) -> None:
        self._flush()
        if self.skipped:
            self.console.print(f"{self.skipped} stages were already done", highlight=False)
        for i in record.identification:
            self.console.print(
                f"neuron identification {i.model}/{i.layer} ({i.method}, {i.source}): top-1 {i.top1:.0%}, "
                f"top-5 {i.top5:.0%}, mean rank {i.mean_rank:.2f} over {i.units} units"
                + (f", text cosine {i.text_cosine:.3f}" if i.text_cosine is not None else ""), highlight=False)
        rows: dict[tuple[str, str, str, str, str], list[str]] = {}
        for e in record.simulation:
            score = "all dead" if e.correlation_mean is None else f"{e.correlation_mean:.3f} ± {e.correlation_sem or 0:.3f}"
            rows.setdefault((e.model, e.layer, e.source, e.simulator, e.scoring), []).append(f"{e.method} {score}")
        for (model, layer, source, simulator, scoring), scores in rows.items():
            by = source if source == simulator else f"{source}, simulated by {simulator}"
            self.console.print(f"simulation {scoring} {model}/{layer} ({by}): {', '.join(scores)}", highlight=False)
        for v in record.verification:
            where = f"{v.model}/{v.layer} ({v.method}" + (f", {v.source})" if v.source else ")")
            if v.auc_mean is None:
                self.console.print(f"verification {where} by {v.generator}: no unit scored", highlight=False)
                continue
            self.console.print(
                f"verification {where} by {v.generator}: AUC {v.auc_mean:.3f} (shuffled labels "
                f"{v.auc_shuffled_mean if v.auc_shuffled_mean is None else format(v.auc_shuffled_mean, '.3f')}), "
                f"MAD {v.mad_mean:.2f} over {v.scored} of {v.units} units", highlight=False)
