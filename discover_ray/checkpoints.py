"""Which checkpoints a path names: a training run folder, a glob of weight files, or one weights file.

A training run is any of: the ``discover train`` layout (``epoch_NNNN/model.safetensors``), a Ray Train run
folder (its ``checkpoint_manager_snapshot.json`` lists the checkpoints that are complete; a folder not yet
listed is still being written), or a folder / bucket of weight files (``*.safetensors``, ``*.pt``, ``*.pth``,
``*.th``), local or any fsspec URI. ``discover watch`` dissects the completed checkpoints of a run as they
appear; a dissection config's ``models[].checkpoints`` names many checkpoints of one architecture at once.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import fsspec

from discover_ray.errors import InputNotFound

__all__ = ["Checkpoint", "checkpoints_of", "completed_checkpoints"]

WEIGHTS = (".safetensors", ".pt", ".pth", ".th")
SNAPSHOT = "checkpoint_manager_snapshot.json"
_FOLDER = re.compile(r"^(epoch|checkpoint)_(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    name: str  # epoch_0003, checkpoint_000002, or the weight file's name
    uri: str  # the weights file


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


def checkpoints_of(where: str | list[str]) -> list[Checkpoint]:
    """The checkpoints ``where`` names, in order: a list of weight files (as given), a glob (``*``, ``?``,
    ``[``: the matching weight files, sorted by the last number in their names), or a training run folder
    (its completed checkpoints, oldest first). None found is an error naming what was looked for."""
    if isinstance(where, list):
        found = [Checkpoint(_stem(uri), uri) for uri in where]
    elif any(c in where for c in "*?["):
        fs, pattern = fsspec.core.url_to_fs(where)
        protocol = "" if "://" not in where else where.split("://", 1)[0] + "://"
        files = [p for p in fs.glob(pattern) if p.endswith(WEIGHTS) and posixpath.basename(p) != "training_state.pt"]
        found = [Checkpoint(_stem(p), protocol + p) for p in sorted(files, key=_order)]
    else:
        found = completed_checkpoints(where)
    if not found:
        raise InputNotFound(f"no checkpoint found at {where!r}: give a training run folder, a glob of weight files "
                            f"({', '.join('*' + w for w in WEIGHTS)}) or a list of them")
    names = [c.name for c in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # folders of one file each (epoch_0001/model.safetensors): name them by their folder
        found = [Checkpoint(_stem(posixpath.dirname(c.uri)) if c.name in repeated else c.name, c.uri) for c in found]
    return found


def _stem(uri: str) -> str:
    name = posixpath.basename(uri.rstrip("/"))
    for suffix in WEIGHTS:
        name = name.removesuffix(suffix)
    return name


def _order(path: str) -> tuple[int, str]:
    numbers = re.findall(r"\d+", posixpath.basename(path))
    return (int(numbers[-1]) if numbers else -1, path)
