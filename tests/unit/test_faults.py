"""A job stopped at each fault point (``DISCOVER_FAULT``) leaves no half-committed dataset, and its re-run ends
with the bytes of a run that was never stopped; a full disk reports itself; two identical jobs take turns.

Every faulted job runs in a child process (``tests.s3_faults.run_job``: in-process executor, no Ray), so a
``sigkill`` fault kills that job only; the re-runs run here. One clean run per module is the reference.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

from discover_ray import dissect, load_attempts, load_config, load_run
from discover_ray.errors import RunInProgress
from discover_ray.runs.lease import RunLease, lease_path
from discover_ray.store import Store
from tests.s3_faults import fault_config, run_job, start_job, store_problems, store_snapshot, table_row, write_probe

QUIET = Console(quiet=True)


@dataclass(frozen=True)
class Clean:
    root: str
    run_id: str
    probe_id: str
    snapshot: dict[str, str]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 images: two shards of 16, so 10 parts in all (pixels, relu2, fc: 2 each; 4 label tables)."""
    return write_probe(tmp_path_factory.mktemp("faults") / "probe")


@pytest.fixture(scope="module")
def clean(probe: Path, tmp_path_factory: pytest.TempPathFactory) -> Clean:
    root = tmp_path_factory.mktemp("clean") / "store"
    result = dissect(load_config(fault_config(probe, root)), executor="local", console=QUIET)
    store = Store(str(root))
    assert store_problems(store) == [] and not store.exists(lease_path(result.run_id))
    return Clean(str(root), result.run_id, result.record.probe.id, store_snapshot(store))


@dataclass(frozen=True)
class Case:
    fault: str
    where: str
    parts: int  # part files the stopped job left
    committed: int  # datasets it committed
    temporaries: int = 0  # temporary files it left (a kill mid-write)

    def __str__(self) -> str:
        return self.fault


CASES = [  # each kind of point, at a few places (every case is a job killed and a job re-run: ~2 s each)
    Case("part_written:5:sigkill", "mid-RECORD: shard 1's relu2 part written, its fc part not", 5, 0),
    Case("part_written:8:sigkill", "mid-REDUCE: a label part written, not committed", 8, 4),
    Case("before_commit:2:sigkill", "relu2's parts all there, its _SUCCESS.json not yet", 6, 1),
    Case("before_commit:7:sigkill", "the last dataset's _SUCCESS.json", 10, 6),
    Case("record_write:10:sigkill", "all committed, run.json not yet written", 10, 7),
    Case("store_write:4:sigkill", "relu2's first part in its temporary file", 1, 0, 1),
    Case("part_written:5:raise", "mid-RECORD (an exception, not a kill)", 5, 0),
    Case("record_write:9:raise", "the attempt's final record (an exception)", 10, 7),
]


def state(store: Store) -> tuple[int, int, int]:
    """(part files, committed datasets, temporary files) outside the run records."""
    files = [p for p in store.files() if not p.startswith("runs/")]
    name = [p.rsplit("/", 1)[-1] for p in files]
    return (sum(n.startswith("part-") for n in name), sum(n == "_SUCCESS.json" for n in name),
            sum(n.startswith(".tmp-") for n in name))


def redone(result) -> str:
    """What a re-run computed again, for the table."""
    out = []
    for event in result.recomputed:
        if event.stage == "PREPARE":
            continue
        shards = event.counts.get("shards")
        out.append(f"{event.stage}" + (f" ({shards} shard{'s' * (shards != 1)})" if shards else ""))
    counted = {s: out.count(s) for s in dict.fromkeys(out)}
    return ", ".join(f"{s} ×{n}" if n > 1 else s for s, n in counted.items()) or "nothing"


