"""S3 that fails: a dissection whose store and probe set are both on S3, through an endpoint that fails chosen
requests (``tests.s3_faults.faulty_s3``), completes through s3fs/botocore's retries or fails cleanly; never is
a dataset half-committed, and the probe id does not move. Large parts are multipart uploads, and a refused
UploadPart or CompleteMultipartUpload leaves no object, and no upload pending.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from discover_ray import dissect, load_config, load_run
from discover_ray.runs.lease import lease_path
from discover_ray.store import Store
from tests.s3_faults import (
    ACCESS_DENIED,
    SLOW_DOWN,
    FaultyS3,
    Rule,
    fault_config,
    faulty_s3,
    run_job,
    store_problems,
    store_snapshot,
    table_row,
    write_probe,
)

QUIET = Console(quiet=True)
BUCKET = "faulty-s3"
MiB = 2**20


@dataclass(frozen=True)
class Reference:
    run_id: str
    probe_id: str
    snapshot: dict[str, str]


@pytest.fixture(scope="module")
def faulty(s3_server: str) -> Iterator[FaultyS3]:
    """The faulty endpoint, with a bucket holding the probe set (``probe/``). moto's backend is this process's,
    so the session's plain endpoint (``AWS_ENDPOINT_URL`` here) sees the same objects."""
    with faulty_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint.endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.fixture(scope="module")
