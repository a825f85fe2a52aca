"""RECORD throughput with one and with two worker nodes of a local multi-node Ray cluster (prints JSON).

A ``ray.cluster_utils.Cluster`` (the multi-node tests' ``LocalCluster``: a 0-CPU head, worker nodes of 1 CPU,
every port chosen free, a temp dir of its own, token authentication on with a throw-away token) runs the
same dissection with one recording actor per worker node (``ray.actors`` = nodes, ``ray.actor_cpus: 1``,
``ray.torch_threads: 1``): the CIFAR ResNet-20 of ``../shared/models`` (or ``--model tiny``: the demo's tiny
CNN) over ``--images`` generated 32 px images, decoding them in the pass (``record.pixel_cache: false``),
each run into a fresh store. The figure is RECORD's own ``images_per_s_after_startup`` (from the first
chunk back, so actor start-up and model loading are left out) from the run record; the cluster is grown to
two nodes and shrunk back between runs, ``--repeat`` times, so both sizes see the same machine load.

What the figure means here: nodes on one machine share its cores. On a 2-core machine one node of 1 CPU
runs one single-threaded actor (about one core) and two nodes run two (about two cores, the driver —
which assembles chunks and writes the Parquet parts — competing with them), so the ratio says how well
RECORD spreads over nodes and whether the driver keeps up, with chunks crossing between nodes' object
stores over loopback; it is not the speed-up of two machines, which also adds network transfers of the
chunks and the store's bandwidth.

    python tests/benchmarks/bench_multinode.py                      # ResNet-20, 2 000 images
    python tests/benchmarks/bench_multinode.py --model tiny --images 1000 --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from discover_ray import dissect, load_config, world  # noqa: E402

NAMES = {1: "one_node", 2: "two_nodes"}
LAYERS = {"resnet20": ["layer1", "layer2", "layer3", "linear"], "tiny": ["relu2", "fc"]}


def write_probe(folder: Path, n: int) -> None:
    """``n`` generated 32 px shape images as PNGs, one folder per class."""
    world.write_folder(folder, world.generate(n, seed=11), digits=5)


def model(name: str, shared: Path) -> dict[str, Any]:
    if name == "tiny":
        return {"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": len(world.class_names())},
                "image_size": 32, "layers": LAYERS["tiny"]}
    checkpoint = shared / "models/cifar10-resnet/resnet20-12fca82f.th"
    if not checkpoint.exists():
        raise SystemExit(f"{checkpoint} is absent: set DISCOVER_SHARED, or run with --model tiny")
    return {"name": "cifar_resnet20", "checkpoint": str(checkpoint), "layers": LAYERS["resnet20"]}


def record_rate(probe: Path, store: Path, spec: dict[str, Any], nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    raw = {
        "store": str(store), "probe": {"source": str(probe), "shard_size": args.shard},
        "models": [spec], "concepts": [{"kind": "labels"}],
        "record": {"batch_size": args.batch, "pixel_cache": False}, "reduce": {"methods": ["cos"], "top_k": 3},
        "ray": {"progress": False, "actors": nodes, "actor_cpus": 1, "torch_threads": 1, "no_progress_timeout_s": 300},
    }
    result = dissect(load_config(raw), console=Console(quiet=True))
    (stage,) = [s for s in result.record.stages if s.stage == "RECORD" and s.status == "done"]
    return {"seconds": stage.seconds, "startup_s": stage.counts.get("startup_s"),
            "images_per_s_after_startup": stage.counts.get("images_per_s_after_startup")}


def measure(cluster: Any, probe: Path, work: Path, spec: dict[str, Any], args: argparse.Namespace,
            runs: dict[int, list[dict[str, Any]]]) -> None:
    """Grows and shrinks the cluster between one and two worker nodes, one run each per repeat."""
    import ray

    try:
        ray.init(address=cluster.cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        for repeat in range(args.repeat):
            for nodes in (1, 2) if repeat % 2 == 0 else (2, 1):
                while len(cluster.workers) < nodes:
                    cluster.add()
                while len(cluster.workers) > nodes:
                    cluster.remove(cluster.workers[-1])
                time.sleep(2)  # the removed node's resources leave the cluster's view
                runs[nodes].append(record_rate(probe, work / f"store-{nodes}-{repeat}", spec, nodes, args))
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(LAYERS))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--shard", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    shared = Path(os.environ.get("DISCOVER_SHARED", REPO.parent / "shared"))
    spec = model(args.model, shared)

    # a throw-away token: the cluster's nodes (started from this process) and this driver share it
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    from tests.ray_multinode.scenarios import LocalCluster

    work = Path(tempfile.mkdtemp(prefix="bmn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    os.environ["RAY_TMPDIR"] = str(work)
    probe = work / "probe"
    write_probe(probe, args.images)
    started = time.monotonic()
    cluster = LocalCluster(str(work / "ray"), workers=1)
    startup = round(time.monotonic() - started, 1)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    # Ray relays the raylet's notices (a removed node's last log lines) to the driver's stdout: they go to
    # stderr here, so that stdout is the JSON alone
    with contextlib.redirect_stdout(sys.stderr):
        measure(cluster, probe, work, spec, args, runs)
    rates = {n: [r["images_per_s_after_startup"] for r in rs if r["images_per_s_after_startup"]] for n, rs in runs.items()}
    best = {n: max(v) for n, v in rates.items() if v}
    median = {n: statistics.median(v) for n, v in rates.items() if v}
    print(json.dumps({
        "benchmark": "record_multinode", "model": spec["name"], "images": args.images, "batch": args.batch,
        "shard_size": args.shard, "layers": spec["layers"], "repeat": args.repeat, "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cluster_start_s": startup,
        "node": {"cpus": 1, "actors_per_node": 1, "torch_threads": 1},
        "images_per_s_after_startup": {NAMES[n]: {
            "best": round(best[n], 1), "median": round(median[n], 1), "runs": [round(r, 1) for r in rates[n]]}
            for n in best},
        "record_seconds": {NAMES[n]: [r["seconds"] for r in rs] for n, rs in runs.items()},
        "startup_s": {NAMES[n]: [r["startup_s"] for r in rs] for n, rs in runs.items()},
        "ratio_2_vs_1": {"best": round(best[2] / best[1], 3), "median": round(median[2] / median[1], 3)}
        if 1 in best and 2 in best else None,
        "meaning": "nodes share this machine's cores: the ratio measures how RECORD spreads over nodes (one "
                   "single-threaded actor each) and whether the driver keeps up, not the speed-up of two machines",
    }, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