def stop_and_rerun(case: Case, probe: Path, clean: Clean, root: str, env: dict[str, str | None] | None = None,
                   scenario: str = "local") -> None:
    """The body of every fault-point test: run with the fault, check what it left, re-run, compare."""
    store = Store(root)
    job = run_job({"dissect": fault_config(probe, root)}, {**(env or {}), "DISCOVER_FAULT": case.fault})
    if case.fault.endswith(":sigkill"):
        assert job.killed, f"the job was to die by SIGKILL at {case.fault}, it {job.outcome()}\n{job.log}"
        lease = store.read_json(lease_path(clean.run_id))  # a killed job cannot release its lease
        assert lease["owner"]["pid"] == job.process_pid and lease["owner"]["host"] == socket.gethostname()
    else:
        assert job.status == "failed" and job.error.startswith(f"InjectedFault: injected fault {case.fault}"), job.log
        assert not store.exists(lease_path(clean.run_id))  # released on the way out
        (attempt,) = load_attempts(store, clean.run_id)
        assert attempt.status == "failed" and attempt.error == job.error
    assert state(store) == (case.parts, case.committed, case.temporaries), f"after {case.fault}: {store.files()}"
    assert store_problems(store, temporaries=False) == []  # whatever it left, nothing half-committed

    rerun = dissect(load_config(fault_config(probe, root)), executor="local", console=QUIET)
    after = store_snapshot(store)
    differences = compare(clean, store, after)
    table_row(scenario, case.fault, job.outcome(), f"{case.where}: {case.parts} parts, {case.committed} committed, "
              f"{case.temporaries} temporary", "identical" if not differences else "**differs**: " + "; ".join(differences),
              f"nothing; redone: {redone(rerun)}", job.error or "(killed: no message)")
    assert rerun.run_id == clean.run_id and rerun.record.probe.id == clean.probe_id
    assert store_problems(store) == []  # and the temporaries of a killed write are gone
    assert differences == []
    assert load_run(store, clean.run_id).status == "succeeded" and not store.exists(lease_path(clean.run_id))


def compare(clean: Clean, store: Store, after: dict[str, str]) -> list[str]:
    """How a store differs from the clean one: files lost or added, and the marker fields that differ."""
    out = [f"lost {p}" for p in sorted(set(clean.snapshot) - set(after))]
    out += [f"added {p}" for p in sorted(set(after) - set(clean.snapshot))]
    reference = Store(clean.root)
    for path in sorted(p for p in after if p in clean.snapshot and after[p] != clean.snapshot[p]):
        if not path.endswith(".json"):
            out.append(f"{path} differs")
            continue
        mine, theirs = store.read_json(path), reference.read_json(path)
        fields = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        out.append(f"{path.split('/')[0]}/…/{path.rsplit('/', 3)[-3]}/_SUCCESS.json differs in {fields}")
    return out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_job_stopped_at_a_fault_point_leaves_nothing_half_committed_and_reruns_identical(case, probe, clean, tmp_path):
    stop_and_rerun(case, probe, clean, str(tmp_path / "store"))


@pytest.mark.parametrize("case", [c for c in CASES if c.fault in ("part_written:5:sigkill", "before_commit:2:sigkill")], ids=str)
def test_on_s3_a_killed_job_reruns_identical(case, probe, clean, s3_server, s3_root):
    """The same on an object store (moto): parts are single puts, the lease is taken by write-then-read-back."""
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    stop_and_rerun(case, probe, clean, s3_root, env, scenario="s3 (moto)")


# -- a full disk ---------------------------------------------------------------------------------------
def test_a_full_disk_fails_with_its_own_error_and_leaves_no_partial_part(probe, clean, tmp_path):
    root = str(tmp_path / "store")
    store = Store(root)
    job = run_job({"dissect": fault_config(probe, root)}, {"DISCOVER_FAULT": "store_write:4:enospc"})
    assert job.status == "failed" and job.errno == errno.ENOSPC, job.log
    assert job.error.startswith("OSError: [Errno 28] No space left on device") and "/relu2/" in job.error
    assert job.error.endswith("part-00000.parquet)]")  # the part being written, named
    (note,) = job.notes
    assert note.startswith(f"writing {root}/activations/") and "part-00000.parquet failed and left nothing of it" in note
    assert state(store) == (1, 0, 0)  # only the part written before; neither relu2's part nor its temporary file
    (attempt,) = load_attempts(store, clean.run_id)
    assert attempt.status == "failed" and attempt.error == job.error  # recorded, with the real error
    rerun = dissect(load_config(fault_config(probe, root)), executor="local", console=QUIET)
    assert store_problems(store) == [] and store_snapshot(store) == clean.snapshot
    table_row("local", "store_write:4:enospc", f"failed: {job.error}", "1 part, 0 committed, 0 temporary; attempt "
              "recorded failed", "identical", f"nothing; redone: {redone(rerun)}", f"{job.error} — note: {note}")


