"""Run records: what a dissection was asked to do, what each stage did, and where its outputs are.

``runs/{run_id}/run.json`` holds the resolved config, the versions of the code and its libraries, each
stage's status, row counts and timings, unreadable images, the label datasets and the neuron
identification results. It is rewritten (atomically) as stages finish, so a killed run shows how far
it got. Reading labels back needs no Ray.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from discover_ray.store import Store

__all__ = ["RunRecord", "LabelEntry", "load_run", "read_labels", "versions"]

RUN_FILE = "run.json"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("discover-ray", "torch", "torchvision", "ray", "timm", "open_clip_torch", "pyarrow", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


@dataclass
class RunRecord:
    """The mutable record of one run; ``save()`` writes it whole."""

    store: Store
    run_id: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, store: Store, run_id: str, name: str, config: dict[str, Any]) -> RunRecord:
        record = cls(store, run_id)
        previous = load_run(store, run_id, missing_ok=True)
        record.data = {
            "run_id": run_id,
            "name": name,
            "config": config,
            "versions": versions(),
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "attempt": (previous or {}).get("attempt", 0) + 1,
            "stages": [],
            "models": {},
            "labels": [],
            "identification": [],
            "failed_images": [],
        }
        record.save()
        return record

    def save(self) -> None:
        self.store.write_json(f"runs/{self.run_id}/{RUN_FILE}", self.data)

    def stage(self, stage: str, key: str, status: str, seconds: float, **counts: Any) -> None:
        self.data["stages"].append({"stage": stage, "key": key, "status": status, "seconds": round(seconds, 3), **counts})
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if error:
            self.data["error"] = error
        self.save()


@dataclass(frozen=True)
class LabelEntry:
    model: str
    checkpoint_id: str
    layer: str
    method: str
    source: str
    concept_set_id: str
    encoder_id: str
    dataset: str  # relative to the store root


def load_run(store: Store, run_id: str, missing_ok: bool = False) -> dict[str, Any] | None:
    relative = f"runs/{run_id}/{RUN_FILE}"
    if not store.exists(relative):
        if missing_ok:
            return None
        known = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(store.path("runs"), detail=False)) if store.exists("runs") else []
        raise FileNotFoundError(f"no run {run_id!r} under {store.root}; runs there: {known or 'none'}")
    return store.read_json(relative)


def read_labels(
    store: Store | str, run_id: str, layer: str, method: str | None = None, model: str | None = None
) -> list[tuple[LabelEntry, pa.Table]]:
    """The label tables of ``layer`` in a run (optionally one method / model), with what each one is."""
    store = store if isinstance(store, Store) else Store(store)
    run = load_run(store, run_id)
    assert run is not None
    entries = [LabelEntry(**e) for e in run["labels"]]
    chosen = [
        e for e in entries
        if e.layer == layer and (method is None or e.method == method) and (model is None or e.model == model)
    ]
    if not chosen:
        layers = sorted({e.layer for e in entries})
        methods = sorted({e.method for e in entries})
        raise KeyError(
            f"run {run_id} has no labels for layer {layer!r}"
            + (f", method {method!r}" if method else "")
            + (f", model {model!r}" if model else "")
            + f"; layers: {layers}, methods: {methods}"
        )
    return [(e, store.dataset(e.dataset).read()) for e in chosen]
