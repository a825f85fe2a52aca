"""Dissecting many checkpoints: one job over eight checkpoints against eight one-checkpoint jobs (prints JSON).

Eight checkpoints of the CIFAR ResNet-20 (the shared pretrained weights, and seven copies with seeded
noise added, as a training run's checkpoints would differ) over the same CIFAR-10 probe images and
layers, with label concepts and soft-WPMI:

- ``separate``: eight ``dissect`` calls, one checkpoint each, each in a fresh store (nothing cached:
  each decodes its probe images, starts its actor pool and runs its REDUCE stages);
- ``one_job``: one ``dissect`` call with all eight checkpoints, in a fresh store.

``--mode service`` (the default) runs both on one local Ray cluster started before the clock, in this
process (a service keeps its cluster up: the fairest case for separate jobs, which then share warm imports);
``--mode cli`` runs each job as users do, ``discover dissect CONFIG`` in a process of its own that starts
its own local cluster. Reported: wall seconds of each, the ratio, how many model passes (actor-pool
start-ups) and REDUCE stages and tasks each made, and the seconds per stage kind, from the run records. ``--reduce-memory`` adds the driver's peak memory while a REDUCE stage runs
over a K = 2 048-unit layer, streaming (activations read by the tasks) against loading the layer on
the driver, each in a fresh process.

    python tests/benchmarks/bench_scale.py                       # 2 000 images, layer3 + linear
    python tests/benchmarks/bench_scale.py --mode cli            # each job its own `discover dissect` process
    python tests/benchmarks/bench_scale.py --images 500 --checkpoints 4
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from discover_ray import dissect, load_config  # noqa: E402
from discover_ray.models import load_state_dict  # noqa: E402
from discover_ray.on_ray.cluster import connect  # noqa: E402
from tests.conftest import shared_dir  # noqa: E402


def checkpoints(folder: Path, count: int) -> list[str]:
    """The pretrained ResNet-20 and ``count - 1`` seeded perturbations of it, as safetensors files."""
    from safetensors.torch import save_file

    state = load_state_dict(str(shared_dir() / "models/cifar10-resnet/resnet20-12fca82f.th"))
    state = {k.removeprefix("module."): v.float().contiguous() for k, v in state.items()}
    paths = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        noisy = {k: (v + 0.02 * v.std().nan_to_num() * torch.randn(v.shape, generator=generator)
                     if i and v.ndim > 1 else v)  # conv and linear weights only.contiguous()
                 for k, v in state.items()}
        path = folder / f"epoch_{i:04d}.safetensors"
        save_file(noisy, str(path))
        paths.append(str(path))
    return paths


def config(store: Path, paths: list[str], images: int, layers: list[str]) -> dict:
    return {
        "store": str(store),
        "probe": {"source": str(shared_dir() / "data/cifar10/test.parquet"), "sample": images, "seed": 0,
                  "shard_size": 1000},
        "models": [{"name": "cifar_resnet20", "alias": Path(p).stem, "checkpoint": p, "layers": layers} for p in paths],
        "concepts": [{"kind": "labels"}],
        "reduce": {"methods": ["soft_wpmi"]},
        "ray": {"progress": False},
    }


def run_cli(raw: dict, folder: Path):
    """``discover dissect`` in a process of its own (its own local cluster); returns the run record."""
    import subprocess

    import yaml

    from discover_ray import load_run

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dissect.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([str(Path(sys.executable).with_name("discover")), "dissect", str(path)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from discover_ray.runs.read import list_runs

    (run_id,) = list_runs(raw["store"])  # each job writes to a store of its own
    return load_run(raw["store"], run_id)


def passes(record) -> dict[str, int]:
    stages = [s for s in record.stages if s.status == "done"]
    model_passes = {tuple(s.counts.get("pass", [s.stage])) + (s.seconds,) for s in stages if s.stage in ("DECODE", "RECORD")}
    seconds: dict[str, float] = {}
    counted: set[tuple] = set()
    for s in record.stages:
        shared = tuple(s.counts.get("pass", ())) + (s.seconds,) if s.stage in ("DECODE", "RECORD") else None
        if shared is not None and shared in counted:  # the stages of one pass share its seconds: counted once
            continue
        counted.add(shared)
        name = "pass" if shared is not None else s.stage
        seconds[name] = round(seconds.get(name, 0.0) + s.seconds, 2)
    return {"stage_seconds": seconds, "model_passes": len(model_passes), "reduce_stages": sum(1 for s in stages if s.stage == "REDUCE"),
            "reduce_tasks": sum(int(s.counts.get("tasks", 0)) for s in stages if s.stage == "REDUCE")}


# -- REDUCE's driver memory -------------------------------------------------------------------------
def write_layer(root: Path, images: int, units: int, shard: int = 4096) -> str:
    """A committed activation dataset of ``images`` × ``units`` seeded float32 values, in shards of ``shard``."""
    import numpy as np

    from discover_ray.schema import activation_table
    from discover_ray.store import Store

    dataset = Store(str(root)).dataset("activations/bench/probe/layer", "k", "activations")
    generator = np.random.default_rng(0)
    expected = {}
    for part, start in enumerate(range(0, images, shard)):
        n = min(shard, images - start)
        values = generator.standard_normal((n, units), dtype=np.float32)
        dataset.write_part(part, activation_table([f"img{start + i:07d}" for i in range(n)], values, 1))
        expected[part] = n
    dataset.commit(expected)
    return dataset.relative


def _measure_reduce_side(root: str, path: str, images: int, units: int, way: str) -> dict:
    """In a fresh process: peak resident memory (VmHWM) above the start of one way of getting a layer."""
    import pickle

    from discover_ray.dissection.stored_activations import StoredActivations
    from discover_ray.schema import read_activations
    from discover_ray.store import Store

    def hwm() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))

    before = hwm()
    dataset = Store(root).committed(path)
    shipped = 0
    if way == "driver_loads_layer":  # the previous REDUCE: the driver reads the layer and puts it in the object store
        values = read_activations(dataset.read()).values
        shipped = values.nbytes
    elif way == "driver_streams":  # REDUCE now: image ids and a reference
        ids = dataset.read(columns=["image_id"])["image_id"].to_pylist()
        shipped = len(pickle.dumps(StoredActivations(root, path, units, len(ids))))
    elif way == "task_reads_layer":  # what one task's worker then holds
        values = StoredActivations(root, path, units, images).load()
    return {"way": way, "peak_mib_above_start": round(hwm() - before, 1), "shipped_bytes": shipped}


def reduce_memory(images: int, units: int) -> list[dict]:
    import multiprocessing

    with tempfile.TemporaryDirectory() as tmp:
        path = write_layer(Path(tmp), images, units)
        context = multiprocessing.get_context("spawn")
        out = []
        for way in ("driver_loads_layer", "driver_streams", "task_reads_layer"):
            with context.Pool(1) as pool:
                out.append(pool.apply(_measure_reduce_side, (tmp, path, images, units, way)))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--layers", nargs="+", default=["layer3", "linear"])
    parser.add_argument("--reduce-memory", action="store_true", help="only the REDUCE driver-memory comparison")
    parser.add_argument("--units", type=int, default=2048)
    parser.add_argument("--reduce-images", type=int, default=50_000)
    parser.add_argument("--mode", choices=["service", "cli"], default="service")
    args = parser.parse_args()
    if args.reduce_memory:
        print(json.dumps({"benchmark": "bench_scale.reduce_memory", "images": args.reduce_images, "units": args.units,
                          "layer_mib": round(args.reduce_images * args.units * 4 / 2**20, 1),
                          "ways": reduce_memory(args.reduce_images, args.units)}, indent=2))
        return
    if not shared_dir().is_dir():
        sys.exit(f"needs the shared data folder {shared_dir()} (set DISCOVER_SHARED)")
    quiet = Console(quiet=True)
    if args.mode == "service":
        connect(num_cpus=os.cpu_count())

    def job(raw: dict, folder: Path):
        if args.mode == "cli":
            return run_cli(raw, folder)
        return dissect(load_config(raw), console=quiet).record

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = checkpoints(root, args.checkpoints)
        started = time.perf_counter()
        separate = []
        for i, path in enumerate(paths):
            raw = config(root / f"separate-{i}", [path], args.images, args.layers)
            separate.append(passes(job(raw, root / f"job-{i}")))
        separate_s = time.perf_counter() - started
        started = time.perf_counter()
        one = passes(job(config(root / "one", paths, args.images, args.layers), root / "job-one"))
        one_s = time.perf_counter() - started
    print(json.dumps({
        "benchmark": "bench_scale", "mode": args.mode, "images": args.images, "checkpoints": args.checkpoints, "layers": args.layers,
        "cpus": os.cpu_count(), "torch": torch.__version__,
        "separate": {"seconds": round(separate_s, 1),
                     **{k: sum(s[k] for s in separate) for k in separate[0] if k != "stage_seconds"},
                     "stage_seconds": {k: round(sum(s["stage_seconds"].get(k, 0) for s in separate), 2)
                                       for k in separate[0]["stage_seconds"]}},
        "one_job": {"seconds": round(one_s, 1), **one},
        "ratio": round(one_s / separate_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