def test_when_the_disk_stays_full_the_write_error_is_reported_not_the_failed_record(probe, clean, tmp_path):
    """The attempt's failure cannot be recorded either: the part's error is still the one raised (with a note)."""
    root = str(tmp_path / "store")
    store = Store(root)
    job = run_job({"dissect": fault_config(probe, root)}, {"DISCOVER_FAULT": "store_write:4:enospc,store_write:5:enospc"})
    assert job.status == "failed" and job.errno == errno.ENOSPC, job.log
    assert "store_write:4:enospc" in job.error and job.error.endswith("part-00000.parquet)]")
    written, recorded = job.notes
    assert "part-00000.parquet failed and left nothing of it" in written
    assert "could not be recorded as failed" in recorded and "store_write:5:enospc" in recorded and "attempt.json" in recorded
    (attempt,) = load_attempts(store, clean.run_id)
    assert attempt.status == "running"  # as a killed attempt's: the record could not be written
    assert state(store) == (1, 0, 0) and store_problems(store) == []
    dissect(load_config(fault_config(probe, root)), executor="local", console=QUIET)
    assert store_snapshot(store) == clean.snapshot
    table_row("local", "store_write:4:enospc + store_write:5:enospc", f"failed: {job.error}",
              "1 part, 0 committed, 0 temporary; attempt left `running` (its record hit the full disk too; noted on "
              "the error)", "identical", "nothing", f"{job.error} — notes: {' / '.join(job.notes)}")


# -- two identical jobs at once: the lease ----------------------------------------------------------
def overlapping(attempts) -> bool:
    spans = sorted((a.started, a.finished or "9") for a in attempts)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


@pytest.mark.parametrize("wait_s", [0, 60])
def test_two_identical_jobs_at_once_take_turns(wait_s, probe, clean, tmp_path):
    """Started together: one runs; the other stops with a message saying who runs it (``wait_s`` 0), or waits
    for it and then finds everything done. Never do two attempts of the run overlap; the store is a clean one."""
    root = str(tmp_path / "store")
    store = Store(root)
    go = tmp_path / "go"
    jobs = [start_job({"dissect": fault_config(probe, root), "lease_wait_s": wait_s}, go=go) for _ in range(2)]
    time.sleep(0.2)  # both children are waiting for the go
    go.touch()
    results = [job.wait() for job in jobs]
    statuses = [r.status for r in results]
    assert "succeeded" in statuses, [r.log for r in results]
    for result, other in ((results[0], results[1]), (results[1], results[0])):
        if result.status == "failed":
            assert wait_s == 0 and result.error.startswith(f"RunInProgress: run {clean.run_id} is already running: ")
            assert f"held by pid {other.process_pid} on host {socket.gethostname()}" in result.error
            for words in ("since", "last renewed", "expiring", "DISCOVER_LEASE_WAIT_S", "lease_wait_s", "lapses"):
                assert words in result.error
    attempts = load_attempts(store, clean.run_id)
    assert len(attempts) == statuses.count("succeeded") and not overlapping(attempts)
    if len(attempts) == 2:  # the second found the first's outputs
        assert {e.status for e in attempts[1].stages if e.stage != "PREPARE"} == {"skipped"}
    assert store_problems(store) == [] and store_snapshot(store) == clean.snapshot
    assert not store.exists(lease_path(clean.run_id))
    message = next((r.error for r in results if r.status == "failed"), "(none)")
    table_row("local", f"two identical jobs at once, lease_wait_s={wait_s}", " / ".join(r.outcome()[:60] for r in results),
              f"{len(attempts)} attempt(s), none overlapping", "identical", "nothing", message)


def foreign_lease(store: Store, run_id: str, expires_in: float) -> dict:
    """A lease as a job on another host writes it."""
    now = datetime.now(timezone.utc)
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    lease = {"owner": {"host": "node-elsewhere", "pid": 4242, "uuid": "f" * 32}, "run_id": run_id,
             "acquired": (now - timedelta(seconds=30)).strftime(stamp), "renewed": now.strftime(stamp),
             "expires": (now + timedelta(seconds=expires_in)).strftime(stamp), "ttl_s": 60.0}
    store.write_bytes(lease_path(run_id), json.dumps(lease).encode())
    return lease


