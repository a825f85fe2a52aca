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

from dataclasses import asdict, dataclass, field
from typing import Any

from discover_ray.checkpoints import Checkpoint, completed_checkpoints
from discover_ray.config import DissectConfig
from discover_ray.errors import ConfigError, RunNotFound
from discover_ray.store import Store, config_hash

__all__ = ["Checkpoint", "WatchPass", "completed_checkpoints", "watch_once"]

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


def watch_id(train_dir: str, config: DissectConfig) -> str:
    return config_hash({"train_dir": train_dir.rstrip("/"), "config": config.identity()})[:16]


def watch_once(train_dir: str, config: DissectConfig, *, executor: Any = None, console: Any = None,
               changed: int = 5) -> WatchPass:
    """One pass: dissect the completed checkpoints not dissected yet, then the drift between consecutive ones."""
    from discover_ray.analyze.evolution import evolution, runs_as_checkpoints
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
    sequence = runs_as_checkpoints(store, [run_id for _, run_id in runs], [name for name, _ in runs])
    if len(sequence) > 1:
        for layer in evolution(store, sequence, changed=changed):
            found.first_seen[f"{layer.layer} ({layer.method}, {layer.source})"] = layer.first_seen
            found.drift += [Drift(layer.layer, layer.method, layer.source, step.before, step.after, step.units,
                                  step.stable, step.changed) for step in layer.steps]
    store.write_json(f"watches/{found.watch_id}/watch.json", {
        "train_dir": train_dir, "checkpoints": rows, "dissected": dissected,
        "drift": [asdict(d) for d in found.drift], "first_seen": found.first_seen})
    return found
