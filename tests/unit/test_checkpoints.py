"""Many checkpoints in one job: ``models[].checkpoints`` (a training run folder, a glob, a list) expands into one
model per checkpoint, every RECORD shares one pass, REDUCE streams its activations, and ``discover compare`` and
the report show the labels' evolution over the checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file
from typer.testing import CliRunner

from discover_ray import build_report, dissect, label_evolution, load_config, world
from discover_ray.checkpoints import checkpoints_of
from discover_ray.cli import app
from discover_ray.demo import tiny_cnn
from discover_ray.dissection.stored_activations import StoredActivations
from discover_ray.errors import ConfigError, IncompatibleRuns, InputNotFound
from discover_ray.schema import read_activations
from discover_ray.store import Store

QUIET = Console(quiet=True)
MODEL = {"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9}, "image_size": 32,
         "layers": ["relu3", "fc"]}


def write_run(run: Path, epochs: int) -> None:
    """A `discover train` layout: epoch_NNNN/model.safetensors, each epoch another initialisation."""
    for epoch in range(epochs):
        torch.manual_seed(epoch)
        (run / f"epoch_{epoch:04d}").mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in tiny_cnn(9).state_dict().items()},
                  str(run / f"epoch_{epoch:04d}" / "model.safetensors"))


def raw(probe: Path, store: Path, **model) -> dict:
    return {"store": str(store), "probe": {"source": str(probe), "shard_size": 20},
            "models": [{**MODEL, **model}], "concepts": [{"kind": "labels"}],
            "reduce": {"methods": ["soft_wpmi", "cos"], "top_k": 2, "params": {"soft_wpmi": {"top_k": 5}}},
            "ray": {"progress": False}}


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Three checkpoints of the world CNN dissected in one job, in this process."""
    root = tmp_path_factory.mktemp("many")
    probe = world.write_parquet(root / "probe.parquet", world.generate(40, seed=8))
    write_run(root / "train", 3)
    config = load_config(raw(probe, root / "runs", checkpoints=str(root / "train")))
    return root, probe, config, dissect(config, executor="local", console=QUIET)


def test_a_training_run_folder_a_glob_and_a_list_each_become_one_model_per_checkpoint(many):
    root, probe, config, _ = many
    assert [m.label for m in config.models] == ["tiny_cnn@epoch_0000", "tiny_cnn@epoch_0001", "tiny_cnn@epoch_0002"]
    assert all(m.checkpoint.endswith("model.safetensors") for m in config.models)
    globbed = load_config(raw(probe, root / "x", alias="cnn", checkpoints=str(root / "train/epoch_000[12]/*.safetensors")))
    assert [m.label for m in globbed.models] == ["cnn@epoch_0001", "cnn@epoch_0002"]  # named by their folders
    files = [str(root / "train/epoch_0002/model.safetensors"), str(root / "train/epoch_0000/model.safetensors")]
    listed = load_config(raw(probe, root / "x", checkpoints=files))
    assert [m.checkpoint for m in listed.models] == files  # a list keeps its order
    with pytest.raises(ConfigError, match="both checkpoint and checkpoints"):
        load_config(raw(probe, root / "x", checkpoint=files[0], checkpoints=files))
    with pytest.raises(InputNotFound, match="no checkpoint found at"):
        load_config(raw(probe, root / "x", checkpoints=str(root / "train/*.nothing")))
    assert [c.name for c in checkpoints_of(str(root / "train"))] == ["epoch_0000", "epoch_0001", "epoch_0002"]


def test_every_checkpoint_is_recorded_in_one_pass_over_the_probe_set(many):
    _, _, _, result = many
    records = [s for s in result.record.stages if s.stage in ("DECODE", "RECORD")]
    assert len(records) == 4  # DECODE and three RECORDs
    assert all(s.counts["pass"] == ["DECODE", "RECORD", "RECORD", "RECORD"] for s in records)
    assert len({m.checkpoint_id for m in result.record.models.values()}) == 3


