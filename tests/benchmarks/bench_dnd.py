"""Benchmark of Describe-and-Dissect: seconds per neuron per step, backend calls per neuron, and the cache.

A dissection of a seeded random-init world CNN (``relu3``: 32 conv units with attention crops; ``fc``: 9
units) over generated world images, with the method's defaults (10 top images, ≤ 4 crops at 375 px, 10
captioned, 5 summaries, 10 images per candidate, β = 5, t = 10) and tiny random backends built from configs:
a BLIP captioner, a causal-LM summariser (``transformers``) and a Stable Diffusion pipeline (32 px, 2 steps),
or with ``--backends world`` the offline set of the demo (retrieval captions by a CLIP, no summariser, the
world's renderer). Three runs, in this process, each in its own store except the last:

- baseline: one neuron per task and one (neuron, candidate) per drawing task (``unit_chunk: 1``,
  ``draw_chunk: 1``), the reference's neuron-by-neuron, candidate-by-candidate order: every batch holds one
  neuron's (or one candidate's) images;
- ours: the defaults, 16 neurons and 32 (neuron, candidate) pairs per task, every step batched across them;
- re-run: ours again with a changed selection parameter (a new DESCRIBE key): every call from the cache.

Reported per run: DESCRIBE seconds per neuron, split by step (crops, caption, summarise, generate, select),
calls made and answered from the cache per neuron, and the re-run's hit rate. Prints one JSON document.

    python tests/benchmarks/bench_dnd.py                      # tiny Hugging Face backends, CPU
    python tests/benchmarks/bench_dnd.py --backends world     # the demo's offline backends
    python tests/benchmarks/bench_dnd.py --images 600 --out /tmp/dnd.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks._measure import emit  # noqa: E402

PAPER_SECONDS_PER_NEURON = 38.8  # DnD paper A.10, one V100, ResNet-50 layer4, GPT + BLIP + SD v1-5


def backends(kind: str, folder: Path) -> dict[str, Any]:
    from discover_ray import world

    if kind == "world":
        (folder / "captions.txt").write_text("\n".join(world.caption_bank()) + "\n")
        return {"captioner": {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32", "captions": str(folder / "captions.txt")},
                "summarizer": {"kind": "none"}, "generator": {"kind": "world"}}
    from tests.tiny_hf import save_tiny_blip, save_tiny_sd
    from tests.tiny_llm import save_tiny_causal_lm

    return {"captioner": {"kind": "blip", "model": str(save_tiny_blip(folder / "blip"))},
            "summarizer": {"kind": "transformers", "model": str(save_tiny_causal_lm(folder / "lm")), "max_new_tokens": 8},
            "generator": {"kind": "diffusers", "model": str(save_tiny_sd(folder / "sd")), "steps": 2, "size": 32,
                          "dtype": "float32", "batch_size": 10}}


def config(probe: Path, store: Path, sections: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {
        "name": "bench-dnd", "store": str(store), "seed": 0,
        "probe": {"source": str(probe), "shard_size": 1000},
        "models": [{"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9},
                    "image_size": 32, "layers": ["relu3", "fc"]}],
        "concepts": [{"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": "cifar10", "batch_size": 256}],
        "record": {"batch_size": 250},
        "reduce": {"methods": ["describe_and_dissect"], "params": {"describe_and_dissect": {"failure_budget": 1.0,
                                                                                           **params}}},
        "backends": sections,
        "ray": {"progress": False},
    }


def measure(raw: dict[str, Any]) -> dict[str, Any]:
    from rich.console import Console

    from discover_ray import Store, dissect, load_config

    began = time.perf_counter()
    result = dissect(load_config(raw), executor="local", console=Console(quiet=True))
    wall = time.perf_counter() - began
    store = Store(result.store)
    out: dict[str, Any] = {"wall_seconds": round(wall, 2), "layers": {}}
    units = calls = hits = 0
    steps: dict[str, float] = {}
    describe_seconds = sum(s.seconds for s in result.record.stages if s.stage == "DESCRIBE")
    out["tasks"] = sum(s.counts.get("tasks", 0) for s in result.record.stages if s.stage == "DESCRIBE")
    for entry in result.record.labels:
        marker = store.committed(entry.dataset).marker()
        n = marker["described"] + marker["failed"] + marker["dead"]
        out["layers"][entry.layer] = {"units": n, "described": marker["described"], "failed": marker["failed"],
                                      "dead": marker["dead"], "calls": marker["calls"], "cache_hits": marker["cache_hits"]}
        units += n
        calls += marker["calls"]
        hits += marker["cache_hits"]
        for step, seconds in marker["seconds"].items():
            steps[step] = steps.get(step, 0.0) + seconds
    out.update({
        "units": units, "describe_seconds": round(describe_seconds, 2),
        "seconds_per_neuron": round(describe_seconds / units, 4),
        "seconds_per_neuron_by_step": {k: round(v / units, 4) for k, v in steps.items()},
        "calls_per_neuron": round(calls / units, 1), "cache_hits_per_neuron": round(hits / units, 1),
        "hit_rate": round(hits / (hits + calls), 4) if hits + calls else None,
    })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", choices=["tiny", "world"], default="tiny")
    parser.add_argument("--images", type=int, default=300, help="probe images")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from discover_ray import world

    with tempfile.TemporaryDirectory(prefix="bench-dnd-") as tmp:
        folder = Path(tmp)
        probe = world.write_parquet(folder / "probe.parquet", world.generate(args.images, seed=7))
        sections = backends(args.backends, folder)
        baseline = measure(config(probe, folder / "baseline", sections, unit_chunk=1, draw_chunk=1))
        ours = measure(config(probe, folder / "ours", sections))
        rerun = measure(config(probe, folder / "ours", sections, top_generated=9))
    report = {
        "benchmark": "describe_and_dissect", "backends": args.backends, "probe_images": args.images,
        "device": "cpu", "threads": torch.get_num_threads(), "machine": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__,
        "baseline_one_neuron_per_task": baseline, "ours_default_chunks": ours, "rerun_from_cache": rerun,
        "speedup_vs_baseline": round(baseline["seconds_per_neuron"] / ours["seconds_per_neuron"], 2),
        "describe_tasks": {"baseline": baseline["tasks"], "ours": ours["tasks"]},
        "rerun_calls": sum(layer["calls"] for layer in rerun["layers"].values()),
        "paper_seconds_per_neuron_v100": PAPER_SECONDS_PER_NEURON,
        "note": "tiny random backends on CPU: the figures time the pipeline around the models, not BLIP-base or "
                "SD v1-4 themselves",
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
