"""``discover submit`` against real Ray heads started by the tests on 127.0.0.1 (and stopped afterwards): one
without authentication, one with token authentication (``RAY_AUTH_MODE=token``), each once per module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import ray
import yaml
from typer.testing import CliRunner

from discover_ray import world
from discover_ray.cli import app
from tests.ray_local.conftest import tiny_config

TOKEN = "discover-test-token-5d41402abc4b2a76b9719d911017c592"  # a test head's token, nothing else's
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Head:
    address: str
    env: dict[str, str]  # the submitting client's environment
    store: Path  # SUBMIT_STORE in the head's environment (and the client's, which expands the config too)


@contextmanager
def _head(root: Path, auth: dict[str, str], client: dict[str, str]) -> Iterator[Head]:
    """``ray start --head --block`` in its own process group; SIGTERM to the group stops every process of it.
    Its environment names the store, as a cluster's does through a Kubernetes secret."""
    base = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    shared = {"PATH": path, "SUBMIT_STORE": str(root / "runs")}
    env = {**base, **auth, **shared}
    dashboard = _free_port()
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
        "--node-ip-address", "127.0.0.1", "--port", str(_free_port()),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()), "--disable-usage-stats",
    ]
    head = subprocess.Popen(command, env=env, cwd=root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        yield Head(f"http://127.0.0.1:{dashboard}", {**base, **shared, **client}, root / "runs")
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # a graceful stop can take half a minute; nothing of the head is needed after
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.fixture(scope="module")
def head(request, tmp_path_factory) -> Iterator[Head]:
    """A Ray head, once per module and auth mode (tests name theirs with ``indirect`` parametrisation, so one
    runs at a time). ``disabled``: no authentication (test fixtures only: such a head is open to the network).
    ``token``: token authentication, as KubeRay's ``authOptions: {mode: token}`` makes one; the client has the
    token in RAY_AUTH_TOKEN only: no RAY_AUTH_MODE (so Ray's client sends no token of its own), a home without
    ~/.ray/auth_token, and a RAY_ADDRESS elsewhere (``--address`` is what counts)."""
    root = tmp_path_factory.mktemp(f"head-{request.param}")
    if request.param == "disabled":
        auth, client = {"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "disabled"}
    else:
        (root / "home").mkdir()
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
        client = {"RAY_AUTH_TOKEN": TOKEN, "HOME": str(root / "home"), "RAY_ADDRESS": f"http://127.0.0.1:{_free_port()}"}
    with _head(root, auth, client) as started:
        yield started


NO_AUTH = pytest.mark.parametrize("head", ["disabled"], indirect=True)
TOKEN_AUTH = pytest.mark.parametrize("head", ["token"], indirect=True)


def _discover(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "discover_ray.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@NO_AUTH
def test_submit_runs_the_job_attaches_to_the_same_content_and_starts_another_for_new_content(head, world_folder, tmp_path):
    probe = tmp_path / "probe"
    shutil.copytree(world_folder, probe)
    config = tmp_path / "tiny.yaml"
    raw = tiny_config(probe, "${SUBMIT_STORE}", concepts=[{"kind": "labels"}], reduce={"methods": ["cos"], "top_k": 3})
    config.write_text(yaml.safe_dump(raw))
    command = ["submit", str(config), "--address", head.address]  # no kind word: a dissection
    first = _discover(*command, env=head.env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "submitted job dissect-" in first.stdout and "SUCCEEDED" in first.stdout
    runs = list((head.store / "runs").iterdir())
    assert len(runs) == 1
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["status"] == "succeeded" and record["identification"][0]["layer"] == "fc"
    assert record["config"]["store"] == "${SUBMIT_STORE}"  # the job got the config as written, not the expansion

    second = _discover("submit", "dissect", str(config), "--address", head.address, env=head.env, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already exists (SUCCEEDED) for the same content" in second.stdout

    (probe / "red circle" / "999.png").write_bytes(next(probe.rglob("*.png")).read_bytes())  # new content, same paths
    third = _discover(*command, env=head.env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "submitted job dissect-" in third.stdout and "SUCCEEDED" in third.stdout
    assert len(list((head.store / "runs").iterdir())) == 2


@pytest.mark.slow
@TOKEN_AUTH
def test_train_then_watch_on_a_token_auth_head(head, world_folder, tmp_path, monkeypatch):
    storage = tmp_path / "train"
    train_config = tmp_path / "train_tiny.yaml"
    train_config.write_text(yaml.safe_dump({
        "name": "submit-tiny", "storage_path": str(storage), "recipe": "resnet",
        "model": {"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn",
                  "kwargs": {"n_classes": len(world.class_names())}, "image_size": 32},
        "data": {"train": {"source": str(world_folder)}, "val": {"source": str(world_folder)}, "augment": "none"},
        "epochs": 1, "batch_size": 24, "optimizer": {"lr": 0.05},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
    }))
    trained = _discover("submit", "train", str(train_config), "--address", head.address, env=head.env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "submitted job train-" in trained.stdout and "SUCCEEDED" in trained.stdout
    checkpoint = storage / "submit-tiny" / "epoch_0000" / "model.safetensors"
    assert checkpoint.is_file()
    job_id = next(w for w in trained.stdout.split() if w.startswith("train-"))

    for name in AUTH_VARIABLES:  # the same client environment, in this process
        monkeypatch.delenv(name, raising=False)
    for name, value in head.env.items():
        if name in ("RAY_AUTH_TOKEN", "HOME", "RAY_ADDRESS"):
            monkeypatch.setenv(name, value)
    code, again = _submit_in_process("train", str(train_config), "--address", head.address)
    assert code == 0 and "already exists (SUCCEEDED) for the same content" in again, again
    from discover_ray.on_ray.submit import connect

    info = connect(head.address).get_job_info(job_id)
    assert info.entrypoint == "python -m jobs.train_cvn --config train.yaml"  # relative to the job's working_dir
    assert TOKEN not in json.dumps([info.metadata, info.runtime_env, info.entrypoint], default=str)

    store = tmp_path / "runs"
    dissect_config = tmp_path / "watch.yaml"
    dissect_config.write_text(yaml.safe_dump(tiny_config(world_folder, store, concepts=[{"kind": "labels"}],
                                                         reduce={"methods": ["cos"], "top_k": 3})))
    watched = _discover("submit", "watch", str(dissect_config), str(storage / "submit-tiny"),
                        "--address", head.address, env=head.env)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "submitted job watch-" in watched.stdout and "SUCCEEDED" in watched.stdout
    assert "1 completed checkpoints, 1 dissected now" in watched.stdout
    runs = list((store / "runs").iterdir())
    assert len(runs) == 1
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["status"] == "succeeded" and record["config"]["models"][0]["checkpoint"] == str(checkpoint)
    (watch,) = (store / "watches").iterdir()
    assert json.loads((watch / "watch.json").read_text())["dissected"] == 1
    assert f"watch-{watch.name}-" in watched.stdout  # the job is named by the watch id (and the minute)
    for output in (trained.stdout + trained.stderr, again, watched.stdout + watched.stderr):
        assert TOKEN not in output


def _submit_in_process(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["submit", *args])
    return result.exit_code, " ".join(result.output.split())  # one line, however the console wrapped it


@pytest.fixture
def dissect_yaml(world_folder, tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(world_folder, tmp_path / "runs", concepts=[{"kind": "labels"}])))
    return path


@pytest.mark.slow
@TOKEN_AUTH
def test_a_token_auth_head_without_the_token_or_with_a_wrong_one_says_what_to_set(head, dissect_yaml, tmp_path,
                                                                                  monkeypatch):
    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    code, output = _submit_in_process(str(dissect_yaml), "--address", head.address)
    assert code == 2, output
    assert "requires a token and none was found: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH" in output
    assert "Secret named as the RayCluster, key auth_token" in output

    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, output = _submit_in_process(str(dissect_yaml), "--address", head.address)
    assert code == 2, output
    assert "refused the token from RAY_AUTH_TOKEN: check RAY_AUTH_TOKEN" in output and "not-the-token" not in output

    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(TOKEN + "\n")  # the default file, when nothing else is set
    from discover_ray.on_ray.submit import connect

    assert isinstance(connect(head.address).list_jobs(), list)


def test_nothing_listening_at_the_address_says_no_ray_head_answers(dissect_yaml):
    address = f"http://127.0.0.1:{_free_port()}"
    code, output = _submit_in_process(str(dissect_yaml), "--address", address)
    assert code == 2, output
    assert f"no Ray head answers at {address}: check --address (the dashboard port, 8265 by default)" in output


@contextmanager
def _fake_dashboard(status: int, body: dict) -> Iterator[str]:
    """An HTTP server answering every GET with ``status`` and ``body``: a head of another Ray version, or not a head."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_head_of_another_ray_version_names_both_versions(dissect_yaml):
    with _fake_dashboard(200, {"version": "4", "ray_version": "2.59.0"}) as address:
        code, output = _submit_in_process(str(dissect_yaml), "--address", address)
    assert code == 2, output
    assert f"runs Ray 2.59.0 and this client Ray {ray.__version__}" in output
    assert f"the head's image must run ray=={ray.__version__}" in output
    with _fake_dashboard(404, {"detail": "Not Found"}) as address:
        code, output = _submit_in_process(str(dissect_yaml), "--address", address)
    assert code == 2 and f"no Ray head answers at {address}" in output and "not a Ray dashboard" in output, output


def test_the_token_comes_from_ray_auth_token_then_its_path_then_the_default_file(tmp_path, monkeypatch):
    from discover_ray.on_ray.submit import TokenRequired, auth_headers, read_token

    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_token() is None and auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_headers() == {"Authorization": "Bearer from-home"}
    (tmp_path / "token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert auth_headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert read_token() == ("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(TokenRequired, match="RAY_AUTH_TOKEN_PATH names .*missing, which is not a file"):
        read_token()


def test_the_kind_word_is_optional_and_watch_jobs_are_named_by_the_minute(dissect_yaml, tmp_path):
    from datetime import datetime, timezone

    from discover_ray import load_config
    from discover_ray.on_ray.submit import watch_job
    from discover_ray.watch import watch_id

    config = load_config(dissect_yaml)
    watch = watch_id(str(tmp_path / "run"), config)
    one = watch_job(str(tmp_path / "run"), config, watch, now=datetime(2026, 12, 1, 13, 24, 5, tzinfo=timezone.utc))
    same = watch_job(str(tmp_path / "run"), config, watch, now=datetime(2026, 12, 1, 13, 24, 55, tzinfo=timezone.utc))
    later = watch_job(str(tmp_path / "run"), config, watch, now=datetime(2026, 12, 1, 13, 25, 0, tzinfo=timezone.utc))
    assert one.job_id == same.job_id == f"watch-{watch_id(str(tmp_path / 'run'), config)}-20261201T1324Z"
    assert later.job_id != one.job_id and later.job_id.endswith("-20261201T1325Z")
    assert one.entrypoint == f"python -m jobs.watch {tmp_path / 'run'} --config watch.yaml --once"
    assert set(one.files) == {"watch.yaml"} and yaml.safe_load(one.files["watch.yaml"])["ray"]["address"] is None
    code, output = _submit_in_process("watch", str(dissect_yaml), "--address", "http://127.0.0.1:1")
    assert code == 2 and "takes CONFIG TRAIN_DIR" in output, output
    code, output = _submit_in_process(str(dissect_yaml), "--epochs", "2", "--address", "http://127.0.0.1:1")
    assert code == 2 and "--epochs is for `discover submit train`" in output, output
