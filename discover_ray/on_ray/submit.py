"""``discover submit``: run a dissection as a Ray job on a cluster, idempotently.

The job id (``dissection.submission_id``) names the content of what is computed: the config's identity and
what its input files are (size and ETag or modification time, read without downloading them), so
submitting the same dissection twice attaches to the first job; a new checkpoint file at the same path is
another job (the job then names its run by the inputs' full content). Before attaching, the job's recorded
content (its id's inputs and where it writes) is compared with this submission's: a finished job of other
content is replaced, a running one is an error. A job that failed or was stopped is replaced. The job's
config is the stored form: ``${VAR}`` kept as written (the job expands them from its own environment, e.g.
Kubernetes secrets), URLs without credentials, so no secret is sent with it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient
from rich.console import Console

from discover_ray.config import DissectConfig
from discover_ray.errors import DiscoverError
from discover_ray.store import config_hash

__all__ = ["ENTRYPOINT", "job_config", "submit"]

ENTRYPOINT = "python -m jobs.dissect --config dissect.yaml"
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
CONTENT = "discover_content"


def job_config(config: DissectConfig) -> dict[str, Any]:
    """The config a job runs: the stored form, joining the cluster it runs on, without progress bars."""
    stored = config.stored()
    stored["ray"] = {**stored["ray"], "address": None, "progress": False}
    return stored


def submit(config: DissectConfig, job_id: str, address: str, console: Console, wait: bool = True,
           timeout_s: float = 24 * 3600) -> str:
    """Submit (or attach to) job ``job_id``; returns its final status (or the current one without ``wait``)."""
    client = JobSubmissionClient(address)
    body = job_config(config)
    content = config_hash({"job": job_id, "store": body["store"]})
    info = _info(client, job_id)
    if info is not None and info.status in (JobStatus.FAILED, JobStatus.STOPPED):
        console.print(f"job {job_id} ended {info.status.value}; replacing it")
        client.delete_job(job_id)
        info = None
    if info is not None and (info.metadata or {}).get(CONTENT) != content:
        if info.status not in TERMINAL:
            raise DiscoverError(
                f"job {job_id} is {info.status.value} with the same dissection writing elsewhere "
                f"({(info.metadata or {}).get('discover_store', 'unknown store')}); wait for it, or stop it with "
                f"`ray job stop {job_id} --address {address}`, then submit again")
        console.print(f"job {job_id} ran other content ({(info.metadata or {}).get('discover_store', 'another store')}); "
                      "replacing it")
        client.delete_job(job_id)
        info = None
    if info is None:
        with tempfile.TemporaryDirectory(prefix="discover-submit-") as tmp:
            Path(tmp, "dissect.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
            client.submit_job(entrypoint=ENTRYPOINT, submission_id=job_id, runtime_env={"working_dir": tmp},
                              metadata={CONTENT: content, "discover_store": body["store"]})
        console.print(f"submitted job {job_id} to {address}")
    else:
        console.print(f"job {job_id} already exists ({info.status.value}) for the same content; following it")
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
    except RuntimeError:  # no such job
        return None


def _status(client: JobSubmissionClient, job_id: str) -> JobStatus | None:
    info = _info(client, job_id)
    return info.status if info is not None else None