def test_a_live_lease_of_another_host_stops_the_job_before_it_writes_anything(probe, clean, tmp_path):
    store = Store(str(tmp_path / "store"))
    lease = foreign_lease(store, clean.run_id, expires_in=60)
    started = time.monotonic()
    with pytest.raises(RunInProgress) as stopped:
        dissect(load_config(fault_config(probe, store.root)), executor="local", console=QUIET, lease_wait_s=0.5)
    message = str(stopped.value)
    assert time.monotonic() - started >= 0.5  # it waited as asked
    assert message.startswith(f"run {clean.run_id} is already running: {store.path(lease_path(clean.run_id))} is held by "
                              "pid 4242 on host node-elsewhere (lease ffffffff), since ")
    assert f"since {lease['acquired']}" in message and f"expiring {lease['expires']} unless renewed" in message
    assert list(store.files()) == [lease_path(clean.run_id)]  # no attempt, no dataset
    table_row("local", "a live lease of another host", "RunInProgress", "nothing written", "n/a", "nothing", message)


def test_an_expired_lease_is_taken_over(probe, clean, tmp_path):
    """The holder (on another host) stopped renewing: once its lease expires, a waiting job takes the run over."""
    store = Store(str(tmp_path / "store"))
    foreign_lease(store, clean.run_id, expires_in=1.0)
    console = Console(file=io.StringIO(), width=400)
    started = time.monotonic()
    result = dissect(load_config(fault_config(probe, store.root)), executor="local", console=console, lease_wait_s=20)
    assert time.monotonic() - started >= 0.9
    assert "took over the lapsed lease" in console.file.getvalue() and "pid 4242 on node-elsewhere" in console.file.getvalue()
    assert result.run_id == clean.run_id and store_snapshot(store) == clean.snapshot
    assert not store.exists(lease_path(clean.run_id))
    table_row("local", "an expired lease of another host", "waited for the expiry, took over, succeeded", "complete",
              "identical", "nothing", "took over the lapsed lease of run … (pid 4242 on node-elsewhere, …)")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_held_lease_is_renewed_and_a_lapsed_one_is_noticed(where, tmp_path, request):
    root = str(tmp_path / "store") if where == "local" else request.getfixturevalue("s3_root")
    store = Store(root)
    lease = RunLease(store, "run1", ttl_s=0.6).acquire()
    first = store.read_json(lease_path("run1"))
    time.sleep(0.5)  # renewed every ttl/3
    renewed = store.read_json(lease_path("run1"))
    assert renewed["acquired"] == first["acquired"] and renewed["expires"] > first["expires"]
    with pytest.raises(RunInProgress, match=f"held by pid {os.getpid()} on host "):
        RunLease(store, "run1", wait_s=0).acquire()  # held and renewed: another taker cannot have it
    while store.read_json(lease_path("run1"))["renewed"] == renewed["renewed"]:
        time.sleep(0.01)  # just renewed: the next renewal is ttl/3 away
    foreign_lease(store, "run1", expires_in=60)  # as if ours had lapsed and another job took it over
    time.sleep(0.45)
    with pytest.raises(RunInProgress, match="lapsed and pid 4242 on host node-elsewhere took it over"):
        lease.check()
    lease.release()
    assert store.read_json(lease_path("run1"))["owner"]["pid"] == 4242  # not ours to delete


def test_on_an_object_store_of_two_takers_at_once_the_last_writer_wins(s3_root):
    store = Store(s3_root)
    outcomes: list[object] = []

    def take() -> None:
        try:
            outcomes.append(RunLease(store, "run2", wait_s=0).acquire())
        except RunInProgress as err:
            outcomes.append(err)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (winner,) = [o for o in outcomes if isinstance(o, RunLease)]
    (loser,) = [o for o in outcomes if isinstance(o, RunInProgress)]
    assert f"(lease {winner.owner.uuid[:8]})" in str(loser)
    winner.release()
    assert not store.exists(lease_path("run2"))
    RunLease(store, "run2", wait_s=0).acquire().release()
