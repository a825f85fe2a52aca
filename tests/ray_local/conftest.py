"""One local Ray cluster per test session, a folder of generated probe images, a tiny job config, and tiny DeiT
CVN dissections shared by the analysis and report tests (run in-process: they test reading, not Ray)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from discover_ray import world


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[None]:
    """Started after the S3 server so that workers inherit its endpoint; auth off for a hermetic cluster."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a stale `ray start` cluster
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def world_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 generated shape images as PNGs in one folder per class (the label is the folder)."""
    return world.write_folder(tmp_path_factory.mktemp("world") / "probe", world.generate(72, seed=3))


def tiny_config(probe_source: Path | str, store_root: Path | str, **changes: Any) -> dict[str, Any]:
    """A dissection of a random-init tiny CNN over ``probe_source`` with label and tiny-CLIP concepts."""
    config: dict[str, Any] = {
        "name": "tiny",
        "store": str(store_root),
        "probe": {"source": str(probe_source), "shard_size": 16},
        "models": [
            {
                "name": "tiny_cnn",
                "builder": "discover_ray.demo:tiny_cnn",
                "kwargs": {"n_classes": len(world.class_names())},
                "image_size": 32,
                "layers": ["relu2", "fc"],
            }
        ],
        "concepts": [
            {"kind": "labels"},
            {"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": "cifar10", "batch_size": 16},
        ],
        "record": {"batch_size": 8},
        "reduce": {"methods": ["soft_wpmi", "cos"], "top_k": 3, "params": {"soft_wpmi": {"top_k": 20}}},
        "ray": {"progress": False},
    }
    for key, value in changes.items():
        config[key] = value
    return config


def activations(store: Any, record: Any, layer: str, model: str = "tiny_cnn") -> Any:
    """The activation dataset of ``model``/``layer`` that a run record names."""
    return store.committed(record.models[model].layers[layer])


def snapshot(root: Path | str) -> dict[str, str]:
    """sha256 of every file under ``root`` except run records (which note each attempt)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "runs" not in p.relative_to(root).parts
    }


TINY_DEIT_CVN = {
    "name": "deit_tiny_cvn16",
    "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": len(world.class_names())},
    "image_size": 32,
    "layers": ["blocks.1.mlp.act", "head"],
}


@dataclass(frozen=True)
class DeitRuns:
    root: Path
    cvn: str  # deit_tiny_cvn16, seed 0
    cvn_seed1: str  # the same architecture at another initialisation
    twin: str  # deit_tiny_patch16_224: the non-competitive twin (GELU), seed 0


@pytest.fixture(scope="session")
def deit_runs(world_folder, tmp_path_factory) -> DeitRuns:
    """A tiny DeiT CVN at two initialisations and its GELU twin, dissected with label concepts, in this process."""
    from rich.console import Console

    from discover_ray import dissect, load_config

    root = tmp_path_factory.mktemp("deit")
    twin = {**TINY_DEIT_CVN, "name": "deit_tiny_patch16_224"}
    runs = []
    for model, seed in ((TINY_DEIT_CVN, 0), (TINY_DEIT_CVN, 1), (twin, 0)):
        raw = tiny_config(world_folder, root, models=[model], concepts=[{"kind": "labels"}], seed=seed)
        runs.append(dissect(load_config(raw), executor="local", console=Console(quiet=True)).run_id)
    return DeitRuns(root, *runs)
