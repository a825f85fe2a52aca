"""The whole product loop on the generated world: generate → train (a tiny CLIP, target models and their
CVN twins, all with Ray Train) → dissect on Ray → analyse → report. ``discover demo`` runs it on a local
cluster; ``tests/benchmarks/bench_quality.py`` scores its dissections against the world's ground truth.

Every step runs from a config file the loop writes to ``ROOT/configs/`` (``train_clip.yaml``,
``train_<target>.yaml``, then ``<target>.yaml`` for each dissection), so any step can be edited and
re-run by hand: ``discover dissect ROOT/configs/cnn.yaml``. A config that was edited since the loop wrote
it is kept as it is and used. Everything is a pure function of ``seed``; a re-run finds what is done
(finished training runs, committed stages) and does only what is missing.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from discover_ray import world
from discover_ray.config import load_config
from discover_ray.dissection import dissect
from discover_ray.training.config import load_train_config

__all__ = ["CLIP_MODEL", "FAMILY_COLUMNS", "METHODS", "TARGETS", "TWINS", "LoopResult", "LoopSizes", "run_loop", "write_config"]

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
METHODS = ["soft_wpmi", "wpmi", "cos", "cos3", "rank_reorder", "linear_explanation"]
#: The world's five concept families as label concepts (one per value), named as in ``world.concept_vocabulary``.
FAMILY_COLUMNS = {family: "{value} background" if family == "background" else "{value}" for family in world.FAMILIES}
HEADER = ("# Written by `discover demo`. Edit it and re-run this step with `discover {command} {path}`;\n"
          "# the demo keeps a config you edited and runs it as it is.\n")


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
    targets: dict[str, dict[str, Any]]  # name → {"checkpoint", "val_top1", "run_id", "config"}
    reports: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def store(self) -> str:
        return str(self.root / "runs")


def write_config(path: Path, config: dict[str, Any], command: str, console: Console) -> Path:
    """``config`` as YAML at ``path``, unless the file holds an edited config (then that is kept and used)."""
    text = HEADER.format(command=command, path=path) + yaml.safe_dump(config, sort_keys=False)
    stamp = path.with_name(f".{path.name}.written")
    edited = path.exists() and path.read_text() != text and (not stamp.exists() or stamp.read_text() != path.read_text())
    if edited:
        console.print(f"keeping edited {path}", highlight=False)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp.write_text(text)
    return path


def clip_config(folder: Path, root: Path, seed: int, sizes: LoopSizes, cpus: float) -> dict[str, Any]:
    """A tiny CLIP trained from scratch, contrastively, on the world's image–caption pairs."""
    return {
        "name": "world-tiny-clip", "task": "contrastive", "recipe": "custom", "seed": seed,
        "storage_path": str(root / "train"), "model": {"name": CLIP_MODEL},
        "data": {"train": {"source": str(folder / "train.parquet"), "text_column": "captions"},
                 "val": {"source": str(folder / "val.parquet"), "text_column": "captions"}, "augment": "none"},
        "epochs": sizes.clip_epochs, "batch_size": 256,
        "optimizer": {"name": "adamw", "lr": 5.0e-3, "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_epochs": 1, "warmup_lr": 1.0e-4, "min_lr": 1.0e-5},
        "scaling": {"num_workers": 1, "cpus_per_worker": cpus},
    }


def target_config(name: str, folder: Path, root: Path, seed: int, sizes: LoopSizes, cpus: float) -> dict[str, Any]:
    """A target classifier (or its CVN twin) trained on the world's 9 classes."""
    return {
        "name": f"world-{name}", "storage_path": str(root / "train"), "recipe": "custom", "seed": seed,
        "model": {k: v for k, v in TARGETS[name].items() if k != "layers"},
        "data": {"train": {"source": str(folder / "train.parquet")}, "val": {"source": str(folder / "val.parquet")},
                 "augment": "none"},
        "epochs": sizes.target_epochs + (1 if name.startswith("vit") else 0),
        **RECIPES[name.split("_")[0]],
        "scaling": {"num_workers": 1, "cpus_per_worker": cpus},
    }


#: Describe-and-Dissect on the world CNN, offline: the tiny CLIP captions by retrieval from the world's caption
#: bank, the captions are the candidates (no summariser), the world's renderer draws them; crops at 64 px (the
#: images are 32 px: the paper's 375 px would only cost time). Its labels and soft-WPMI's are verified (CoSy).
DESCRIBED = {"cnn": ["relu3", "fc"]}
DESCRIBE_PARAMS = {"crop_size": 64}


def describe_sections(clip_checkpoint: str, folder: Path) -> dict[str, Any]:
    return {
        "backends": {
            "captioner": {"kind": "clip_retrieval", "model": CLIP_MODEL, "pretrained": clip_checkpoint,
                          "captions": str(folder / "captions.txt")},
            "summarizer": {"kind": "none"},
            "generator": {"kind": "world"},
        },
        "verify": {"methods": ["soft_wpmi", "describe_and_dissect"], "images": 20, "control": 300},
    }


