"""The whole product loop on the generated world: generate → train (a tiny CLIP, target models and their
CVN twins, all with Ray Train) → dissect on Ray → analyse → report. ``discover demo`` runs it on a local
cluster; ``tests/benchmarks/bench_quality.py`` scores its dissections against the world's ground truth.

Everything is a pure function of ``seed``: the world, every training run and every dissection. A re-run
finds what is done (finished training runs, committed stages) and does only what is missing.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from discover_ray import world
from discover_ray.config import load_config
from discover_ray.stages import dissect
from discover_ray.train.config import load_train_config

CONFIGS = Path(__file__).parent / "configs"
CLIP_MODEL = "TinyCLIP-RN-32"
#: Target models: a small CNN and a tiny ViT on 32 px images, each with its competitive (LWTA) twin.
TARGETS: dict[str, dict[str, Any]] = {
    "cnn": {"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9},
            "image_size": 32, "layers": ["relu2", "relu3", "fc"]},
    "cnn_cvn2": {"name": "tiny_cnn_cvn2", "builder": "discover_ray.demo:tiny_cnn",
                 "kwargs": {"n_classes": 9, "competitors": 2}, "image_size": 32, "layers": ["relu2", "relu3", "fc"]},
    "vit": {"name": "deit_tiny_patch16_224", "image_size": 32, "layers": ["blocks.1.mlp.act", "head"],
            "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 9}},
    "vit_cvn4": {"name": "deit_tiny_cvn4", "image_size": 32, "layers": ["blocks.1.mlp.act", "head"],
                 "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 9}},
}
TWINS = {"cnn_cvn2": "cnn", "vit_cvn4": "vit"}
#: Per-architecture recipe: a ViT trained from scratch needs more, smaller steps and a warm-up.
RECIPES: dict[str, dict[str, Any]] = {
    "cnn": {"batch_size": 128, "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01},
            "schedule": {"name": "cosine", "min_lr": 1e-5}},
    "vit": {"batch_size": 64, "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
            "schedule": {"name": "cosine", "warmup_epochs": 1, "warmup_lr": 1e-4, "min_lr": 1e-5}},
}
METHODS = ["soft_wpmi", "wpmi", "cos", "cos3", "rank_reorder"]


@dataclass
class LoopSizes:
    train: int = 6000
    val: int = 900
    probe: int = 900
    clip_epochs: int = 10
    target_epochs: int = 4


@dataclass
class LoopResult:
    root: Path
    clip_checkpoint: str
    clip_history: list[dict[str, Any]]
    zero_shot: dict[str, float]
    targets: dict[str, dict[str, Any]]  # name → {"checkpoint", "val_top1", "run_id"}
    reports: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def store(self) -> str:
        return str(self.root / "runs")


def train_clip(folder: Path, root: Path, seed: int, sizes: LoopSizes, console: Console, cpus: float = 2):
    from discover_ray.train import train

    config = load_train_config(
        CONFIGS / "train_world_clip.yaml", storage_path=str(root / "train"), epochs=sizes.clip_epochs, seed=seed,
        scaling={"num_workers": 1, "cpus_per_worker": cpus},
        data={"train": {"source": str(folder / "train.parquet"), "text_column": "captions"},
              "val": {"source": str(folder / "val.parquet"), "text_column": "captions"}, "augment": "none"},
    )
    return train(config, console=console)


def train_target(name: str, folder: Path, root: Path, seed: int, sizes: LoopSizes, console: Console, cpus: float = 2):
    from discover_ray.train import train

    spec = {k: v for k, v in TARGETS[name].items() if k != "layers"}
    config = load_train_config({
        "name": f"world-{name}", "storage_path": str(root / "train"), "recipe": "custom", "seed": seed,
        "model": spec,
        "data": {"train": {"source": str(folder / "train.parquet")}, "val": {"source": str(folder / "val.parquet")},
                 "augment": "none"},
        "epochs": sizes.target_epochs + (1 if name.startswith("vit") else 0),
        **RECIPES[name.split("_")[0]],
        "scaling": {"num_workers": 1, "cpus_per_worker": cpus},
    })
    return train(config, console=console)


def dissect_target(name: str, checkpoint: str, clip_checkpoint: str, folder: Path, root: Path, seed: int,
                   console: Console) -> str:
    model = {**TARGETS[name], "alias": name, "checkpoint": checkpoint}
    config = load_config({
        "name": f"world-{name}", "store": str(root / "runs"), "seed": seed,
        "probe": {"source": str(folder / "probe.parquet"), "shard_size": 300},
        "models": [model],
        "concepts": [
            {"kind": "labels", "superclasses": {
                **{c: [k for k in world.class_names() if k.startswith(c + " ")] for c in world.COLOURS},
                **{s: [k for k in world.class_names() if k.endswith(" " + s)] for s in world.SHAPES}}},
            {"kind": "clip", "model": CLIP_MODEL, "pretrained": clip_checkpoint,
             "concepts": str(folder / "concepts.txt"), "batch_size": 300},
        ],
        "record": {"batch_size": 150},
        "reduce": {"methods": METHODS, "top_k": 5},
        "ray": {"progress": False},
    })
    return dissect(config, console=console).run_id


def run_loop(root: str | Path = "./discover-demo", seed: int = 0, sizes: LoopSizes | None = None,
             console: Console | None = None) -> LoopResult:
    """Runs (or resumes) the whole loop under ``root``; returns what it made."""
    from discover_ray.config import RayConfig
    from discover_ray.encoders.clip import ClipEncoder, ClipSpec
    from discover_ray.report import build_report
    from discover_ray.stages.cluster import connect

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sizes = sizes or LoopSizes()
    console = console or Console()
    root = Path(root).resolve()
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    folder = world.write_world(root / "world", seed, sizes.train, sizes.val, sizes.probe)
    seconds["generate"] = time.perf_counter() - began
    import ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):  # quiet workers: the loop prints its own lines
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    connect(RayConfig(progress=False))  # one cluster for every stage

    # The five training runs are independent: they run side by side, each worker on a share of the CPUs, so
    # that one run's start-up and evaluation overlap the others' steps. Each is the same run it would be alone.
    began = time.perf_counter()
    share = max(0.1, (ray.cluster_resources().get("CPU", 1) - 0.05) / (1 + len(TARGETS)))
    with ThreadPoolExecutor(max_workers=1 + len(TARGETS)) as pool:
        clip_job = pool.submit(train_clip, folder, root, seed, sizes, console, share)
        jobs = {name: pool.submit(train_target, name, folder, root, seed, sizes, console, share) for name in TARGETS}
        clip = clip_job.result()
        trained = {name: job.result() for name, job in jobs.items()}
    seconds["train"] = time.perf_counter() - began
    assert clip.model_file is not None
    targets: dict[str, dict[str, Any]] = {}
    for name, result in trained.items():
        assert result.model_file is not None
        targets[name] = {"checkpoint": result.model_file, "val_top1": result.final.get("val_top1")}
    encoder = ClipEncoder(ClipSpec(CLIP_MODEL, clip.model_file))
    zero_shot = world.zero_shot_accuracy(encoder, world.generate(sizes.probe, seed=seed * 10 + 2))

    began = time.perf_counter()
    for name, target in targets.items():
        target["run_id"] = dissect_target(name, target["checkpoint"], clip.model_file, folder, root, seed, console)
    seconds["dissect"] = time.perf_counter() - began

    began = time.perf_counter()
    reports = {}
    for name, twin in TWINS.items():
        report = build_report(root / "runs", targets[name]["run_id"], out=root / "reports" / name, examples=6,
                              twin=targets[twin]["run_id"])
        reports[name] = report.index
    seconds["report"] = time.perf_counter() - began
    return LoopResult(root, clip.model_file, clip.history, zero_shot, targets, reports, seconds)
