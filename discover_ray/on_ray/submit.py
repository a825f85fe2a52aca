"""``discover submit``: run a dissection, a training run or a watch pass as a Ray job on a cluster, idempotently.

The three kinds share one path: each becomes a :class:`JobSpec` (its kind, entrypoint, the files of its
``working_dir``, its job id, its content and its metadata), which :func:`submit` submits or attaches to.
Every job gets its config in the stored form: ``${VAR}`` kept as written (the job expands them from its own
environment, e.g. Kubernetes secrets), URLs without credentials, so no secret is sent with it; the config is
a file of the job's ``working_dir`` (``dissect.yaml``, ``train.yaml``, ``watch.yaml``), named relative to it,
never by a path of the submitting machine.

- **dissect** (``python -m jobs.dissect --config dissect.yaml``): the job id (``dissection.submission_id``)
  names the content of what is computed: the config's identity and what its input files are (size and ETag
  or modification time, read without downloading them), so submitting the same dissection twice attaches to
  the first job; a new checkpoint file at the same path is another job (the job then names its run by the
  inputs' full content).
- **train** (``python -m jobs.train_cvn --config train.yaml``): ``train-<hash of the stored config and its
  epochs>``. The same config attaches to its job; ``--epochs`` further is another job, which resumes the run
  (named by the config, see ``TrainConfig.run_name``) from its newest checkpoint.
- **watch** (``python -m jobs.watch TRAIN_DIR --config watch.yaml --once``): ``watch-<hash of TRAIN_DIR and the
  config's identity>-<UTC minute>``, the hash being the watch id the job writes ``watches/<id>/watch.json``
  under. A watch pass is meant to run again later, when the training run has written new checkpoints, so a
  submission attaches only to a pass of the same minute (a repeated submit), never to an earlier pass: each
  later submission is a new pass (it dissects only checkpoints not dissected yet, so a pass costs little).

Before attaching, the job's recorded content (its id and where it writes) is compared with this
submission's: a finished job of other content is replaced, a running one is an error. A job that failed or
was stopped is replaced.

The client talks to the head's dashboard (``--address http://HEAD:8265``). A head with token authentication
(``RAY_AUTH_MODE=token``; KubeRay ``authOptions: {mode: token}``) needs its token: it is read from
``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``, and sent as
``Authorization: Bearer …`` on every request. Ray's client sends a token of its own only when
``RAY_AUTH_MODE=token`` is set on the submitting machine too, and not at all when a caller gives an
``Authorization`` header, so exactly one is sent. The token is never printed, stored, or given to the job (the
job's cluster has its own). A head that does not answer, asks for a token, refuses it, or runs another Ray
version is a :class:`SubmitError` that says what to fix.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
import requests
import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient
from rich.console import Console

from discover_ray.config import DissectConfig
from discover_ray.config_files import absolute
from discover_ray.errors import DiscoverError
from discover_ray.store import config_hash

__all__ = [
    "HeadUnreachable",
    "HeadVersionMismatch",
    "JobSpec",
    "SubmitError",
    "TokenRefused",
    "TokenRequired",
    "auth_headers",
    "connect",
    "dissect_job",
    "job_config",
    "read_token",
    "submit",
    "train_job",
    "watch_job",
]

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
CONTENT = "discover_content"
PROBE_TIMEOUT_S = 15.0  # Ray's client waits without a limit; the first request is ours, with one
KUBERAY_SECRET = ("a KubeRay cluster with `authOptions: {mode: token}` keeps it in a Secret named as the RayCluster, "
                  "key auth_token, unless authOptions.secretName names another: "
                  "`kubectl get secret CLUSTER -o jsonpath={.data.auth_token} | base64 -d`")


class SubmitError(DiscoverError, RuntimeError):
    """The Ray head cannot take the job as things are; the message says what to change."""


class HeadUnreachable(SubmitError, ConnectionError):
    """Nothing answers at the address, or what answers is not a Ray dashboard."""


class TokenRequired(SubmitError, PermissionError):
    """The head has token authentication on and no token was sent (HTTP 401)."""


class TokenRefused(SubmitError, PermissionError):
    """The head refused the token that was sent (HTTP 403)."""


class HeadVersionMismatch(SubmitError):
    """The head runs another Ray version than this client."""


@dataclass(frozen=True)
class JobSpec:
    """One Ray job: what runs (``entrypoint``, in a ``working_dir`` holding ``files``), under which id, and the
    ``content`` a job of that id must have been submitted with to be attached to."""

    kind: str  # dissect, train or watch
    job_id: str
    entrypoint: str
    files: dict[str, str]  # file name in the job's working_dir → its text
    content: str
    metadata: dict[str, str] = field(default_factory=dict)  # shown by `ray job list`; no secrets


# ---------------------------------------------------------------------------------------------------------
# the three kinds of job


def job_config(config: DissectConfig) -> dict[str, Any]:
    """The dissection config a job runs: the stored form, joining the cluster it runs on, without progress bars."""
    stored = config.stored()
    stored["ray"] = {**stored["ray"], "address": None, "progress": False}
    return stored


def dissect_job(config: DissectConfig, job_id: str) -> JobSpec:
    """A dissection, named by its content (``job_id``: ``dissection.submission_id`` of the config)."""
    body = job_config(config)
    return JobSpec("dissect", job_id, "python -m jobs.dissect --config dissect.yaml", {"dissect.yaml": _yaml(body)},
                   content=config_hash({"job": job_id, "store": body["store"]}),
                   metadata={"discover_store": str(body["store"])})


def train_job(config: Any) -> JobSpec:
    """A training run (or its resumption to ``config.epochs``; ``config``: a ``training.config.TrainConfig``, not
    imported here: training imports this package), named by its stored config and epochs."""
    body = config.stored()
    body["scaling"] = {**body["scaling"], "address": None}  # the job joins the cluster it runs on
    job_id = "train-" + config_hash({"config": body, "epochs": config.epochs})
    return JobSpec("train", job_id, "python -m jobs.train_cvn --config train.yaml", {"train.yaml": _yaml(body)},
                   content=config_hash({"job": job_id, "store": body["storage_path"]}),
                   metadata={"discover_store": str(body["storage_path"]), "discover_run": config.run_name})


def watch_job(train_dir: str, config: DissectConfig, watch: str, now: datetime | None = None) -> JobSpec:
    """One watch pass over ``train_dir`` (a local path is made absolute; ``watch``: its ``watch.watch_id``): a new
    job each UTC minute, since a pass is meant to run again when new checkpoints appear; within the minute a
    submission attaches to it."""
    where = absolute(train_dir) or train_dir
    body = job_config(config)
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")
    job_id = f"watch-{watch}-{stamp}"
    return JobSpec("watch", job_id, f"python -m jobs.watch {shlex.quote(where)} --config watch.yaml --once",
                   {"watch.yaml": _yaml(body)},
                   content=config_hash({"job": job_id, "store": body["store"], "train_dir": where}),
                   metadata={"discover_store": str(body["store"]), "discover_train_dir": where})


def _yaml(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body, sort_keys=False)


# ---------------------------------------------------------------------------------------------------------
# reaching the head


def read_token() -> tuple[str, str] | None:
    """The token and where it came from (for messages; never the token itself): ``RAY_AUTH_TOKEN``, else the
    file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token`` when there is one."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise TokenRequired(f"RAY_AUTH_TOKEN_PATH names {named}, which is not a file: point it at the file holding "
                                "the cluster's token, or set RAY_AUTH_TOKEN")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise TokenRequired(f"the token file {named} (RAY_AUTH_TOKEN_PATH) is empty")
        return token, f"the file RAY_AUTH_TOKEN_PATH names ({named})"
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        token = default.read_text(encoding="utf-8").strip()
        if token:
            return token, str(default)
    return None


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` when a token is found, else nothing."""
    found = read_token()
    return {"Authorization": f"Bearer {found[0]}"} if found else {}


def connect(address: str) -> JobSubmissionClient:
    """A job client for the head at ``address``, with the token, after checking that a Ray head of this Ray
    version answers there and takes the token."""
    return _connect(address)[0]


def _connect(address: str) -> tuple[JobSubmissionClient, str | None]:
    url = _dashboard_url(address)
    found = read_token()
    headers = {"Authorization": f"Bearer {found[0]}"} if found else {}
    source = found[1] if found else None
    try:
        answer = requests.get(f"{url}/api/version", headers=headers, timeout=PROBE_TIMEOUT_S)
    except requests.exceptions.RequestException:
        raise HeadUnreachable(_no_head(address)) from None
    _check_auth(answer.status_code, address, source)
    try:
        head_version = answer.json()["ray_version"] if answer.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        head_version = None
    if not isinstance(head_version, str):
        raise HeadUnreachable(f"{_no_head(address)}; what answers there is not a Ray dashboard "
                              f"(HTTP {answer.status_code} for /api/version)")
    if head_version != ray.__version__:
        raise HeadVersionMismatch(
            f"the Ray head at {address} runs Ray {head_version} and this client Ray {ray.__version__}: the head's "
            f"image must run ray=={ray.__version__} (the version discover-ray is built and tested with)")
    # Ray's client takes RAY_API_SERVER_ADDRESS or RAY_ADDRESS over the address it is given: --address wins here
    with _translated(address, source), _without_env("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        return JobSubmissionClient(url, headers=headers), source


def _dashboard_url(address: str) -> str:
    url = address.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"  # a bare HOST:PORT would be taken by Ray's client for a GCS address
    if url.split("://", 1)[0] not in ("http", "https"):
        raise HeadUnreachable(f"{_no_head(address)}; give the dashboard's http:// address, e.g. http://HEAD:8265")
    return url


def _no_head(address: str) -> str:
    return f"no Ray head answers at {address}: check --address (the dashboard port, 8265 by default)"


def _check_auth(status: int, address: str, source: str | None) -> None:
    if status == 401:
        raise TokenRequired(f"the Ray head at {address} requires a token and none was found: set RAY_AUTH_TOKEN "
                            f"(or RAY_AUTH_TOKEN_PATH to a file holding it); {KUBERAY_SECRET}")
    if status == 403:
        raise TokenRefused(f"the Ray head at {address} refused the token from {source or 'this client'}: check "
                           "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) holds the cluster's current token")


@contextlib.contextmanager
def _translated(address: str, source: str | None) -> Iterator[None]:
    """What Ray's job client raises (observed with Ray 2.60), as errors that say what to fix:
    ``ray.exceptions.AuthenticationError`` ("Authentication required: …" for 401, "Authentication failed: …" for
    403), the built-in ``ConnectionError`` when nothing answers (``requests``' own when it stops answering later)."""
    try:
        yield
    except DiscoverError:
        raise
    except AuthenticationError as err:
        _check_auth(403 if str(err).startswith("Authentication failed") else 401, address, source)
        raise
    except (ConnectionError, requests.exceptions.RequestException):
        raise HeadUnreachable(_no_head(address)) from None


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# ---------------------------------------------------------------------------------------------------------
# submitting


def submit(spec: JobSpec, address: str, console: Console, wait: bool = True, timeout_s: float = 24 * 3600) -> str:
    """Submit (or attach to) ``spec``'s job; returns its final status (or the current one without ``wait``)."""
    client, source = _connect(address)
    with _translated(address, source):
        return _submit(client, spec, address, console, wait, timeout_s)


def _submit(client: JobSubmissionClient, spec: JobSpec, address: str, console: Console, wait: bool,
            timeout_s: float) -> str:
    job_id = spec.job_id
    info = _info(client, job_id)
    if info is not None and info.status in (JobStatus.FAILED, JobStatus.STOPPED):
        console.print(f"job {job_id} ended {info.status.value}; replacing it", highlight=False)
        client.delete_job(job_id)
        info = None
    if info is not None and (info.metadata or {}).get(CONTENT) != spec.content:
        where = (info.metadata or {}).get("discover_store")
        if info.status not in TERMINAL:
            raise SubmitError(
                f"job {job_id} is {info.status.value} with the same {spec.kind} writing elsewhere "
                f"({where or 'unknown store'}); wait for it, or stop it with "
                f"`ray job stop {job_id} --address {address}`, then submit again")
        console.print(f"job {job_id} ran other content ({where or 'another store'}); replacing it", highlight=False)
        client.delete_job(job_id)
        info = None
    if info is None:
        with tempfile.TemporaryDirectory(prefix="discover-submit-") as tmp:
            for name, text in spec.files.items():
                Path(tmp, name).write_text(text, encoding="utf-8")
            client.submit_job(entrypoint=spec.entrypoint, submission_id=job_id, runtime_env={"working_dir": tmp},
                              metadata={CONTENT: spec.content, "discover_kind": spec.kind, **spec.metadata})
        console.print(f"submitted job {job_id} to {address}", highlight=False)
    else:
        console.print(f"job {job_id} already exists ({info.status.value}) for the same content; following it",
                      highlight=False)
    if not wait:
        return (_status(client, job_id) or JobStatus.PENDING).value
    deadline = time.monotonic() + timeout_s
    while (status := _status(client, job_id)) not in TERMINAL:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status.value if status else 'unknown'} after {timeout_s:.0f} s")
        time.sleep(1.0)
    logs = client.get_job_logs(job_id)
    console.print(logs.rstrip()[-4000:], markup=False, highlight=False)
    return status.value


def _info(client: JobSubmissionClient, job_id: str) -> Any:
    try:
        return client.get_job_info(job_id)
    except RuntimeError as err:  # Ray's client: "Request failed with status code 404: Job … does not exist."
        if "404" in str(err) or "does not exist" in str(err):
            return None
        raise


def _status(client: JobSubmissionClient, job_id: str) -> JobStatus | None:
    info = _info(client, job_id)
    return info.status if info is not None else None
