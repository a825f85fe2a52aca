"""End-to-end dissections: the layout on Ray and the same bytes in-process, idempotent re-runs, resume, runs
that share a store without touching each other's outputs, S3, and a job SIGKILLed mid-RECORD."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from discover_ray import dissect, load_config, load_run, read_labels
from discover_ray.store import Store
from tests.ray_local.conftest import activations, snapshot, tiny_config

QUIET = Console(quiet=True)


@pytest.mark.usefixtures("ray_cluster")
def test_on_ray_the_layout_labels_and_record_and_the_same_bytes_in_process(world_folder, tmp_path):
    config = load_config(tiny_config(world_folder, tmp_path / "ray"))
    result = dissect(config, console=QUIET)
    store = Store(str(tmp_path / "ray"))
    run = load_run(store, result.run_id)
    assert run.status == "succeeded" and run.probe.images == 72 and run.probe.shards == 5 and run.executor["executor"] == "ray"
    assert [s.stage for s in run.stages] == ["PREPARE", "EMBED", "EMBED", "DECODE", "RECORD"] + ["REDUCE"] * 8
    decode, record = (s for s in run.stages if s.stage in ("DECODE", "RECORD"))
    assert record.counts["pass"] == ["DECODE", "RECORD"]  # one pass over the probe set: decoded once, cached
    assert record.counts["pixels"]["shards_decoded"] == 5 and decode.counts["rows"] == 72

    relu2 = activations(store, run, "relu2")
    checkpoint, probe_id = run.models["tiny_cnn"].checkpoint_id, run.probe.id
    assert relu2.relative.startswith(f"activations/{checkpoint}/{probe_id}/relu2/") and relu2.parts() == [0, 1, 2, 3, 4]
    table = relu2.read()
    assert table.num_rows == 72 and table.column_names[:3] == ["image_id", "u00000", "u00001"]
    assert len(table.column_names) == 1 + 32  # relu2 has 32 channels, pooled over space
    assert table["image_id"].to_pylist() == sorted(table["image_id"].to_pylist())
    assert table.schema.metadata[b"discover.layer"] == b"relu2" and table.schema.metadata[b"discover.block_size"] == b"1"
    assert relu2.marker()["key"] == relu2.key and relu2.marker()["rows"] == 72

    # 2 layers × 2 concept sources × 2 methods label tables, k=3 rows per unit
    assert len(result.labels) == 8 and {e.source for e in result.labels} == {"labels", "clip:TinyCLIP-ViT-32"}
    (entry, fc_labels), = read_labels(store, result.run_id, "fc", method="soft_wpmi", model="tiny_cnn")[:1]
    assert fc_labels.table.column_names == ["unit", "block", "index_in_block", "rank", "concept", "concept_index", "score"]
    assert fc_labels.num_rows == 9 * 3 and set(fc_labels.table["rank"].to_pylist()) == {0, 1, 2}
    assert entry.source == "labels" and entry.dataset.startswith(f"labels/{checkpoint}/{probe_id}/fc/soft_wpmi__")
    # the fc layer has one unit per class, so neuron identification is computed and recorded for it
    identified = {(i.layer, i.method, i.source) for i in run.identification}
    assert ("fc", "soft_wpmi", "labels") in identified and not any(layer == "relu2" for layer, _, _ in identified)
    assert run.config["probe"]["source"] == str(world_folder) and set(run.inputs) == {"probe", "checkpoints", "concepts"}

    local = dissect(load_config(tiny_config(world_folder, tmp_path / "local")), executor="local", console=QUIET)
    assert local.run_id == result.run_id and local.record.executor["executor"] == "local"
    assert snapshot(tmp_path / "local") == snapshot(tmp_path / "ray")  # in-process: the same bytes


def test_rerun_skips_everything_and_a_deleted_shard_is_all_that_is_redone(world_folder, tmp_path):
    config = load_config(tiny_config(world_folder, tmp_path / "runs"))
    first = dissect(config, executor="local", console=QUIET)
    before = snapshot(tmp_path / "runs")

    again = dissect(config, executor="local", console=QUIET)
    assert [s.stage for s in again.recomputed] == ["PREPARE"] and again.run_id == first.run_id
    assert snapshot(tmp_path / "runs") == before

    fc = activations(Store(str(tmp_path / "runs")), first.record, "fc")
    (tmp_path / "runs" / fc.relative / "part-00002.parquet").unlink()
    resumed = dissect(config, executor="local", console=QUIET)
    record = [s for s in resumed.recomputed if s.stage == "RECORD"]
    assert len(record) == 1 and record[0].counts["shards"] == 1 and record[0].counts["rows"] == 16
    assert record[0].counts["pixels"]["shards_read"] == 1  # from the pixels the first run decoded
    assert not [s for s in resumed.recomputed if s.stage in ("EMBED", "DECODE", "REDUCE")]
    assert snapshot(tmp_path / "runs") == before  # bit-identical parts, labels and markers


def test_runs_with_other_reduce_parameters_share_the_store_and_never_touch_each_others_labels(world_folder, tmp_path):
    """Run B differs from A only in soft_wpmi's top_k: it reuses A's activations and embeddings, writes its own
    labels beside A's, and A reads back exactly as before; a re-run that cannot start keeps both readable."""
    store = Store(str(tmp_path / "runs"))
    raw = tiny_config(world_folder, store.root, concepts=[{"kind": "labels"}], reduce={"methods": ["soft_wpmi"], "top_k": 3})
    a = dissect(load_config({**raw, "reduce": {**raw["reduce"], "params": {"soft_wpmi": {"top_k": 20}}}}),
                executor="local", console=QUIET)
    (_, labels_a), = read_labels(store, a.run_id, "relu2")
    before = snapshot(store.root)
    b = dissect(load_config({**raw, "reduce": {**raw["reduce"], "params": {"soft_wpmi": {"top_k": 40}}}}),
                executor="local", console=QUIET)
    assert b.run_id != a.run_id
    assert {s.stage for s in b.recomputed} == {"PREPARE", "REDUCE"}  # RECORD of A is B's too
    after = snapshot(store.root)
    assert {name: after[name] for name in before} == before  # nothing A wrote was removed or rewritten
    (_, again_a), = read_labels(store, a.run_id, "relu2")
    (_, labels_b), = read_labels(store, b.run_id, "relu2")
    assert again_a.table.equals(labels_a.table) and not labels_b.table.equals(labels_a.table)
    assert load_run(store, a.run_id).labels[0].dataset != load_run(store, b.run_id).labels[0].dataset

    moved = tmp_path / "moved"
    world_folder.rename(moved)  # the probe set is gone: the re-run fails before it writes anything
    try:
        with pytest.raises(Exception, match="not found"):
            dissect(load_config({**raw, "reduce": {**raw["reduce"], "params": {"soft_wpmi": {"top_k": 20}}}}),
                    executor="local", console=QUIET)
    finally:
        moved.rename(world_folder)
    assert snapshot(store.root) == after
    (_, still_a), = read_labels(store, a.run_id, "relu2")
    assert still_a.table.equals(labels_a.table)


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
        dissect(load_config(raw), executor="local", console=QUIET)
    store = Store(str(tmp_path / "runs"))
    (run_id,) = store.listdir("runs")
    from discover_ray import load_attempts

    (failed,) = load_attempts(store, run_id)
    assert failed.status == "failed" and "could not be decoded" in failed.error and not store.exists(f"runs/{run_id}/run.json")
    fc = store.dataset(*failed.models["tiny_cnn"].layers["fc"].rsplit("/", 1), "activations")
    written = fc.parts()
    assert written and 4 not in written and not fc.is_committed()

    raw["probe"]["failure_budget"] = 0.05  # not part of the run id: the same run, resumed
    result = dissect(load_config(raw), executor="local", console=QUIET)
    assert result.run_id == run_id
    record = [s for s in result.recomputed if s.stage == "RECORD"]
    assert record[0].counts["shards"] == 5 - len(written)
    assert fc.is_committed() and fc.read().num_rows == 70
    assert sorted(f.image_id for f in result.record.failed_images) == sorted(str(p.relative_to(probe)) for p in broken)


