"""``discover submit`` against a real Ray head started by the test on 127.0.0.1 (and stopped afterwards)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.ray_local.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """``ray start --head --block`` in its own process group; SIGTERM to the group stops every process of it.
    Its environment names the store, as a cluster's does through a Kubernetes secret."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SUBMIT_STORE": str(tmp_path / "runs")}
    dashboard = _free_port()
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
        "--node-ip-address", "127.0.0.1", "--port", str(_free_port()),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()), "--disable-usage-stats",
    ]
    head = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", dashboard), timeout=1):
                    break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not come up (exit code {head.poll()})")
                time.sleep(0.5)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)  # a graceful stop can take half a minute; nothing of the head is needed after
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.slow
def test_submit_runs_the_job_attaches_to_the_same_content_and_starts_another_for_new_content(ray_head, world_folder, tmp_path):
    import shutil

    address, env = ray_head
    probe = tmp_path / "probe"
    shutil.copytree(world_folder, probe)
    config = tmp_path / "tiny.yaml"
    raw = tiny_config(probe, "${SUBMIT_STORE}", concepts=[{"kind": "labels"}], reduce={"methods": ["cos"], "top_k": 3})
    config.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "discover_ray.cli", "submit", str(config), "--address", address]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted job dissect-" in first.stdout and "SUCCEEDED" in first.stdout
    runs = list((tmp_path / "runs" / "runs").iterdir())
    assert len(runs) == 1
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["status"] == "succeeded" and record["identification"][0]["layer"] == "fc"
    assert record["config"]["store"] == "${SUBMIT_STORE}"  # the job got the config as written, not the expansion

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already exists (SUCCEEDED) for the same content" in second.stdout

    (probe / "red circle" / "999.png").write_bytes(next(probe.rglob("*.png")).read_bytes())  # new content, same paths
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "submitted job dissect-" in third.stdout and "SUCCEEDED" in third.stdout
    assert len(list((tmp_path / "runs" / "runs").iterdir())) == 2
