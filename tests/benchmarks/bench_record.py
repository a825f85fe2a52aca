"""RECORD throughput through Ray vs a bare single-process torch loop over the same images (prints JSON).

Baseline: the images decoded and preprocessed up front (not timed), then one process runs the model
with the same hooks, batch size and thread count. Through Ray, two ways:

- ``ray_record_decoded``: the same decoded tensors, as chunks in Ray's object store, through the RECORD
  stage's actor (``ActivationRecorder`` in a Ray Data ``map_batches`` actor pool) back to the driver:
  the like-for-like comparison, what Ray adds to the recording itself.
- ``ray_record``: the real RECORD stage of ``discover dissect``, which also reads and decodes the
  images (work the baseline does not do) and writes and commits the Parquet parts per shard.

Timed from start to the last chunk back (or part committed), on a local cluster started before the
clock (a service keeps its cluster up); reported end to end and after start-up (from the first chunk
back: the actor is up and its model loaded, a fixed cost of a few seconds that a large probe set
amortises). All run in this process, on the same machine, interleaved ``--repeat`` times; the best of
each is reported.

    python tests/benchmarks/bench_record.py                  # ResNet-20 on the CIFAR-10 test split
    python tests/benchmarks/bench_record.py --split train    # 50 000 images
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from discover_ray.config import load_config  # noqa: E402
from discover_ray.probe import decode_images  # noqa: E402
from discover_ray.record import record_activations  # noqa: E402
from discover_ray.runs import RunRecord  # noqa: E402
from discover_ray.stages.cluster import connect  # noqa: E402
from discover_ray.stages.pipeline import _Job  # noqa: E402
from discover_ray.stages.record import seeded_load  # noqa: E402
from discover_ray.store import Store  # noqa: E402

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


def ray_record(raw: dict) -> dict:
    """The RECORD stage of a fresh store: every shard recorded, written and committed."""
    with tempfile.TemporaryDirectory() as store_root:
        cfg = load_config({**raw, "store": store_root})
        store = Store(cfg.store)
        job = _Job(cfg, store, RunRecord(store, cfg.run_id, {"stages": [], "models": {}, "failed_images": []}),
                   console=None)
        job.probe = cfg.probe.open()
        job.probe_id = job.probe.id
        job.n_shards = -(-len(job.probe) // cfg.probe.shard_size)
        model = job._model(cfg.models[0])
        job.pool  # noqa: B018 - join the cluster before the clock starts
        started = time.perf_counter()
        job._record(model)
        stage = job.record.data["stages"][-1]
        return {"seconds": time.perf_counter() - started, "startup_s": stage["startup_s"],
                "images_per_s_after_startup": stage["images_per_s_after_startup"]}


def ray_record_decoded(cfg, batches: list[torch.Tensor], threads: int) -> dict:
    """The RECORD actor over pre-decoded chunks held in the object store (nothing decoded, nothing written)."""
    import numpy as np
    import ray

    from discover_ray.stages.record import ActivationRecorder

    model = cfg.models[0]
    items = [{"shard": 0, "chunk": i, "image_ids": "", "failed": "[]", "pixels": b.numpy()} for i, b in enumerate(batches)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ActivationRecorder,
        fn_constructor_kwargs={"spec": model.spec(), "layers": model.layers, "conv_pool": "mean", "token_pool": "cls",
                               "seed": 0, "threads": threads},
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
    )
    started = time.perf_counter()
    first, images = None, 0
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        first = first or time.perf_counter()
        images += int(np.asarray(batch["layer0"][0]).shape[0])
    seconds = time.perf_counter() - started
    first_chunk = len(batches[0])
    steady = (images - first_chunk) / (time.perf_counter() - first) if first else 0.0
    return {"seconds": seconds, "startup_s": round(first - started, 3) if first else None,
            "images_per_s_after_startup": round(steady, 1)}


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
    loaded = seeded_load(cfg.models[0].spec(), 0)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    decoded = decode_images(probe, probe.images)
    tensors = torch.stack([loaded.preprocess(im) for im in decoded.images])
    batches = list(tensors.split(args.batch))
    n = len(tensors)

    connect(cfg.ray)  # the cluster is up before any clock starts
    bare, through_ray, decoded_ray = [], [], []
    bare_loop(loaded.model, batches[:2])  # warm-up: kernels and allocator
    for _ in range(args.repeat):
        bare.append(bare_loop(loaded.model, batches))
        decoded_ray.append(ray_record_decoded(cfg, batches, threads))
        through_ray.append(ray_record(raw))
    best_bare = min(bare)
    best_ray = min(through_ray, key=lambda r: r["seconds"])
    steady = max(r["images_per_s_after_startup"] for r in through_ray)
    best_decoded = min(decoded_ray, key=lambda r: r["seconds"])
    steady_decoded = max(r["images_per_s_after_startup"] for r in decoded_ray)
    print(json.dumps({
        "benchmark": "record", "model": "cifar_resnet20", "split": args.split, "images": n, "batch": args.batch,
        "threads": threads, "layers": LAYERS,
        "bare_loop": {"seconds": round(best_bare, 3), "images_per_s": round(n / best_bare, 1),
                      "runs": [round(b, 3) for b in bare]},
        "ray_record": {"seconds": round(best_ray["seconds"], 3), "images_per_s": round(n / best_ray["seconds"], 1),
                       "startup_s": best_ray["startup_s"], "images_per_s_after_startup": steady,
                       "runs": through_ray},
        "ray_record_decoded": {"seconds": round(best_decoded["seconds"], 3),
                               "images_per_s": round(n / best_decoded["seconds"], 1),
                               "startup_s": best_decoded["startup_s"], "images_per_s_after_startup": steady_decoded,
                               "runs": decoded_ray},
        "ratio_decoded_after_startup": round(steady_decoded / (n / best_bare), 3),
        "ratio_decoded_end_to_end": round(best_bare / best_decoded["seconds"], 3),
        "ratio_after_startup": round(steady / (n / best_bare), 3),
        "ratio_end_to_end": round(best_bare / best_ray["seconds"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