def reference(faulty: FaultyS3, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """A clean run with the probe set on local disk: the probe id hashes content, so the copy on S3 has the same
    id, and a store on S3 holds the same bytes as a local one."""
    probe = write_probe(tmp_path_factory.mktemp("s3faults") / "probe")
    client = boto3.client("s3", endpoint_url=faulty.endpoint)
    for path in sorted(probe.rglob("*.png")):
        client.upload_file(str(path), BUCKET, f"probe/{path.relative_to(probe)}")
    root = tmp_path_factory.mktemp("s3faults") / "clean"
    result = dissect(load_config(fault_config(probe, root)), executor="local", console=QUIET)
    return Reference(result.run_id, result.record.probe.id, store_snapshot(Store(str(root))))


def child_env(faulty: FaultyS3, **extra: str) -> dict[str, str | None]:
    return {"AWS_ENDPOINT_URL": faulty.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", **extra}


@dataclass(frozen=True)
class S3Case:
    name: str
    rules: tuple[Rule, ...]
    completes: bool | None  # True: must complete; False: must fail; None: either, cleanly
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


CASES = [
    # several passing faults per job (each rule counts its own requests): a job each would cost seconds apiece
    S3Case("PUT 500 once, LIST of the probe folder SlowDown x2",
           (Rule("put", n=6), Rule("list", n=1, times=2, **SLOW_DOWN)), True),
    S3Case("GET of an image 500 once and cut short (hashing), SlowDown once (DECODE)",
           (Rule("get", n=5, key="probe/"), Rule("get", n=7, key="probe/", truncate=True),
            Rule("get", n=40, key="probe/", **SLOW_DOWN)), True),
    S3Case("throttled: 4 requests of any kind SlowDown", (Rule("any", n=60, times=4, **SLOW_DOWN),), True),
    S3Case("PUT of a part refused (403) for good", (Rule("put", key="part-00001", times=10**6, **ACCESS_DENIED),), False),
    S3Case("GET of an image 500 past botocore's retries (AWS_MAX_ATTEMPTS=2)", (Rule("get", n=5, times=2, key="probe/"),),
           None, {"AWS_MAX_ATTEMPTS": "2"}),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_dissection_through_a_faulty_s3_completes_or_fails_cleanly(case, faulty, reference):
    name = "run-" + "".join(c if c.isalnum() else "-" for c in case.name.lower())[:40].strip("-")
    root = f"s3://{BUCKET}/{name}"
    store = Store(root)  # through the plain endpoint: what really landed
    faulty.inject(*case.rules)
    job = run_job({"dissect": fault_config(f"s3://{BUCKET}/probe", root)}, child_env(faulty, **case.env))
    fired = faulty.fired()
    faulty.clear()
    assert fired, f"no request matched {case.rules}: {sorted({k for k, _, _ in faulty.log})}"
    problems = store_problems(store)
    outcome = job.outcome()
    probe_id = job.probe_id
    if job.status == "succeeded":
        run = load_run(store, job.run_id)
        identical = store_snapshot(store) == reference.snapshot
        table_row("s3 faults", case.name, outcome, f"{len(fired)} request(s) failed; " + (
            "no problems" if not problems else "; ".join(problems)),
            "identical (no re-run needed)" if identical else "**differs**",
            "nothing" if not run.failed_images else f"**{len(run.failed_images)} image(s) counted unreadable**",
            f"probe id {'stable' if probe_id == reference.probe_id else '**changed**'}")
        assert case.completes in (True, None), f"expected a failure, the job {outcome}"
        assert job.run_id == reference.run_id and probe_id == reference.probe_id  # the probe set read the same
        assert run.failed_images == [], "a passing fault was taken for an unreadable image"
        assert problems == [] and identical and not store.exists(lease_path(reference.run_id))
        return
    assert job.status == "failed", f"the job {outcome}\n{job.log}"  # raised: not killed, not hung
    assert case.completes in (False, None), f"expected the retries to carry it through; the job {outcome}\n{job.log}"
    assert problems == []  # failed, but nothing half-committed
    if case.completes is False:  # the refused write is named
        assert any(n.startswith(f"writing s3://{BUCKET}/{name}/") and "left nothing of it" in n for n in job.notes)
    assert not store.exists(lease_path(reference.run_id))  # released on the way out
    rerun = dissect(load_config(fault_config(f"s3://{BUCKET}/probe", root)), executor="local", console=QUIET)
    identical = store_snapshot(store) == reference.snapshot
    table_row("s3 faults", case.name, outcome, f"{len(fired)} request(s) failed; "
              + ("no problems" if not problems else "; ".join(problems)),
              "identical" if identical else "**differs**", "nothing", " — note: ".join([job.error, *job.notes[:1]]))
    assert rerun.run_id == reference.run_id and rerun.record.probe.id == reference.probe_id
    assert store_problems(store) == [] and identical


# -- multipart uploads ---------------------------------------------------------------------------------
def big_table(seed: int = 0) -> pa.Table:
    """A part of 6 MiB (random bytes do not compress): more than one 5 MiB s3fs block."""
    return pa.table({"image_id": ["img0000"], "pixels": [np.random.default_rng(seed).bytes(6 * MiB)]})


def pending_uploads(prefix: str) -> list[str]:
    listing = boto3.client("s3").list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [u["Key"] for u in listing.get("Uploads", [])]


@pytest.mark.parametrize("fault", [None, "upload_part", "complete"])
def test_a_large_part_is_a_multipart_upload_and_a_passing_failure_of_it_is_retried(fault, faulty):
    prefix = f"multipart-ok-{fault}"
    store = Store(f"s3://{BUCKET}/{prefix}", endpoint_url=faulty.endpoint, default_block_size=5 * MiB)
    data = store.dataset("pixels/p/t", "k1", "pixels")
    faulty.inject(*([Rule(fault)] if fault else []))
    assert data.write_part(0, big_table(), compression="none")
    counts = {kind: faulty.count(kind) for kind in ("put", "create_multipart", "upload_part", "complete")}
    faulty.clear()
    assert counts["create_multipart"] == 1 and counts["upload_part"] >= 1 and counts["put"] == 0
    assert counts["complete"] == (2 if fault == "complete" else 1)
    assert data.read_part(0).equals(big_table()) and pending_uploads(prefix) == []
    table_row("s3 multipart", "a 6 MiB part, " + (f"{fault} 500 once" if fault else "no fault"), "written (multipart: "
              f"{counts['upload_part']} UploadPart, {counts['complete']} Complete)", "whole part", "n/a", "nothing", "")


@pytest.mark.parametrize("kind", ["upload_part", "complete"])
def test_a_refused_multipart_upload_leaves_no_object_and_no_pending_upload(kind, faulty):
    prefix = f"multipart-refused-{kind}"
    store = Store(f"s3://{BUCKET}/{prefix}", endpoint_url=faulty.endpoint, default_block_size=5 * MiB)
    data = store.dataset("pixels/p/t", "k1", "pixels")
    faulty.inject(Rule(kind, times=10**6, **ACCESS_DENIED))
    with pytest.raises(PermissionError) as refused:
        data.write_part(0, big_table(), compression="none")
    faulty.clear()
    plain = Store(f"s3://{BUCKET}/{prefix}")
    assert plain.files() == {} and data.parts() == []  # nothing visible, not even a part of the part
    assert pending_uploads(prefix) == []  # the upload was aborted, not left to be billed
    assert data.write_part(0, big_table(), compression="none") and data.read_part(0).equals(big_table())
    table_row("s3 multipart", f"a 6 MiB part, {kind} refused (403) for good", f"failed: {type(refused.value).__name__}: "
              f"{refused.value}"[:120], "no object, no pending upload", "rewritten whole", "nothing", str(refused.value)[:120])


@pytest.mark.parametrize("action", ["raise", "enospc", "sigkill"])
def test_a_write_that_fails_mid_upload_leaves_no_object(action, faulty):
    """``store_write`` strikes with the bytes in flight (a 6 MiB multipart upload under way): nothing becomes
    visible; an exception aborts the upload, a kill leaves it pending (invisible) for a lifecycle rule."""
    prefix = f"mid-upload-{action}"
    job = run_job({"write": [f"s3://{BUCKET}/{prefix}", "data/part-00000.parquet", 6 * MiB]},
                  child_env(faulty, DISCOVER_FAULT=f"store_write:1:{action}", FSSPEC_S3='{"default_block_size": 5242880}'))
    assert (job.killed if action == "sigkill" else job.status == "failed"), job.outcome() + job.log
    assert Store(f"s3://{BUCKET}/{prefix}").files() == {}
    pending = pending_uploads(prefix)
    assert pending == ([f"{prefix}/data/part-00000.parquet"] if action == "sigkill" else [])
    table_row("s3 store write", f"store_write:1:{action} (6 MiB, multipart under way)", job.outcome()[:100],
              "no object; " + ("the upload stays pending (invisible) until a lifecycle rule aborts it" if pending
                               else "upload aborted"), "n/a", "nothing", job.error[:100] or "(killed)")
