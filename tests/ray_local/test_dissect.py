"""End-to-end dissections on the session's local Ray cluster: outputs, idempotent re-runs, resume, S3."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from discover_ray.config import load_config
from discover_ray.runs import load_run, read_labels
from discover_ray.stages import dissect
from discover_ray.store import Store
from tests.ray_local.conftest import snapshot, tiny_config

pytestmark = pytest.mark.usefixtures("ray_cluster")
QUIET = Console(quiet=True)


def test_end_to_end_writes_the_layout_and_labels(world_folder, tmp_path):
    config = load_config(tiny_config(world_folder, tmp_path / "runs"))
    result = dissect(config, console=QUIET)
    store = Store(str(tmp_path / "runs"))
    run = load_run(store, result.run_id)
    assert run["status"] == "succeeded" and run["probe"]["images"] == 72 and run["probe"]["shards"] == 5
    assert {s["stage"] for s in run["stages"]} == {"PREPARE", "EMBED", "RECORD", "REDUCE"}
    (record,) = [s for s in run["stages"] if s["stage"] == "RECORD"]
    assert record["pixels"]["shards_decoded"] == 5 and record["pixels"]["shards_cached"] == 5

    checkpoint = run["models"]["tiny_cnn"]["checkpoint_id"]
    probe_id = run["probe"]["id"]
    acts = store.activations(checkpoint, probe_id, "relu2")
    assert acts.is_complete() and acts.parts() == [0, 1, 2, 3, 4]
    table = acts.read()
    assert table.num_rows == 72 and table.column_names[:3] == ["image_id", "u00000", "u00001"]
    assert len(table.column_names) == 1 + 32  # relu2 has 32 channels, pooled over space
    assert table["image_id"].to_pylist() == sorted(table["image_id"].to_pylist())
    metadata = table.schema.metadata
    assert metadata[b"discover.layer"] == b"relu2" and metadata[b"discover.block_size"] == b"1"

    # 2 layers × 2 concept sources × 2 methods label tables, k=3 rows per unit.
    assert len(result.labels) == 8
    (entry, fc_labels), = read_labels(store, result.run_id, "fc", method="soft_wpmi", model="tiny_cnn")[:1]
    assert fc_labels.column_names == ["unit", "block", "index_in_block", "rank", "concept", "concept_index", "score"]
    assert fc_labels.num_rows == 9 * 3 and set(fc_labels["rank"].to_pylist()) == {0, 1, 2}
    assert entry.source == "labels"
    # The fc layer has one unit per class, so neuron identification is computed and recorded for it.
    identified = {(i["layer"], i["method"], i["source"]) for i in run["identification"]}
    assert ("fc", "soft_wpmi", "labels") in identified and not any(layer == "relu2" for layer, _, _ in identified)

    embeddings = store.image_embeddings(result.record["labels"][-1]["encoder_id"], probe_id)
    assert embeddings.read().num_rows == 72


def test_rerun_skips_everything_and_a_deleted_shard_is_all_that_is_redone(world_folder, tmp_path):
    config = load_config(tiny_config(world_folder, tmp_path / "runs"))
    first = dissect(config, console=QUIET)
    before = snapshot(tmp_path / "runs")

    again = dissect(config, console=QUIET)
    assert again.recomputed == [s for s in again.record["stages"] if s["stage"] == "PREPARE"]
    assert snapshot(tmp_path / "runs") == before

    run = first.record
    acts = Store(str(tmp_path / "runs")).activations(run["models"]["tiny_cnn"]["checkpoint_id"], run["probe"]["id"], "fc")
    (tmp_path / "runs" / acts.relative / "part-00002.parquet").unlink()
    resumed = dissect(config, console=QUIET)
    record = [s for s in resumed.recomputed if s["stage"] == "RECORD"]
    assert len(record) == 1 and record[0]["shards"] == 1 and record[0]["rows"] == 16
    assert record[0]["pixels"]["shards_read"] == 1  # from the pixels the first run decoded: the same activations
    assert not [s for s in resumed.recomputed if s["stage"] in ("EMBED",)]
    assert snapshot(tmp_path / "runs") == before  # bit-identical parts, labels and markers


def test_interrupted_run_resumes_with_the_missing_shards(world_folder, tmp_path):
    """Corrupt images in the last shard stop RECORD after the earlier shards were written; with a larger
    failure budget the re-run does only what is missing and names the skipped images."""
    probe = tmp_path / "probe"
    probe.mkdir()
    for path in sorted(world_folder.rglob("*.png")):
        target = probe / path.parent.name / path.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())
    broken = sorted(probe.rglob("*.png"))[-2:]  # the last ids: the last shard
    for path in broken:
        path.write_bytes(b"not a png at all")
    raw = tiny_config(probe, tmp_path / "runs", concepts=[{"kind": "labels"}])
    with pytest.raises(Exception, match="could not be decoded"):
        dissect(load_config(raw), console=QUIET)
    store = Store(str(tmp_path / "runs"))
    failed_run = load_run(store, load_config(raw).run_id)
    assert failed_run["status"] == "failed"
    acts = store.activations(failed_run["models"]["tiny_cnn"]["checkpoint_id"], failed_run["probe"]["id"], "fc")
    written = acts.parts()
    assert written and 4 not in written and not acts.is_complete()

    raw["probe"]["failure_budget"] = 0.05
    result = dissect(load_config(raw), console=QUIET)
    record = [s for s in result.recomputed if s["stage"] == "RECORD"]
    assert record[0]["shards"] == 5 - len(written)
    assert acts.is_complete() and acts.read().num_rows == 70
    assert sorted(f[0] for f in result.record["failed_images"]) == sorted(
        str(p.relative_to(probe)) for p in broken
    )


def test_store_on_s3(world_folder, s3_root):
    config = load_config(tiny_config(world_folder, s3_root, concepts=[{"kind": "labels"}]))
    result = dissect(config, console=QUIET)
    store = Store(s3_root)
    (entry, table), = read_labels(store, result.run_id, "fc", method="cos")
    assert table.num_rows == 9 * 3
    acts = store.activations(entry.checkpoint_id, result.record["probe"]["id"], "fc")
    with store.fs.open(store.path(f"{acts.relative}/part-00000.parquet"), "rb") as handle:
        assert pq.read_table(handle).num_rows == 16
    again = dissect(config, console=QUIET)
    assert [s["stage"] for s in again.recomputed] == ["PREPARE"]


def test_a_killed_job_resumes_with_only_what_is_missing(world_folder, tmp_path):
    """``python -m jobs.dissect`` is SIGKILLed (with its own local cluster) while RECORD writes parts; the
    re-run records only the missing shards and ends with the outputs of a run that was never killed."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = tiny_config(world_folder, tmp_path / "killed", concepts=[{"kind": "labels"}],
                      probe={"source": str(world_folder), "shard_size": 8}, record={"batch_size": 1})
    path = tmp_path / "dissect.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(raw)
    job = subprocess.Popen([sys.executable, "-m", "jobs.dissect", "--config", str(path)], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
    parts = tmp_path / "killed" / "activations"
    deadline = time.monotonic() + 240
    try:
        while not list(parts.rglob("part-*.parquet")):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before RECORD wrote a part"
            time.sleep(0.05)
    finally:  # the driver and the cluster it started: every process of its session
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(pid) == job.pid:
                    os.kill(pid, signal.SIGKILL)
        job.wait(timeout=30)
    store = Store(str(tmp_path / "killed"))
    run = load_run(store, config.run_id)
    acts = store.activations(run["models"]["tiny_cnn"]["checkpoint_id"], run["probe"]["id"], "fc")
    written = acts.parts()
    assert 0 < len(written) < 9 and not acts.is_complete()

    resumed = dissect(config, console=QUIET)
    record = [s for s in resumed.recomputed if s["stage"] == "RECORD"]
    assert len(record) == 1 and record[0]["shards"] == 9 - len(written)
    clean = dissect(load_config({**raw, "store": str(tmp_path / "clean")}), console=QUIET)
    assert clean.run_id == resumed.run_id
    assert snapshot(tmp_path / "killed") == snapshot(tmp_path / "clean")
