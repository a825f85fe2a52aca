"""``discover submit``: run a dissection as a Ray job on a cluster, idempotently.

The submission id is derived from the config's run id, so submitting the same config twice attaches
to the first job instead of starting a second; a job that failed or was stopped is replaced.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient
from rich.console import Console

from discover_ray.config import DissectConfig

ENTRYPOINT = "python -m jobs.dissect --config dissect.yaml"
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def submit(
    config: DissectConfig, address: str, console: Console, wait: bool = True, timeout_s: float = 24 * 3600
) -> str:
    """Submit (or attach to) the job for ``config``; returns its final status (or the current one without ``wait``)."""
    client = JobSubmissionClient(address)
    job_id = config.submission_id
    status = _status(client, job_id)
    if status in (JobStatus.FAILED, JobStatus.STOPPED):
        console.print(f"job {job_id} ended {status.value}; replacing it")
        client.delete_job(job_id)
        status = None
    if status is None:
        # The job joins the cluster it runs on, so the config it gets carries no address.
        resolved = config.model_copy(update={"ray": config.ray.model_copy(update={"address": None, "progress": False})})
        with tempfile.TemporaryDirectory(prefix="discover-submit-") as tmp:
            Path(tmp, "dissect.yaml").write_text(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))
            client.submit_job(entrypoint=ENTRYPOINT, submission_id=job_id, runtime_env={"working_dir": tmp})
        console.print(f"submitted job {job_id} to {address}")
    else:
        console.print(f"job {job_id} already exists ({status.value}); following it")
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


def _status(client: JobSubmissionClient, job_id: str) -> JobStatus | None:
    try:
        return client.get_job_status(job_id)
    except RuntimeError:  # no such job
        return None
