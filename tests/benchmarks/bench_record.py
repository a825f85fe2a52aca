"""RECORD throughput through Ray vs a bare single-process torch loop over the same images (prints JSON).

The same probe images, model, hooks, batch size and thread count, five ways:

- ``bare_loop``: the images decoded and preprocessed up front (not timed), then one process runs the
  model over the tensors: the baseline of the issue, pure forward passes.
- ``bare_loop_decoding``: one process that reads, decodes and preprocesses each batch, then runs the
  model: RECORD's work when it decodes, without Ray.
- ``ray_record_cached``: the real RECORD stage of ``discover dissect`` (a Ray Data actor pool; the driver
  writes and commits the Parquet parts per shard) reading the probe set's decoded pixels from the store,
  as every run after the first with the same preprocessing does (here: the same model at another seed):
  the same decoded tensors as the bare loop, so this is the figure to hold against it.
- ``ray_record_decoding``: the same stage decoding its images (``record.pixel_cache: false``).
- ``ray_record_filling_cache``: the first run's pass, which decodes, records and fills the pixel cache
  (DECODE and RECORD in one pass).

Every Ray way is a whole ``discover_ray.dissect`` call (the public API); the figures are the RECORD stage's
own event in the run record.

The Ray ways run on a local cluster started before the clock (a service keeps its cluster up) and are
reported end to end and after start-up (from the first chunk back: the actor is up and its model
loaded, a fixed cost of a few seconds per stage that a large probe set amortises). All run in this
process, interleaved ``--repeat`` times; the best and the median of each are reported.

    python tests/benchmarks/bench_record.py                  # ResNet-20 on the CIFAR-10 test split
    python tests/benchmarks/bench_record.py --split train    # 50 000 images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from discover_ray import dissect, load_config  # noqa: E402
from discover_ray.models import load_model  # noqa: E402
from discover_ray.on_ray.cluster import connect  # noqa: E402
from discover_ray.probe import decode_images, preprocess_batch  # noqa: E402
from discover_ray.record import record_activations, recording  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "linear"]


def config(shared: Path, split: str, store: str, batch: int, limit: int | None, actors: int | None) -> dict:
    return {
        "store": store,
        "probe": {"source": str(shared / f"data/cifar10/{split}.parquet"), "shard_size": 2500, "limit": limit},
        "models": [{
            "name": "cifar_resnet20",
            "checkpoint": str(shared / "models/cifar10-resnet/resnet20-12fca82f.th"),
            "layers": LAYERS,
        }],
        "concepts": [{"kind": "labels"}],
        "record": {"batch_size": batch},
        "ray": {"progress": False, "actors": actors},
    }


def bare_loop(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    started = time.perf_counter()
    record_activations(model, LAYERS, batches)
    return time.perf_counter() - started


def ray_record(raw: dict, store_root: str, pixel_cache: bool, seed: int = 0) -> dict:
    """A dissection of ``raw`` into ``store_root``: its RECORD stage's timing, from the run record."""
    cfg = load_config({**raw, "store": store_root, "seed": seed, "record": {**raw["record"], "pixel_cache": pixel_cache}})
    result = dissect(cfg, console=Console(quiet=True))
    (stage,) = [s for s in result.record.stages if s.stage == "RECORD" and s.status == "done"]
    return {"seconds": stage.seconds, "startup_s": stage.counts["startup_s"],
            "images_per_s_after_startup": stage.counts["images_per_s_after_startup"],
            "pixels": stage.counts.get("pixels", {"shards_decoded": stage.counts["shards"]})}


def bare_loop_decoding(model: torch.nn.Module, probe, preprocess, batch: int) -> float:
    """Read, decode and preprocess each batch, then record it: the stage's work in one process."""
    started = time.perf_counter()
    with recording(model, LAYERS) as store, torch.inference_mode():
        model.eval()
        for start in range(0, len(probe), batch):
            decoded = decode_images(probe, probe.images[start : start + batch], failure_budget=1.0)
            model(preprocess_batch(decoded.images, preprocess))
    del store
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--actors", type=int, default=None, help="recorder actors (default: the stage's own plan)")
    args = parser.parse_args()
    shared = Path(os.environ.get("DISCOVER_SHARED", REPO.parent / "shared"))
    raw = config(shared, args.split, "unused", args.batch, args.limit, args.actors)
    cfg = load_config({**raw, "store": tempfile.gettempdir()})

    probe = cfg.probe.open()
    loaded = load_model(cfg.models[0].spec())
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    decoded = decode_images(probe, probe.images)
    tensors = torch.stack([loaded.preprocess(im) for im in decoded.images])
    batches = list(tensors.split(args.batch))
    n = len(tensors)

    connect()  # the cluster is up before any clock starts
    bare, decoding = [], []
    ray_runs: dict[str, list[dict]] = {"ray_record_cached": [], "ray_record_decoding": [], "ray_record_filling_cache": []}
    bare_loop(loaded.model, batches[:2])  # warm-up: kernels and allocator
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeat):
            bare.append(bare_loop(loaded.model, batches))
            decoding.append(bare_loop_decoding(loaded.model, probe, loaded.preprocess, args.batch))
            ray_runs["ray_record_decoding"].append(ray_record(raw, f"{work}/decoding-{repeat}", pixel_cache=False))
            ray_runs["ray_record_filling_cache"].append(ray_record(raw, f"{work}/cached-{repeat}", pixel_cache=True))
            ray_runs["ray_record_cached"].append(ray_record(raw, f"{work}/cached-{repeat}", pixel_cache=True, seed=1))
    assert all(r["pixels"]["shards_decoded"] == 0 for r in ray_runs["ray_record_cached"])
    rates = {"bare_loop": [n / s for s in bare], "bare_loop_decoding": [n / s for s in decoding]}
    for name, runs in ray_runs.items():
        rates[f"{name}_end_to_end"] = [n / r["seconds"] for r in runs]
        rates[f"{name}_after_startup"] = [r["images_per_s_after_startup"] for r in runs]
    best = {k: max(v) for k, v in rates.items()}
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({
        "benchmark": "record", "model": "cifar_resnet20", "split": args.split, "images": n, "batch": args.batch,
        "threads": threads, "layers": LAYERS, "repeat": args.repeat,
        "images_per_s": {k: {"best": round(best[k], 1), "median": round(median[k], 1),
                             "runs": [round(r, 1) for r in v]} for k, v in rates.items()},
        "startup_s": {name: [r["startup_s"] for r in runs] for name, runs in ray_runs.items()},
        "ratio_vs_bare_loop": {k: {"best": round(best[k] / best["bare_loop"], 3),
                                   "median": round(median[k] / median["bare_loop"], 3)}
                               for k in rates if k != "bare_loop"},
        "ratio_vs_bare_loop_decoding": {k: {"best": round(best[k] / best["bare_loop_decoding"], 3),
                                            "median": round(median[k] / median["bare_loop_decoding"], 3)}
                                        for k in rates if k.startswith("ray_record_decoding")},
    }, indent=2))


if __name__ == "__main__":
    main()
