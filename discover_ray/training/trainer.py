"""The training driver: one ``TorchTrainer`` run per config, named so that a re-run resumes it."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import fsspec
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from rich.console import Console

from discover_ray.on_ray.cluster import connect
from discover_ray.training.config import TrainConfig
from discover_ray.training.loop import METRICS_FILE, MODEL_FILE, checkpoint_name, epoch_line, train_loop

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    name: str
    run_path: str
    checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    trained_epochs: list[int] = field(default_factory=list)

    @property
    def model_file(self) -> str | None:
        """The weights ``discover dissect`` loads (``models[].checkpoint``)."""
        return f"{self.checkpoint}/{MODEL_FILE}" if self.checkpoint else None

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def train(config: TrainConfig, console: Console | None = None) -> TrainResult:
    """Train (or resume, or find finished) the run ``config.run_name`` under ``config.storage_path``."""
    run_path = f"{config.storage_path.rstrip('/')}/{config.run_name}"
    before = _history(run_path)
    if before and before[-1]["epoch"] >= config.epochs - 1:
        if console:
            console.print(f"{config.run_name}: {before[-1]['epoch'] + 1} epochs are done, nothing to train")
        return TrainResult(config.run_name, run_path, f"{run_path}/{checkpoint_name(before[-1]['epoch'])}", before, [])
    connect(config.scaling.address, config.scaling.num_cpus)
    resources: dict[str, float] = {"CPU": config.scaling.cpus_per_worker}
    if config.scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker=resources,
            accelerator_type=config.scaling.accelerator_type,
            label_selector=config.scaling.label_selector,
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=config.storage_path,
            failure_config=FailureConfig(max_failures=config.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
    )
    if console:
        done = f", resuming after epoch {before[-1]['epoch']}" if before else ""
        console.print(f"training {config.run_name} ({config.model.name}, {config.epochs} epochs){done} → {run_path}",
                      highlight=False)
    with _EpochLines(run_path, config.run_name, console, {h["epoch"] for h in before}):
        result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint and "://" not in checkpoint and not checkpoint.startswith("/"):  # a bucket path without its scheme
        checkpoint = f"{run_path}/{checkpoint.rsplit('/', 1)[-1]}"
    history = _history(run_path)
    trained = [h["epoch"] for h in history if not before or h["epoch"] > before[-1]["epoch"]]
    return TrainResult(config.run_name, run_path, checkpoint, history, trained)


class _EpochLines:
    """Prints a line per finished epoch, read from the checkpoints as they appear (the workers' own output
    stays in Ray's logs)."""

    def __init__(self, run_path: str, name: str, console: Console | None, seen: set[int], interval: float = 1.0):
        self.run_path, self.name, self.console, self.seen, self.interval = run_path, name, console, set(seen), interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _EpochLines:
        if self.console is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.console is not None:
            self.stop.set()
            self.thread.join(timeout=10)
            self._print_new()

    def _watch(self) -> None:
        while not self.stop.wait(self.interval):
            self._print_new()

    def _print_new(self) -> None:
        try:
            history = _history(self.run_path)
        except (OSError, ValueError):  # a checkpoint being written
            return
        for metrics in history:
            if metrics["epoch"] not in self.seen:
                self.seen.add(metrics["epoch"])
                assert self.console is not None
                self.console.print(f"{self.name}: {epoch_line(metrics)}", highlight=False)


def _history(run_path: str) -> list[dict[str, Any]]:
    """The metrics history of the newest checkpoint under ``run_path`` (empty when there is none)."""
    fs, path = fsspec.core.url_to_fs(run_path)
    found = sorted(fs.glob(f"{path}/epoch_*/{METRICS_FILE}"))
    if not found:
        return []
    with fs.open(found[-1], "r") as handle:
        return json.load(handle)["history"]
