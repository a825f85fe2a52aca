"""``discover watch``: the completed checkpoints of a training run, each dissected once, and the labels' drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file
from typer.testing import CliRunner

from discover_ray import load_config, world
from discover_ray.cli import app
from discover_ray.demo import tiny_cnn
from discover_ray.errors import InputNotFound
from discover_ray.watch import completed_checkpoints, watch_once

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return world.write_parquet(tmp_path_factory.mktemp("watch") / "probe.parquet", world.generate(30, seed=6))


def write_epoch(run: Path, epoch: int, folder: str = "epoch_{:04d}") -> Path:
    """A checkpoint as `discover train` writes it: model.safetensors beside metrics and the training state."""
    torch.manual_seed(epoch)
    path = run / folder.format(epoch)
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tiny_cnn(9).state_dict().items()}, str(path / "model.safetensors"))
    (path / "metrics.json").write_text(json.dumps({"epoch": epoch}))
    (path / "training_state.pt").write_bytes(b"optimizer state")
    return path


def config(probe: Path, store: Path):
    return load_config({"store": str(store), "probe": {"source": str(probe), "shard_size": 30},
                        "models": [{"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn",
                                    "kwargs": {"n_classes": 9}, "image_size": 32, "layers": ["relu3", "fc"]}],
                        "concepts": [{"kind": "labels"}], "reduce": {"methods": ["cos"], "top_k": 2}})


def test_two_epochs_are_dissected_then_none_then_exactly_the_third(probe, tmp_path):
    run, store = tmp_path / "train" / "world-cnn", tmp_path / "runs"
    write_epoch(run, 0)
    write_epoch(run, 1)
    first = watch_once(str(run), config(probe, store), executor="local", console=QUIET)
    assert first.dissected == 2 and [c["name"] for c in first.checkpoints] == ["epoch_0000", "epoch_0001"]
    assert all(c["uri"].endswith("model.safetensors") for c in first.checkpoints)
    again = watch_once(str(run), config(probe, store), executor="local", console=QUIET)
    assert again.dissected == 0 and [c["status"] for c in again.checkpoints] == ["done", "done"]
    write_epoch(run, 2)
    third = watch_once(str(run), config(probe, store), executor="local", console=QUIET)
    assert third.dissected == 1 and [c["status"] for c in third.checkpoints] == ["done", "done", "dissected"]
    assert len({c["run_id"] for c in third.checkpoints}) == 3
    # the drift: each layer between consecutive checkpoints, and where each concept first appears
    assert {(d.layer, d.before, d.after) for d in third.drift} == {
        (layer, a, b) for layer in ("relu3", "fc") for a, b in (("epoch_0000", "epoch_0001"), ("epoch_0001", "epoch_0002"))}
    assert all(0 <= d.stable <= d.units == (32 if d.layer == "relu3" else 9) for d in third.drift)
    assert set(third.first_seen) == {"relu3 (cos, labels)", "fc (cos, labels)"}
    assert set(third.first_seen["fc (cos, labels)"].values()) <= {"epoch_0000", "epoch_0001", "epoch_0002"}
    recorded = json.loads((store / "watches" / third.watch_id / "watch.json").read_text())
    assert recorded["dissected"] == 1 and len(recorded["drift"]) == 4


def test_a_ray_train_snapshot_lists_what_is_complete_and_plain_weight_files_count_too(tmp_path):
    run = tmp_path / "ray-run"
    for epoch in range(3):
        write_epoch(run, epoch, "checkpoint_{:06d}")
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps({"checkpoint_results": [
        {"checkpoint_dir_name": "checkpoint_000000"}, {"checkpoint_dir_name": "checkpoint_000001"}]}))
    assert [c.name for c in completed_checkpoints(str(run))] == ["checkpoint_000000", "checkpoint_000001"]
    (run / "checkpoint_000003").mkdir()  # a folder still empty is not a checkpoint
    assert len(completed_checkpoints(str(run))) == 2
    files = tmp_path / "weights"
    files.mkdir()
    for step in (100, 20):
        save_file({"w": torch.zeros(2)}, str(files / f"step-{step}.safetensors"))
    (files / "notes.txt").write_text("not weights")
    assert [c.name for c in completed_checkpoints(str(files))] == ["step-20.safetensors", "step-100.safetensors"]
    with pytest.raises(InputNotFound, match="training run .* not found"):
        completed_checkpoints(str(tmp_path / "missing"))


def test_the_cli_prints_the_pass_and_the_drift(probe, tmp_path):
    run = tmp_path / "train"
    write_epoch(run, 0)
    write_epoch(run, 1)
    path = tmp_path / "watch.yaml"
    path.write_text(json.dumps(config(probe, tmp_path / "runs").stored()))
    printed = CliRunner().invoke(app, ["watch", str(run), "--config", str(path), "--once", "--local"],
                                 terminal_width=200)
    assert printed.exit_code == 0, printed.output
    assert "2 completed checkpoints, 2 dissected now, 0 before" in printed.output
    assert "label drift between consecutive checkpoints" in printed.output and "epoch_0000 →" in printed.output
    assert "first labels in fc (cos, labels)" in printed.output
    missing = CliRunner().invoke(app, ["watch", str(tmp_path / "nope"), "--config", str(path), "--once", "--local"])
    assert missing.exit_code == 2 and "not found" in missing.output