@pytest.mark.usefixtures("ray_cluster")
def test_store_on_s3(world_folder, s3_root):
    config = load_config(tiny_config(world_folder, s3_root, concepts=[{"kind": "labels"}]))
    result = dissect(config, console=QUIET)
    store = Store(s3_root)
    (_, table), = read_labels(store, result.run_id, "fc", method="cos")
    assert table.num_rows == 9 * 3
    fc = activations(store, result.record, "fc")
    with store.fs.open(store.path(f"{fc.relative}/part-00000.parquet"), "rb") as handle:
        assert pq.read_table(handle).num_rows == 16
    again = dissect(config, console=QUIET)
    assert [s.stage for s in again.recomputed] == ["PREPARE"]


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
        while not list(parts.rglob("fc/*/part-*.parquet")):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before RECORD wrote a part"
            time.sleep(0.05)
    finally:  # the driver and the cluster it started: every process of its session
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(pid) == job.pid:
                    os.kill(pid, signal.SIGKILL)
        job.wait(timeout=30)
    written = len(list(parts.rglob("fc/*/part-*.parquet")))
    assert 0 < written < 9

    resumed = dissect(config, executor="local", console=QUIET)
    record = [s for s in resumed.recomputed if s.stage == "RECORD"]
    assert len(record) == 1 and record[0].counts["shards"] == 9 - written

    clean = dissect(load_config({**raw, "store": str(tmp_path / "clean")}), executor="local", console=QUIET)
    assert clean.run_id == resumed.run_id
    assert snapshot(tmp_path / "killed") == snapshot(tmp_path / "clean")

    # a job whose only work is REDUCE (another method on the same activations) starts its own cluster too
    path.write_text(yaml.safe_dump({**raw, "reduce": {**raw["reduce"], "methods": ["wpmi"]}}))
    only_reduce = subprocess.run([sys.executable, "-m", "jobs.dissect", "--config", str(path)], capture_output=True,
                                 text=True, timeout=240, env={**os.environ, "RAY_ADDRESS": ""})
    assert only_reduce.returncode == 0, only_reduce.stdout + only_reduce.stderr
    assert "REDUCE tiny_cnn/fc/labels: wpmi" in only_reduce.stdout and "RECORD" not in only_reduce.stdout
