"""Fault-injection helpers: an S3 endpoint that fails chosen requests, jobs run in child processes, a store checker.

- ``faulty_s3()``: moto's S3 app (the one ``ThreadedMotoServer`` serves) behind a WSGI middleware that fails
  the n-th request of a kind (PUT object, UploadPart, CompleteMultipartUpload, LIST, GET, HEAD, or any) with an
  S3 XML error (500 InternalError, 503 SlowDown, 403 AccessDenied, ...) or cuts a GET's body short, served by
  werkzeug on 127.0.0.1:0 in a thread. moto's backend is per process, so the session's plain ``s3_server``
  sees the same buckets: tests inspect what really landed through it.
- ``start_job`` / ``run_job``: a dissection (or one store write) in a child process with its own environment
  (``DISCOVER_FAULT``, ``AWS_ENDPOINT_URL``, ...), so a ``sigkill`` fault kills that job and not the tests.
  Children fork from a forkserver that imported the product once, so each costs a fork, not a 5 s import.
- ``store_problems``: what is wrong with a store: a ``_SUCCESS.json`` whose parts are missing or hold other
  row counts than it says, a part that is not whole Parquet, a stray temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import posixpath
import shutil
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pyarrow.parquet as pq

__all__ = ["ACCESS_DENIED", "SLOW_DOWN", "TABLE_ENV", "FaultyS3", "Job", "JobResult", "Rule", "fault_config", "faulty_s3",
           "run_job", "start_job", "store_problems", "store_snapshot", "table_row", "write_probe"]

KINDS = ("put", "upload_part", "create_multipart", "complete", "abort", "list", "get", "head", "delete", "other")
SLOW_DOWN = {"status": 503, "code": "SlowDown", "message": "Please reduce your request rate."}
ACCESS_DENIED = {"status": 403, "code": "AccessDenied", "message": "Access Denied"}


# -- the faulty endpoint ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """Fail requests ``n`` … ``n + times - 1`` (1-based) of ``kind`` (one of ``KINDS``, or ``any``) whose key
    contains ``key``; ``truncate``: answer a GET with the object's headers but half its body, then close (a
    connection dropped mid-body)."""

    kind: str
    n: int = 1
    times: int = 1
    status: int = 500
    code: str = "InternalError"
    message: str = "We encountered an internal error. Please try again."
    key: str = ""
    truncate: bool = False

    def __post_init__(self) -> None:
        assert self.kind in (*KINDS, "any"), self.kind


def classify(environ: dict[str, Any]) -> tuple[str, str]:
    """(kind, key) of an S3 request in path style (``/bucket/key?query``)."""
    method = environ["REQUEST_METHOD"]
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
    if method == "PUT" and key:
        return ("upload_part" if "partNumber" in query and "uploadId" in query else "put"), key
    if method == "POST" and key:
        if "uploads" in query:
            return "create_multipart", key
        if "uploadId" in query:
            return "complete", key
    if method == "DELETE" and key and "uploadId" in query:
        return "abort", key
    if method == "GET" and bucket and not key:
        return "list", query.get("prefix", [""])[0]
    if method == "GET" and key:
        return "get", key
    if method == "HEAD":
        return "head", key
    if method == "DELETE" or (method == "POST" and "delete" in query):
        return "delete", key
    return "other", key


class FaultyS3:
    """The WSGI middleware: counts requests per rule, fails the chosen ones, logs every request."""

    def __init__(self, app: Any):
        self.app = app
        self.endpoint = ""
        self._lock = threading.Lock()
        self.rules: list[Rule] = []
        self._seen: list[int] = []
        self.log: list[tuple[str, str, str | None]] = []  # (kind, key, the error code it got, or None)

    def inject(self, *rules: Rule) -> FaultyS3:
        """Replace the rules (and restart their counts and the log)."""
        with self._lock:
            self.rules, self._seen, self.log = list(rules), [0] * len(rules), []
        return self

    def clear(self) -> None:
        self.inject()

    def fired(self) -> list[tuple[str, str, str]]:
        return [(kind, key, code) for kind, key, code in self.log if code is not None]

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.log if k == kind)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        kind, key = classify(environ)
        rule = None
        with self._lock:
            for i, candidate in enumerate(self.rules):
                if candidate.kind not in (kind, "any") or candidate.key not in key:
                    continue
                self._seen[i] += 1
                if rule is None and candidate.n <= self._seen[i] < candidate.n + candidate.times:
                    rule = candidate
            self.log.append((kind, key, None if rule is None else ("truncated" if rule.truncate else rule.code)))
        if rule is None or (rule.truncate and kind != "get"):
            return self.app(environ, start_response)
        _drain(environ)
        if rule.truncate:
            return self._truncated(environ, start_response)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{rule.code}</Code><Message>{rule.message}'
                f'</Message><Resource>{environ.get("PATH_INFO", "")}</Resource><RequestId>fault-{uuid.uuid4().hex[:12]}'
                "</RequestId></Error>").encode()
        if environ["REQUEST_METHOD"] == "HEAD":
            body = b""
        start_response(f"{rule.status} {rule.code}", [("Content-Type", "application/xml"),
                                                      ("Content-Length", str(len(body))),
                                                      ("x-amz-request-id", "fault")])
        return [body]

    def _truncated(self, environ: dict[str, Any], start_response: Any) -> Any:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured.update(status=status, headers=headers)
            return lambda data: None

        body = b"".join(self.app(environ, capture))
        start_response(captured["status"], captured["headers"])  # the full Content-Length, half the bytes
        return [body[: len(body) // 2]]


def _drain(environ: dict[str, Any]) -> None:
    """Read a refused request's body, so that the client reads the error instead of a reset connection."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH") or ""
    if stream is None:
        return
    if length.isdigit():
        remaining = int(length)
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
    elif environ.get("wsgi.input_terminated"):
        while stream.read(1 << 20):
            pass


