"""``discover watch``: dissect every completed checkpoint of a training run that has not been dissected yet.

A training run is any of: the ``discover train`` layout (``epoch_NNNN/model.safetensors``), a Ray Train run
folder (its ``checkpoint_manager_snapshot.json`` lists the checkpoints that are complete; a folder not yet
listed is still being written), or a folder / bucket of weight files (``*.safetensors``, ``*.pt``, ``*.pth``),
local or any fsspec URI. Each checkpoint becomes the config's first model's ``checkpoint``; runs are named by
content, so a checkpoint already dissected is found by its run id and skipped: listing again costs nothing.
After each pass the labels' drift from checkpoint to checkpoint is computed (per layer: stable units, the
units that changed most, the first checkpoint at which each concept is some unit's label) and written to
``{store}/watches/{watch id}/watch.json``.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from discover_ray.config import DissectConfig
from discover_ray.errors import ConfigError, InputNotFound, RunNotFound
from discover_ray.schema import Labels
from discover_ray.store import Store, config_hash

__all__ = ["Checkpoint", "WatchPass", "completed_checkpoints", "watch_once"]

WEIGHTS = (".safetensors", ".pt", ".pth")
SNAPSHOT = "checkpoint_manager_snapshot.json"
_FOLDER = re.compile(r"^(epoch|checkpoint)_(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    name: str  # epoch_0003, checkpoint_000002, or the weight file's name
    uri: str  # the weights file


@dataclass
class Drift:
    """How one layer's labels moved from one checkpoint to the next."""

    layer: str
    method: str
    source: str
    before: str
    after: str
    units: int
    stable: int
    most_changed: list[dict[str, Any]]


@dataclass
class WatchPass:
    watch_id: str
    checkpoints: list[dict[str, str]]  # name, uri, run_id, and "dissected" (this pass) or "done" (before)
    dissected: int
    drift: list[Drift] = field(default_factory=list)
    first_seen: dict[str, dict[str, str]] = field(default_factory=dict)  # layer → concept → first checkpoint


def completed_checkpoints(train_dir: str) -> list[Checkpoint]:
    """The checkpoints of a training run that are complete, oldest first."""
    fs, root = fsspec.core.url_to_fs(train_dir)
    if not fs.isdir(root):
        raise InputNotFound(f"training run {train_dir!r} not found; give the run's folder (the `discover train` "
                            "storage path and name), a Ray Train run folder, or a folder of weight files")
    protocol = "" if train_dir.startswith("/") or "://" not in train_dir else train_dir.split("://", 1)[0] + "://"
    entries = fs.ls(root, detail=True)
    listed: set[str] | None = None
    if fs.exists(posixpath.join(root, SNAPSHOT)):
        with fs.open(posixpath.join(root, SNAPSHOT), "r") as handle:
            snapshot = json.load(handle)
        listed = {r.get("checkpoint_dir_name") or posixpath.basename(str(r.get("checkpoint", {}).get("path", "")))
                  for r in snapshot.get("checkpoint_results", [])}
    found: list[tuple[int, str, str]] = []
    for entry in entries:
        name = posixpath.basename(entry["name"].rstrip("/"))
        match = _FOLDER.match(name)
        if entry["type"] == "directory" and match:
            if listed is not None and name not in listed:
                continue  # Ray Train has not registered it: still being written
            weights = _weights_in(fs, entry["name"])
            if weights is not None:
                found.append((int(match[2]), name, protocol + weights))
        elif entry["type"] == "file" and name.endswith(WEIGHTS) and entry.get("size", 1):
            number = re.findall(r"\d+", name)
            found.append((int(number[-1]) if number else -1, name, protocol + entry["name"]))
    return [Checkpoint(name, uri) for _, name, uri in sorted(found)]


def _weights_in(fs: Any, folder: str) -> str | None:
    files = [f for f in fs.ls(folder, detail=True) if f["type"] == "file" and f["name"].endswith(WEIGHTS)]
    preferred = [f for f in files if posixpath.basename(f["name"]) == "model.safetensors"]
    chosen = preferred or [f for f in files if posixpath.basename(f["name"]) != "training_state.pt"]
    if len(chosen) != 1 or not chosen[0].get("size", 1):
        return None
    return str(chosen[0]["name"])


def watch_id(train_dir: str, config: DissectConfig) -> str:
    return config_hash({"train_dir": train_dir.rstrip("/"), "config": config.identity()})[:16]


def watch_once(train_dir: str, config: DissectConfig, *, executor: Any = None, console: Any = None,
               changed: int = 5) -> WatchPass:
    """One pass: dissect the completed checkpoints not dissected yet, then the drift between consecutive ones."""
    from discover_ray.analyze import compare_runs
    from discover_ray.dissection import dissect
    from discover_ray.dissection.identity import run_identity
    from discover_ray.runs import load_run

    if not config.models:
        raise ConfigError("the watch config needs a model (its first model is given each checkpoint)")
    store = Store(config.store)
    checkpoints = completed_checkpoints(train_dir)
    rows, dissected, runs = [], 0, []
    for checkpoint in checkpoints:
        models = [config.models[0].model_copy(update={"checkpoint": checkpoint.uri}), *config.models[1:]]
        one = config.model_copy(update={"models": models})
        run_id = run_identity(one).run_id
        try:
            load_run(store, run_id)
            status = "done"
        except RunNotFound:
            run_id = dissect(one, executor=executor, console=console).run_id
            dissected += 1
            status = "dissected"
        rows.append({"name": checkpoint.name, "uri": checkpoint.uri, "run_id": run_id, "status": status})
        runs.append((checkpoint.name, run_id))
    found = WatchPass(watch_id(train_dir, config), rows, dissected)
    for (before, run_a), (after, run_b) in zip(runs, runs[1:], strict=False):
        for layer in compare_runs(store, run_a, run_b):
            table = layer.changes.slice(0, changed).to_pylist()
            found.drift.append(Drift(layer.layer, layer.method, layer.source, before, after, layer.units, layer.stable,
                                     table))
    for name, run_id in runs:
        for entry in load_run(store, run_id).labels:
            if entry.table != "labels":
                continue
            seen = found.first_seen.setdefault(f"{entry.layer} ({entry.method}, {entry.source})", {})
            for concept, _ in Labels(store.committed(entry.dataset).read()).top().values():
                seen.setdefault(concept, name)
    store.write_json(f"watches/{found.watch_id}/watch.json", {
        "train_dir": train_dir, "checkpoints": rows, "dissected": dissected,
        "drift": [asdict(d) for d in found.drift], "first_seen": found.first_seen})
    return found
