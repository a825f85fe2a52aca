"""Multi-node scenarios on one machine, run in a process of their own (the test session's single-node
cluster lives in the pytest process): a ``ray.cluster_utils.Cluster`` with a 0-CPU head and two worker
nodes of 1 CPU labelled like the GPU pool, every port chosen free and a temp dir of its own, token
authentication as the caller's environment sets it (the test: on, with a throw-away token), the store on
the moto S3 server of the test session (nodes on one host share a disk, pods do not). One cluster for all
of them (a node takes seconds to start on two cores), in this order:

- ``two_nodes`` (a): a dissection on two nodes has the bytes of the in-process one (``reference``);
- ``crash_once`` (d): a worker SIGKILLed on one probe image, once, is restarted and its chunk retried: the
  same bytes;
- ``node_replaced`` (b): a worker node removed after RECORD's first part and replaced by a new node: the
  job completes, the same bytes (as ``slow_reference``: the model sleeps in workers, so RECORD lasts);
- ``crash_always`` (d): a worker that dies on one image every time: ``StageCrashed`` naming the chunk and
  its images once ``ray.max_retries`` restarts are used up;
- ``task_crash``: a task stage whose task kills its worker every time: ``StageCrashed`` naming the task;
- ``task_env``: the workers of a task stage (plain tasks, resident workers) get the driver's fault setting;
- ``node_lost`` (c): the worker nodes lost with nothing to replace them: ``ClusterStalled`` once
  ``ray.no_progress_timeout_s`` has passed, not a hang;
- ``task_stalled``: a task stage on a cluster with no worker node left: ``ClusterStalled``.

    python -m tests.ray_multinode.scenarios --probe DIR --bucket NAME --work DIR --out FILE

Writes one JSON object to ``--out``: per step its outcome (run id or error), its seconds and what the
test compares. Every step catches its own error, so one failing step still reports the others.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import ray
from ray.cluster_utils import Cluster
from rich.console import Console

from discover_ray import dissect, load_config
from discover_ray.faults import ENV as FAULT_ENV
from discover_ray.faults import STATE_ENV as FAULT_STATE_ENV
from tests.ray_multinode.workers import DELAY_ENV, exit_on_one, fault_setting

N_CLASSES = 9  # discover_ray.world.class_names()
FORWARD_DELAY_S = 1.0  # per chunk in the workers (the slow builder): a pass of 8 chunks on 2 actors ≈ 4 s
TIMEOUT_S = 20  # ray.no_progress_timeout_s of the runs that fail
LOST_TIMEOUT_S = 10  # ... of the run that loses every worker node (its chunks come back every second until then)
REPLACE_TIMEOUT_S = 90  # ... of the run whose node is replaced: death detection, node and actor start-up
UNREACHED_FAULT = "part_written:999999:raise"  # a fault setting that never fires: only its forwarding is seen
RETRIES = 1  # ray.max_retries of the run that always crashes (each restart starts a worker: seconds)
#: a lost node is declared dead after ~3 s instead of Ray's ~15 s (health checks every 1 s, 3 misses)
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
QUIET = Console(quiet=True)


# -- the cluster ------------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_args(temp_dir: str, *, head: bool = False) -> dict[str, Any]:
    """Every port of a node set (none of Ray's fixed defaults: other clusters run on this host) and its temp dir."""
    agent, metrics, export, runtime_env, manager, objects, gcs = free_ports(7)
    args: dict[str, Any] = {
        "temp_dir": temp_dir, "dashboard_agent_listen_port": agent, "metrics_agent_port": metrics,
        "metrics_export_port": export, "runtime_env_agent_port": runtime_env, "node_manager_port": manager,
        "object_manager_port": objects, "min_worker_port": 0, "max_worker_port": 0,
    }
    if head:
        return {**args, "num_cpus": 0, "gcs_server_port": gcs, "include_dashboard": False,
                "_system_config": HEALTH_CHECKS}
    # the slow builder's delay reaches the workers through their raylet's environment (not the job's
    # runtime_env, which would keep Ray from using the workers it starts ahead of time)
    return {**args, "num_cpus": 1, "labels": {"gpu-type": "a6000"}, "env_vars": {DELAY_ENV: str(FORWARD_DELAY_S)}}


class LocalCluster:
    """A 0-CPU head (the driver's node) and worker nodes of 1 CPU; nodes are added from the main thread only."""

    def __init__(self, temp_dir: str, workers: int):
        self.temp_dir = temp_dir
        self.cluster = Cluster(initialize_head=True, head_node_args=node_args(temp_dir, head=True))
        self.workers: list[Any] = []
        for _ in range(workers):
            self.add()

    def add(self) -> Any:
        node = self.cluster.add_node(**node_args(self.temp_dir))
        self.workers.append(node)
        return node

    def remove(self, node: Any) -> None:
        """A hard loss: every process of the node killed at once (no graceful drain)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def node_of(self, node_id: str) -> Any | None:
        return next((n for n in self.workers if n.node_id == node_id), None)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def record_actors() -> list[dict[str, Any]]:
    """The Ray Data actors of passes so far (alive or dead): where they ran and how often they restarted."""
    from ray._private import state

    out = []
    for info in state.actors().values():
        if "MapWorker" in info["ActorClassName"]:
            out.append({"node": info["Address"]["NodeID"], "state": info["State"], "restarts": info["NumRestarts"]})
    return out


# -- the store --------------------------------------------------------------------------------------
def s3() -> Any:
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def keys(bucket: str, prefix: str) -> list[str]:
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def snapshot(bucket: str, prefix: str) -> dict[str, str]:
    """sha256 of every object under the store root except run records (which note each attempt)."""
    client, out = s3(), {}
    for key in keys(bucket, prefix):
        relative = key[len(prefix) + 1:]
        if relative.split("/", 1)[0] != "runs":
            out[relative] = hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
    return out


def compare(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    return {"identical": a == b, "files": len(a), "only_first": sorted(set(a) - set(b))[:5],
            "only_second": sorted(set(b) - set(a))[:5], "differ": sorted(k for k in set(a) & set(b) if a[k] != b[k])[:5]}


def activation_parts(bucket: str, prefix: str) -> int:
    return sum(1 for k in keys(bucket, prefix + "/activations") if k.endswith(".parquet") and "/part-" in k)


# -- dissections ------------------------------------------------------------------------------------
def raw_config(probe: str, store: str, *, slow: bool = False, **ray_changes: Any) -> dict[str, Any]:
    """A tiny CNN over 64 probe images in 4 shards of 16 (8 chunks of 8), label concepts, one method; two
    actors of 1 CPU each, so each worker node holds one and a lost node's actor has nowhere else to go."""
    return {
        "name": "multinode",
        "store": store,
        "probe": {"source": probe, "shard_size": 16},
        "models": [{
            "name": "tiny_cnn", "builder": "tests.ray_multinode.workers:tiny_cnn" if slow else "discover_ray.demo:tiny_cnn",
            "kwargs": {"n_classes": N_CLASSES}, "image_size": 32, "layers": ["relu2", "fc"],
        }],
        "concepts": [{"kind": "labels"}],
        "record": {"batch_size": 8},
        "reduce": {"methods": ["cos"], "top_k": 3},
        "ray": {"progress": False, "actors": 2, "actor_cpus": 1, "no_progress_timeout_s": TIMEOUT_S, **ray_changes},
    }


def step(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs one step; its outcome, an error it raised (type, message) and its seconds, never raising."""
    started = time.monotonic()
    try:
        out = fn()
    except Exception as err:
        out = {"error": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()[-3000:]}
    out["seconds"] = round(time.monotonic() - started, 2)
    return out


def run(raw: dict[str, Any], executor: str = "ray") -> dict[str, Any]:
    result = dissect(load_config(raw), executor=executor, console=QUIET)
    record = [s for s in result.record.stages if s.stage == "RECORD" and s.status == "done"]
    return {"run_id": result.run_id, "recorded_shards": record[0].counts["shards"] if record else 0,
            "stages": [[s.stage, s.title, s.seconds] for s in result.record.stages if s.status == "done"]}


@contextlib.contextmanager
def env(**values: str) -> Any:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def remove_mid_record(cluster: LocalCluster, bucket: str, prefix: str, raw: dict[str, Any], *,
                      replace: bool) -> dict[str, Any]:
    """Runs ``raw`` in a thread; once RECORD has written a part, kills the worker node that holds a recording
    actor and adds a new node (``replace``), or kills every worker node (nothing left to take the work: a
    surviving node would take it once its own actor is done and released); waits for the run to end."""
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(step(lambda: run(raw))), daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while activation_parts(bucket, prefix) == 0:
        if not thread.is_alive() or time.monotonic() > deadline:
            thread.join(timeout=1)
            return {"removed": False, "run": outcome, "why": "RECORD wrote no part before the run ended"}
        time.sleep(0.1)
    if replace:
        alive = [a["node"] for a in record_actors() if a["state"] == "ALIVE"]
        lost = [next((n for n in (cluster.node_of(i) for i in alive) if n is not None), cluster.workers[0])]
    else:
        lost = list(cluster.workers)
    parts = activation_parts(bucket, prefix)
    removed_at = time.monotonic()
    for node in lost:
        cluster.remove(node)
    if replace:
        cluster.add()
    thread.join(timeout=REPLACE_TIMEOUT_S + 120)
    return {"removed": len(lost), "parts_at_removal": parts, "ended": not thread.is_alive(),
            "seconds_after_removal": round(time.monotonic() - removed_at, 2), "run": outcome}


# -- scenarios --------------------------------------------------------------------------------------
def scenarios(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    bucket, probe, out = args.bucket, args.probe, {}
    root = f"s3://{bucket}"

    out["reference"] = step(lambda: run(raw_config(probe, f"{root}/local"), executor="local"))
    reference = snapshot(bucket, "local")
    # two worker nodes, one of whose workers is killed on one image, once: the bytes of one process all the same
    state = Path(args.work) / "fault-state"
    with env(**{FAULT_ENV: "image:5:sigkill", FAULT_STATE_ENV: str(state)}):
        out["two_nodes"] = step(lambda: run(raw_config(probe, f"{root}/two")))
    out["two_nodes"]["compare"] = compare(reference, snapshot(bucket, "two"))
    out["two_nodes"]["actor_nodes"] = sorted({a["node"] for a in record_actors()})
    out["two_nodes"]["fired"] = sorted(p.name for p in state.glob("fired-*")) if state.is_dir() else []
    out["two_nodes"]["restarts"] = max((a["restarts"] for a in record_actors()), default=0)

    out["slow_reference"] = step(lambda: run(raw_config(probe, f"{root}/slow-local", slow=True), executor="local"))
    slow = raw_config(probe, f"{root}/slow-ray", slow=True, no_progress_timeout_s=REPLACE_TIMEOUT_S)
    out["node_replaced"] = step(lambda: remove_mid_record(cluster, bucket, "slow-ray", slow, replace=True))
    out["node_replaced"]["compare"] = compare(snapshot(bucket, "slow-local"), snapshot(bucket, "slow-ray"))

    with env(**{FAULT_ENV: "image:5:sigkill:always"}):
        out["crash_always"] = step(lambda: run(raw_config(probe, f"{root}/crash-always", max_retries=RETRIES)))
    out["task_crash"] = step(lambda: tasks(max_retries=RETRIES))
    with env(**{FAULT_ENV: UNREACHED_FAULT}):  # the workers a task stage starts get it, plain and resident
        out["task_env"] = step(lambda: {"plain": tasks(fn=fault_setting)["results"],
                                        "resident": tasks(fn=fault_setting, resident="scenario")["results"]})
    lost = raw_config(probe, f"{root}/lost", slow=True, no_progress_timeout_s=LOST_TIMEOUT_S)
    out["node_lost"] = step(lambda: remove_mid_record(cluster, bucket, "lost", lost, replace=False))
    out["task_stalled"] = step(lambda: tasks(no_progress_timeout_s=3))  # no worker node left
    return out


def tasks(fn: Callable[[Any, int], Any] = exit_on_one, resident: str | None = None, **config: Any) -> dict[str, Any]:
    """A task stage of three tasks through the Ray executor (by default the second kills its worker)."""
    from discover_ray.config import RayConfig
    from discover_ray.on_ray.executor import RayExecutor

    executor = RayExecutor(RayConfig(**config))
    try:
        return {"results": executor.run_tasks(fn, None, ("scenario",), [0, 1, 2], resident=resident)}
    finally:
        executor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--work", required=True, help="a short folder of this run (Ray's temp dir goes in it)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    result: dict[str, Any] = {}
    cluster = None
    try:
        cluster = LocalCluster(str(Path(args.work) / "ray"), args.workers)
        result["cluster_start_s"] = round(time.monotonic() - started, 2)
        ray.init(address=cluster.cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        result.update(scenarios(cluster, args))
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()[-3000:]
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        result["seconds"] = round(time.monotonic() - started, 2)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
