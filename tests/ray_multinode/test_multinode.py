"""Several Ray nodes on one machine (``scenarios.py``: one cluster in a process of its own, under a hard
timeout): two nodes write the bytes of one process, a worker killed on one image once or a node lost and
replaced mid-RECORD change nothing, and a worker that always dies or a node lost with nothing to take over
fail with a clear error in bounded time."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ray_multinode.scenarios import LOST_TIMEOUT_S, RETRIES, UNREACHED_FAULT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HARD_TIMEOUT_S = 420  # the scenario script that is not done by then hangs: it is killed and the test fails


def _kill_session(sid: int) -> None:
    """Every process of the script's session: the driver and the nodes its cluster started."""
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)


def run_scenarios(probe: Path, s3_server: str) -> dict[str, Any]:
    import boto3

    bucket = f"multinode-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    work = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    out, log = work / "result.json", work / "scenario.log"
    # token authentication on, with a throw-away token the script's nodes and driver share: the nodes listen
    # on every interface
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_TMPDIR": str(work), "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": s3_server}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "DISCOVER_FAULT", "DISCOVER_FAULT_STATE"):
        env.pop(key, None)
    started = time.monotonic()
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ray_multinode.scenarios", "--probe", str(probe), "--bucket", bucket,
             "--work", str(work), "--out", str(out)],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=HARD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill_session(proc.pid)
            proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    tail = log.read_text(errors="replace")[-4000:]
    assert out.exists(), f"the scenario script wrote no result in {elapsed:.0f} s (hung or crashed):\n{tail}"
    result = json.loads(out.read_text())
    assert "error" not in result, f"{result['error']}\n{result.get('traceback', '')}\n{tail}"
    result["wall_s"], result["work"] = round(elapsed, 1), str(work)
    steps = {k: v["seconds"] for k, v in result.items() if isinstance(v, dict) and "seconds" in v}
    print(f"multi-node scenarios: {result['wall_s']} s in all, cluster start {result['cluster_start_s']} s, steps {steps}")
    return result


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, probe_64: Path, s3_server: str) -> Iterator[dict[str, Any]]:
    failed = request.session.testsfailed
    result = run_scenarios(probe_64, s3_server)
    yield result
    if request.session.testsfailed == failed:  # Ray's session logs are kept (in result["work"]) for a failure
        shutil.rmtree(result["work"], ignore_errors=True)


def _ok(step: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in step, f"{step['error']}: {step['message']}\n{step.get('traceback', '')}"
    return step


def test_two_worker_nodes_write_the_bytes_of_one_process(scenarios):
    _ok(scenarios["reference"])
    two = _ok(scenarios["two_nodes"])
    assert two["run_id"] == scenarios["reference"]["run_id"] and two["recorded_shards"] == 4
    assert two["compare"]["identical"], two["compare"]
    assert two["compare"]["files"] > 10  # activations, pixel cache, labels and their markers
    assert len(two["actor_nodes"]) == 2  # the two recording actors ran on the two worker nodes


def test_a_worker_killed_on_one_image_once_is_restarted_and_changes_nothing(scenarios):
    once = _ok(scenarios["two_nodes"])  # the same run: its worker was killed on image 5 once
    assert len(once["fired"]) == 1  # the fault did kill a worker (once, across all processes)
    assert once["restarts"] >= 1  # ... and its actor was restarted, its chunk retried
    assert once["compare"]["identical"], once["compare"]


def test_a_node_removed_mid_record_and_replaced_the_job_completes_with_the_same_bytes(scenarios):
    _ok(scenarios["slow_reference"])
    replaced = _ok(scenarios["node_replaced"])
    assert replaced["removed"] == 1, replaced
    assert replaced["parts_at_removal"] < 8  # 2 layers × 4 shards: RECORD still had work left
    assert replaced["ended"] and _ok(replaced["run"])["run_id"] == scenarios["slow_reference"]["run_id"]
    assert replaced["compare"]["identical"], replaced["compare"]


def test_a_worker_that_always_dies_on_one_image_fails_naming_it(scenarios):
    crash = scenarios["crash_always"]
    assert crash.get("error") == "StageCrashed", crash
    message = crash["message"]
    assert "chunk 0 of shard 0 (probe images 0–7" in message, message  # image 5 is in the first chunk of 8
    assert f"{RETRIES + 1} times" in message and f"ray.max_retries={RETRIES}" in message, message
    assert crash["seconds"] < 90, crash["seconds"]  # bounded: no endless restarts


def test_nodes_lost_with_nothing_to_replace_them_fail_within_the_timeout(scenarios):
    lost = scenarios["node_lost"]
    assert lost["removed"] == 2 and lost["ended"], lost
    run = lost["run"]
    assert run.get("error") == "ClusterStalled", run
    assert f"no progress for {LOST_TIMEOUT_S:g} s" in run["message"] and "Add a node" in run["message"], run["message"]
    assert lost["seconds_after_removal"] < LOST_TIMEOUT_S + 40, lost  # the timeout, plus what was left of the work


def test_a_task_that_always_kills_its_worker_fails_naming_it(scenarios):
    crash = scenarios["task_crash"]
    assert crash.get("error") == "StageCrashed", crash
    assert "task 2 of 3 (1) killed the worker that ran it" in crash["message"], crash["message"]
    assert f"{RETRIES + 1} times" in crash["message"], crash["message"]


def test_a_task_stage_with_no_node_to_run_on_fails_instead_of_waiting(scenarios):
    stalled = scenarios["task_stalled"]
    assert stalled.get("error") == "ClusterStalled", stalled
    assert "no progress for 3 s" in stalled["message"] and "0 CPU" in stalled["message"], stalled["message"]
    assert stalled["seconds"] < 30, stalled


def test_the_workers_of_a_task_stage_get_the_fault_setting_plain_and_resident(scenarios):
    forwarded = _ok(scenarios["task_env"])
    expected = [[i, UNREACHED_FAULT] for i in range(3)]  # in task order
    assert forwarded["plain"] == expected and forwarded["resident"] == expected, forwarded
