"""Run records through in-process dissections: attempts written apart, promoted only on success; a failed
re-run never hides a finished one; the record names everything; garbage collection keeps what it names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from discover_ray import collect_garbage, dissect, load_attempts, load_config, load_run, read_labels, world
from discover_ray.cli import app
from discover_ray.errors import RunNotFound
from discover_ray.pipeline import LocalExecutor
from discover_ray.store import Store

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "probe"
    data = world.generate(24, seed=5)
    pixels = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, data.labels.tolist(), strict=True)):
        folder = root / world.class_names()[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def config(probe, store, **changes):
    raw = {"store": str(store), "probe": {"source": str(probe), "shard_size": 10},
           "models": [{"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9},
                       "image_size": 32, "layers": ["relu3", "fc"]}],
           "concepts": [{"kind": "labels"}], "reduce": {"methods": ["cos"], "top_k": 2}, "record": {"batch_size": 4}}
    return load_config({**raw, **changes})


class CrashingExecutor(LocalExecutor):
    """The cluster goes away in the middle of a model pass."""

    def run_pass(self, model_pass, assembler, on_images):
        raise ConnectionError("lost the Ray cluster")
        yield  # noqa: B901 - a generator, as the executors' passes are


def test_a_failed_rerun_never_hides_the_finished_run(probe, tmp_path):
    store = Store(str(tmp_path / "runs"))
    first = dissect(config(probe, store.root), executor="local", console=QUIET)
    promoted = (tmp_path / "runs" / "runs" / first.run_id / "run.json").read_bytes()
    (_, labels), = read_labels(store, first.run_id, "fc")

    relu3 = store.committed(first.record.models["tiny_cnn"].layers["relu3"])
    (tmp_path / "runs" / relu3.relative / "part-00001.parquet").unlink()  # lost: the re-run must redo it...
    with pytest.raises(ConnectionError, match="lost the Ray cluster"):  # ...and its cluster dies
        dissect(config(probe, store.root), executor=CrashingExecutor(), console=QUIET)
    assert (tmp_path / "runs" / "runs" / first.run_id / "run.json").read_bytes() == promoted
    (_, again), = read_labels(store, first.run_id, "fc")  # the finished run still reads back
    assert again.table.equals(labels.table)
    attempts = load_attempts(store, first.run_id)
    assert [a.status for a in attempts] == ["succeeded", "failed"]
    assert "ConnectionError: lost the Ray cluster" in attempts[-1].error and attempts[-1].stages[0].stage == "PREPARE"

    resumed = dissect(config(probe, store.root), executor="local", console=QUIET)
    assert [s.stage for s in resumed.recomputed] == ["PREPARE", "RECORD"]
    assert [a.status for a in load_attempts(store, first.run_id)] == ["succeeded", "failed", "succeeded"]


def test_the_run_id_names_content_not_paths(probe, tmp_path):
    import shutil

    a = dissect(config(probe, tmp_path / "a"), executor="local", console=QUIET)
    moved = tmp_path / "moved"
    shutil.copytree(probe, moved)
    b = dissect(config(moved, tmp_path / "a"), executor="local", console=QUIET)
    assert b.run_id == a.run_id and [s.stage for s in b.recomputed] == ["PREPARE"]  # same content: same run, done
    changed = sorted(moved.rglob("*.png"))
    changed[-1].write_bytes(changed[0].read_bytes())  # another image at the same path
    c = dissect(config(moved, tmp_path / "a"), executor="local", console=QUIET)
    assert c.run_id != a.run_id and load_run(tmp_path / "a", a.run_id).status == "succeeded"
    assert c.record.inputs["probe"] != a.record.inputs["probe"]


def test_load_run_says_why_there_is_no_record(tmp_path):
    with pytest.raises(RunNotFound, match="no run 'abc'.*runs there: none"):
        load_run(tmp_path, "abc")


def test_gc_lists_and_removes_only_what_no_record_names(probe, tmp_path):
    store = Store(str(tmp_path / "runs"))
    a = dissect(config(probe, store.root), executor="local", console=QUIET)
    b = dissect(config(probe, store.root, reduce={"methods": ["cos"], "top_k": 3}), executor="local", console=QUIET)
    report = collect_garbage(store)
    assert report.garbage == [] and report.runs == 2 and report.referenced == report.datasets
    import shutil

    shutil.rmtree(tmp_path / "runs" / "runs" / b.run_id)  # run B is forgotten: only its own labels are garbage
    report = collect_garbage(store)
    labels_b = {e.dataset for e in b.record.labels}
    assert {g.path for g in report.garbage} == labels_b and all(g.files == 2 for g in report.garbage)
    printed = CliRunner().invoke(app, ["gc", "--store", store.root], env={"COLUMNS": "250"})
    assert printed.exit_code == 0 and "can be removed (run again with --apply)" in printed.output
    assert all(store.exists(path) for path in labels_b)  # a dry run by default
    printed = CliRunner().invoke(app, ["gc", "--store", store.root, "--apply"], env={"COLUMNS": "250"})
    assert printed.exit_code == 0 and "removed" in printed.output
    assert not any(store.exists(path) for path in labels_b) and collect_garbage(store).garbage == []
    (_, labels), = read_labels(store, a.run_id, "fc")  # run A is whole
    assert labels.num_rows == 9 * 2


def test_the_record_holds_the_stored_config_and_no_secret(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_FOLDER", str(probe))
    monkeypatch.setenv("API_TOKEN", "hunter2")
    raw = {"store": str(tmp_path / "runs"), "name": "run-${API_TOKEN}", "probe": {"source": "${PROBE_FOLDER}", "shard_size": 10},
           "models": [{"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9},
                       "image_size": 32, "layers": ["fc"]}],
           "concepts": [{"kind": "labels"}], "reduce": {"methods": ["cos"], "top_k": 2}}
    result = dissect(load_config(raw), executor="local", console=QUIET)
    text = (tmp_path / "runs" / "runs" / result.run_id / "run.json").read_text()
    record = json.loads(text)
    assert record["config"]["probe"]["source"] == "${PROBE_FOLDER}" and record["name"] == "run-${API_TOKEN}"
    assert "hunter2" not in text and str(probe) not in json.dumps(record["config"])
    from discover_ray import build_report

    report = build_report(tmp_path / "runs", result.run_id, out=tmp_path / "report", examples=1)
    assert not report.warnings and report.thumbnails > 0  # the probe reopens from the record (${PROBE_FOLDER} expanded)
    assert all("hunter2" not in p.read_text() for p in (tmp_path / "report").rglob("*.html"))


def test_the_job_id_changes_with_a_new_checkpoint_file_at_the_same_path(probe, tmp_path):
    import os

    import torch

    from discover_ray.demo import tiny_cnn
    from discover_ray.dissection import submission_id

    checkpoint = tmp_path / "w.pt"
    torch.save(tiny_cnn(9).state_dict(), checkpoint)
    models = [{"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9},
               "image_size": 32, "layers": ["fc"], "checkpoint": str(checkpoint)}]
    first = submission_id(config(probe, tmp_path / "runs", models=models))
    assert submission_id(config(probe, tmp_path / "elsewhere", models=models)) == first  # where it writes: not content
    os.utime(checkpoint, (1_000_000_000, 1_000_000_000))
    touched = submission_id(config(probe, tmp_path / "runs", models=models))
    torch.save(tiny_cnn(9).state_dict(), checkpoint)  # new weights at the same path
    assert len({first, touched, submission_id(config(probe, tmp_path / "runs", models=models))}) == 3