@contextlib.contextmanager
def faulty_s3() -> Iterator[FaultyS3]:
    """A faulty S3 endpoint on 127.0.0.1 for the duration of the block (``.endpoint`` is its URL)."""
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = FaultyS3(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="faulty-s3", daemon=True)
    thread.start()
    app.endpoint = f"http://127.0.0.1:{server.server_port}"
    try:
        yield app
    finally:
        server.shutdown()
        thread.join(timeout=10)


# -- jobs in child processes --------------------------------------------------------------------------
PRELOAD = ["tests.s3_faults", "discover_ray.dissection", "discover_ray.config", "discover_ray.demo", "s3fs", "torch"]
_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


@dataclass
class JobResult:
    exitcode: int
    status: str | None  # "succeeded" or "failed"; None when the process died without saying (a kill)
    error: str = ""  # "Type: message" of what the job raised
    errno: int | None = None
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    probe_id: str | None = None
    log: str = ""
    seconds: float = 0.0
    process_pid: int = 0

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL

    def outcome(self) -> str:
        if self.killed:
            return "killed (SIGKILL)"
        if self.status == "succeeded":
            return "succeeded"
        return f"failed: {self.error}" if self.status == "failed" else f"exit {self.exitcode}"


@dataclass
class Job:
    process: Any
    folder: Path
    started: float

    def wait(self, timeout: float = 180) -> JobResult:
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
            raise AssertionError(f"the job did not end within {timeout} s; its log:\n{_text(self.folder / 'log')}")
        result = json.loads(_text(self.folder / "result.json") or "{}")
        log = _text(self.folder / "log")
        shutil.rmtree(self.folder, ignore_errors=True)
        return JobResult(self.process.exitcode, result.get("status"), result.get("error", ""), result.get("errno"),
                         result.get("notes", []), result.get("run_id"), result.get("probe_id"), log,
                         round(time.monotonic() - self.started, 2), self.process.pid)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def start_job(task: dict[str, Any], env: dict[str, str | None] | None = None, go: Path | None = None) -> Job:
    """Start ``task`` in a child process: ``{"dissect": raw_config}`` (``lease_wait_s`` optional) or ``{"write":
    [store_root, relative, size]}``. ``env``: variables to set (None: unset); the fault variables are unset
    unless given. ``go``: the child waits for this file to exist before it starts (to start jobs together)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fault-job-"))
    environment = {"DISCOVER_FAULT": None, "DISCOVER_FAULT_STATE": None, **(env or {})}
    process = _forkserver().Process(target=_child, args=(task, environment, str(folder), str(go) if go else None))
    process.start()
    return Job(process, folder, time.monotonic())


def run_job(task: dict[str, Any], env: dict[str, str | None] | None = None, timeout: float = 180) -> JobResult:
    return start_job(task, env).wait(timeout)


def _child(task: dict[str, Any], env: dict[str, str | None], folder: str, go: str | None) -> None:
    """The child: its environment set, its output to a log, what happened to ``result.json``; ``os._exit``."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_* as a fresh process reads them (fsspec is preloaded)
    log = os.open(os.path.join(folder, "log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    result: dict[str, Any] = {}
    code = 0
    try:
        while go is not None and not os.path.exists(go):
            time.sleep(0.005)
        if "dissect" in task:
            from rich.console import Console

            from discover_ray import dissect, load_config

            done = dissect(load_config(task["dissect"]), executor="local", console=Console(file=os.fdopen(1, "w", closefd=False)),
                           lease_wait_s=task.get("lease_wait_s"))
            result = {"status": "succeeded", "run_id": done.run_id, "probe_id": done.record.probe.id}
        else:
            from discover_ray.store import Store

            root, relative, size = task["write"]
            Store(root).write_bytes(relative, np.random.default_rng(0).bytes(size))
            result = {"status": "succeeded"}
    except BaseException as err:
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}", "errno": getattr(err, "errno", None),
                  "notes": list(getattr(err, "__notes__", []))}
        code = 3
    with open(os.path.join(folder, "result.json"), "w") as handle:
        json.dump(result, handle)
    os._exit(code)