def test_reduce_hands_its_tasks_a_reference_to_the_layer_which_reads_the_same_values(many):
    _, _, config, result = many
    store = Store(config.store)
    path = result.record.models["tiny_cnn@epoch_0001"].layers["relu3"]
    expected = read_activations(store.committed(path).read())
    stored = StoredActivations(store.root, path, 32, len(expected.image_ids))
    assert stored.shape == (40, 32)
    np.testing.assert_array_equal(stored.load(), expected.values)
    assert stored.load() is stored.load()  # one read per layer and process
    rows = np.array([0, 5, 39])
    np.testing.assert_array_equal(StoredActivations(store.root, path, 32, 40, rows).load(), expected.values[rows])
    import pickle

    assert len(pickle.dumps(stored)) < 1000  # what the driver ships: a path, not the layer


def test_the_evolution_over_the_checkpoints_from_the_api_the_cli_and_the_report(many, tmp_path):
    _, _, config, result = many
    layers = label_evolution(config.store, result.run_id)
    assert {(e.layer, e.method) for e in layers} == {(layer, m) for layer in ("relu3", "fc") for m in ("soft_wpmi", "cos")}
    fc = next(e for e in layers if e.layer == "fc" and e.method == "cos")
    assert fc.checkpoints == ["tiny_cnn@epoch_0000", "tiny_cnn@epoch_0001", "tiny_cnn@epoch_0002"]
    assert [(s.before, s.after) for s in fc.steps] == [("tiny_cnn@epoch_0000", "tiny_cnn@epoch_0001"),
                                                      ("tiny_cnn@epoch_0001", "tiny_cnn@epoch_0002")]
    for step in fc.steps:
        assert step.units == 9 and len(step.changed) == min(5, step.units - step.stable)
        assert all(r["concept_a"] != r["concept_b"] for r in step.changed)
    assert fc.first_seen and set(fc.first_seen.values()) <= set(fc.checkpoints)
    assert fc.first_by_checkpoint[0][0] == "tiny_cnn@epoch_0000"  # the first checkpoint's labels all first appear there
    printed = CliRunner().invoke(app, ["compare", result.run_id, "--store", config.store], terminal_width=200)
    assert printed.exit_code == 0, printed.output
    assert "evolution of fc (cos, labels) over 3 checkpoints" in printed.output
    assert "tiny_cnn@epoch_0000 →" in printed.output and "first at tiny_cnn@epoch_0000" in printed.output
    report = build_report(config.store, result.run_id, out=tmp_path / "report", examples=1)
    assert len(report.evolution) == 1
    page = (report.folder / report.evolution[0][1]).read_text()
    assert "Evolution over 3 checkpoints" in page and "tiny_cnn@epoch_0001 → tiny_cnn@epoch_0002" in page
    assert report.evolution[0][1] in report.index.read_text()


def test_a_run_of_one_checkpoint_has_no_evolution(tmp_path, many):
    root, probe, _, _ = many
    config = load_config(raw(probe, tmp_path / "runs", checkpoint=str(root / "train/epoch_0000/model.safetensors")))
    one = dissect(config, executor="local", console=QUIET)
    with pytest.raises(IncompatibleRuns, match="no architecture at two checkpoints"):
        label_evolution(config.store, one.run_id)
    printed = CliRunner().invoke(app, ["compare", one.run_id, "--store", config.store])
    assert printed.exit_code == 2 and "no architecture at two checkpoints" in printed.output


def test_without_the_pixel_cache_models_that_preprocess_alike_still_share_one_pass(many, tmp_path):
    root, probe, _, _ = many
    config = load_config({**raw(probe, tmp_path / "runs", checkpoints=str(root / "train")),
                          "record": {"pixel_cache": False}})
    result = dissect(config, executor="local", console=QUIET)
    records = [s for s in result.record.stages if s.stage in ("DECODE", "RECORD")]
    assert [s.stage for s in records] == ["RECORD"] * 3
    assert all(s.counts["pass"] == ["RECORD", "RECORD", "RECORD"] for s in records)