def dissect_config(name: str, checkpoint: str, clip_checkpoint: str, folder: Path, root: Path, seed: int,
                   calibration: dict[str, float] | None = None) -> dict[str, Any]:
    """A target dissected with label concepts (classes + colour and shape superclasses), the world's five concept
    families, and the tiny CLIP (with its calibration for concept values, when given); the world CNN also by
    Describe-and-Dissect, with its labels and soft-WPMI's verified on drawn images."""
    methods = METHODS if calibration else [m for m in METHODS if m != "linear_explanation"]
    described = name in DESCRIBED and calibration is not None
    clip = {"kind": "clip", "model": CLIP_MODEL, "pretrained": clip_checkpoint, "concepts": str(folder / "concepts.txt"),
            "batch_size": 300}
    return {
        "name": f"world-{name}", "store": str(root / "runs"), "seed": seed,
        "probe": {"source": str(folder / "probe.parquet"), "shard_size": 300},
        "models": [{**TARGETS[name], "alias": name, "checkpoint": checkpoint}],
        "concepts": [
            {"kind": "labels", "superclasses": {
                **{c: [k for k in world.class_names() if k.startswith(c + " ")] for c in world.COLOURS},
                **{s: [k for k in world.class_names() if k.endswith(" " + s)] for s in world.SHAPES}}},
            {"kind": "labels", "name": "families", "classes": False, "columns": FAMILY_COLUMNS},
            {**clip, "calibration": calibration} if calibration else clip,
        ],
        "record": {"batch_size": 150},
        "reduce": {"methods": [*methods, "describe_and_dissect"] if described else methods, "top_k": 5,
                   **({"params": {"describe_and_dissect": {**DESCRIBE_PARAMS, "layers": DESCRIBED[name]}}} if described else {})},
        **(describe_sections(clip_checkpoint, folder) if described else {}),
        "ray": {"progress": False},
    }


def run_loop(root: str | Path = "./discover-demo", seed: int = 0, sizes: LoopSizes | None = None,
             console: Console | None = None) -> LoopResult:
    """Runs (or resumes) the whole loop under ``root``; returns what it made."""
    from discover_ray.dissection.calibration import calibrate_source
    from discover_ray.encoders.clip import ClipEncoder, ClipSpec
    from discover_ray.on_ray.cluster import connect
    from discover_ray.report import build_report
    from discover_ray.training import train

    sizes = sizes or LoopSizes()
    console = console or Console()
    root = Path(root).resolve()
    configs = root / "configs"
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    folder = world.write_world(root / "world", seed, sizes.train, sizes.val, sizes.probe)
    seconds["generate"] = time.perf_counter() - began
    resources = connect()  # one cluster (token authentication on) for every step

    # The five training runs are independent: they run side by side, each worker on a share of the CPUs, so
    # that one run's start-up and evaluation overlap the others' steps. Each is the same run it would be alone.
    began = time.perf_counter()
    share = round(max(0.1, (resources.cpus - 0.05) / (1 + len(TARGETS))), 3)
    paths = {"clip": write_config(configs / "train_clip.yaml", clip_config(folder, root, seed, sizes, share),
                                  "train", console)}
    for name in TARGETS:
        paths[name] = write_config(configs / f"train_{name}.yaml", target_config(name, folder, root, seed, sizes, share),
                                   "train", console)
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        jobs = {name: pool.submit(train, load_train_config(path), console=console) for name, path in paths.items()}
        trained = {name: job.result() for name, job in jobs.items()}
    seconds["train"] = time.perf_counter() - began
    clip = trained.pop("clip")
    assert clip.model_file is not None
    targets: dict[str, dict[str, Any]] = {}
    for name, result in trained.items():
        assert result.model_file is not None
        targets[name] = {"checkpoint": result.model_file, "val_top1": result.final.get("val_top1")}
    encoder = ClipEncoder(ClipSpec(CLIP_MODEL, clip.model_file))
    zero_shot = world.zero_shot_accuracy(encoder, world.generate(sizes.probe, seed=seed * 10 + 2))

    began = time.perf_counter()
    # the tiny CLIP's concept values σ(a·(cos + b)), fitted to the probe's labels (its image embeddings are the
    # dissections' own EMBED stage, computed once here)
    first = dissect_config(next(iter(targets)), next(iter(targets.values()))["checkpoint"], clip.model_file, folder,
                           root, seed)
    calibrated = calibrate_source(load_config(first), f"clip:{CLIP_MODEL}", executor="ray", console=console).calibration
    calibration = {"a": round(calibrated.a, 4), "b": round(calibrated.b, 4)}
    seconds["calibrate"] = time.perf_counter() - began
    console.print(f"tiny CLIP calibration: a = {calibration['a']}, b = {calibration['b']} (mean BCE "
                  f"{calibrated.loss:.4f})", highlight=False)

    began = time.perf_counter()
    for name, target in targets.items():
        path = write_config(configs / f"{name}.yaml",
                            dissect_config(name, target["checkpoint"], clip.model_file, folder, root, seed, calibration),
                            "dissect", console)
        target["config"] = path
        target["run_id"] = dissect(load_config(path), console=console).run_id
    seconds["dissect"] = time.perf_counter() - began

    began = time.perf_counter()
    reports = {}
    for name, twin in TWINS.items():
        report = build_report(root / "runs", targets[name]["run_id"], out=root / "reports" / name, examples=6,
                              twin=targets[twin]["run_id"])
        reports[name] = report.index
    seconds["report"] = time.perf_counter() - began
    return LoopResult(root, clip.model_file, clip.history, zero_shot, targets, reports, seconds)