# -- the store: is it whole, and what is in it ------------------------------------------------------------
def store_problems(store: Any, temporaries: bool = True) -> list[str]:
    """Everything wrong with ``store`` (a ``discover_ray.store.Store``): a committed dataset (``_SUCCESS.json``)
    whose marker names another key, lists a part that is missing, or counts other rows than its parts hold; a
    part that is not whole Parquet; (with ``temporaries``) a temporary file left behind."""
    from discover_ray.store import SUCCESS

    files = store.files()
    problems = []
    rows_of: dict[str, int] = {}
    for path in sorted(files):
        name = posixpath.basename(path)
        if name.startswith(".tmp-") and temporaries:
            problems.append(f"stray temporary file {path}")
        if name.startswith("part-") and name.endswith(".parquet"):
            try:
                with store.fs.open(store.path(path), "rb") as handle:
                    rows_of[path] = pq.ParquetFile(handle).metadata.num_rows
            except Exception as err:
                problems.append(f"part {path} is not whole Parquet: {type(err).__name__}: {err}")
    for path in sorted(p for p in files if posixpath.basename(p) == SUCCESS and not p.startswith("runs/")):
        folder = posixpath.dirname(path)
        marker = store.read_json(path)
        if marker.get("key") != posixpath.basename(folder):
            problems.append(f"{path} names key {marker.get('key')!r}, not its folder's")
        listed = [f"{folder}/part-{int(i):05d}.parquet" for i in marker.get("parts", [])]
        missing = [p for p in listed if p not in files]
        if missing:
            problems.append(f"{folder} is committed but lacks {missing}")
        present = sorted(p for p in rows_of if posixpath.dirname(p) == folder)
        extra = [p for p in present if p not in listed]
        if extra:
            problems.append(f"{folder} is committed with parts its marker does not list: {extra}")
        rows = sum(rows_of.get(p, 0) for p in listed)
        if not missing and rows != marker.get("rows"):
            problems.append(f"{folder}: its marker says {marker.get('rows')} rows, its parts hold {rows}")
    return problems


def store_snapshot(store: Any) -> dict[str, str]:
    """sha256 of every file under the store except run records (``runs/``, which note each attempt)."""
    return {path: hashlib.sha256(store.fs.cat_file(store.path(path))).hexdigest()
            for path in sorted(store.files()) if not path.startswith("runs/")}


def write_probe(folder: Path, images: int = 32, seed: int = 3) -> Path:
    """``images`` generated shape images as PNGs, one folder per class (the label is the folder)."""
    from discover_ray import world

    return world.write_folder(folder, world.generate(images, seed=seed))


def fault_config(probe: Path | str, store: Path | str) -> dict[str, Any]:
    """A tiny dissection (random-init tiny CNN, two layers, label concepts, two methods) in shards of 16."""
    from discover_ray import world

    return {
        "name": "faults",
        "store": str(store),
        "probe": {"source": str(probe), "shard_size": 16},
        "models": [{"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn",
                    "kwargs": {"n_classes": len(world.class_names())}, "image_size": 32, "layers": ["relu2", "fc"]}],
        "concepts": [{"kind": "labels"}],
        "record": {"batch_size": 8},
        "reduce": {"methods": ["soft_wpmi", "cos"], "top_k": 3, "params": {"soft_wpmi": {"top_k": 20}}},
        "ray": {"progress": False},
    }


TABLE_ENV = "DISCOVER_FAULT_TABLE"


def table_row(scenario: str, fault: str, first: str, after: str, rerun: str, lost: str, message: str) -> None:
    """One row of the fault table (``tests/benchmarks/bench_faults.py``): appended to ``$DISCOVER_FAULT_TABLE``."""
    path = os.environ.get(TABLE_ENV)
    if not path:
        return
    row = {"scenario": scenario, "fault": fault, "first": first, "after": after, "rerun": rerun, "lost": lost,
           "message": message}
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
