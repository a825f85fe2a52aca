"""Training through Ray Train's TorchTrainer on the session cluster: checkpoints, metrics, exact resume,
two-worker DDP, and dissecting what was trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from discover_ray import dissect, load_config, load_run, load_train_config, train, world
from discover_ray.cli import run_train
from discover_ray.store import Store
from tests.ray_local.conftest import activations, tiny_config

pytestmark = pytest.mark.usefixtures("ray_cluster")
QUIET = Console(quiet=True)
TINY_CVN = {
    "name": "tiny_cnn_cvn2",
    "builder": "discover_ray.demo:tiny_cnn",
    "kwargs": {"n_classes": len(world.class_names()), "competitors": 2},
    "image_size": 32,
}


def train_config(folder, storage, **changes):
    config = {
        "name": "tiny-cvn",
        "storage_path": str(storage),
        "recipe": "resnet",
        "model": TINY_CVN,
        "data": {"train": {"source": str(folder)}, "val": {"source": str(folder)}},
        "epochs": 1,
        "batch_size": 24,
        "optimizer": {"lr": 0.05},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
    }
    return load_train_config({**config, **changes})


@pytest.fixture(scope="module")
def first_epoch(world_folder, tmp_path_factory):
    storage = tmp_path_factory.mktemp("train")
    return storage, train(train_config(world_folder, storage), console=QUIET)


def test_one_epoch_writes_a_checkpoint_with_its_metrics(first_epoch):
    storage, result = first_epoch
    assert result.trained_epochs == [0]
    assert result.model_file == f"{storage}/tiny-cvn/epoch_0000/model.safetensors"
    folder = storage / "tiny-cvn" / "epoch_0000"
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "training_state.pt", "metrics.json"}
    state = torch.load(folder / "training_state.pt", weights_only=True)
    assert state["epoch"] == 0 and "optimizer" in state and "scheduler" in state
    metrics = result.final
    assert metrics["epoch"] == 0 and metrics["lr"] == pytest.approx(0.05)
    assert metrics["loss"] == pytest.approx(metrics["ce"] + 1e-3 * metrics["kl"], rel=1e-6)
    assert 0 < metrics["kl"] <= 3 * torch.log(torch.tensor(2.0)).item()  # 3 LWTA layers, each at most log U
    # every LWTA layer of U = 2 passes exactly half of its units, measured on its outputs
    assert set(metrics["active_fraction"]) == {"relu1", "relu2", "relu3"}
    assert all(f == pytest.approx(0.5, abs=1e-4) for f in metrics["active_fraction"].values())
    assert 0 <= metrics["val_top1"] <= 1 and metrics["eval_samples"] == 4 and metrics["images_per_s"] > 0


def test_resume_continues_exactly_like_an_uninterrupted_run(first_epoch, world_folder, tmp_path):
    storage, first = first_epoch
    console = Console(record=True, width=200)
    resumed = train(train_config(world_folder, storage, epochs=2), console=console)
    assert resumed.trained_epochs == [1] and len(resumed.history) == 2
    printed = console.export_text()  # a line per finished epoch (the workers' own output stays in Ray's logs)
    assert "resuming after epoch 0" in printed and "tiny-cvn: epoch 1 | loss" in printed and "epoch 0 |" not in printed
    assert resumed.history[0] == first.history[0]

    straight = train(train_config(world_folder, tmp_path, epochs=2), console=QUIET)
    assert straight.trained_epochs == [0, 1]
    a, b = load_file(resumed.model_file), load_file(straight.model_file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.final["loss"] == straight.final["loss"]
    # byte for byte, written by other processes: the checkpoint id (the file's sha256) is reproducible
    assert Path(resumed.model_file).read_bytes() == Path(straight.model_file).read_bytes()


def test_a_finished_run_trains_nothing_from_the_cli(first_epoch, world_folder, tmp_path, capsys):
    storage, _ = first_epoch
    raw = train_config(world_folder, storage).model_dump(mode="json")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run_train(str(path)) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "tiny-cvn/epoch_0001/model.safetensors" in out  # the newest epoch


def test_two_workers_train_with_ddp(world_folder, tmp_path):
    result = train(train_config(world_folder, tmp_path, name="tiny-cvn-ddp",
                                scaling={"num_workers": 2, "cpus_per_worker": 0.5}), console=QUIET)
    metrics = result.final
    assert result.trained_epochs == [0] and metrics["images_per_s"] > 0
    assert all(f == pytest.approx(0.5, abs=1e-4) for f in metrics["active_fraction"].values())


def test_a_trained_cvn_dissects_with_columns_per_block(first_epoch, world_folder, tmp_path):
    _, trained = first_epoch
    model = {**TINY_CVN, "checkpoint": trained.model_file, "layers": ["relu2", "pool2", "fc"]}
    config = load_config(tiny_config(world_folder, tmp_path / "runs", models=[model], concepts=[{"kind": "labels"}]))
    result = dissect(config, executor="local", console=QUIET)
    store = Store(str(tmp_path / "runs"))
    run = load_run(store, result.run_id)
    competition = run.models["tiny_cnn_cvn2"].competition
    assert competition.mode == "sample" and competition.passes == 1
    assert competition.layers["relu2"] == {"competitors": 2, "tau": 0.67}
    tables = {layer: activations(store, run, layer, "tiny_cnn_cvn2").read() for layer in ("relu2", "pool2", "fc")}
    relu2 = tables["relu2"]
    assert relu2.column_names[1:5] == ["b0000_u00", "b0000_u01", "b0001_u00", "b0001_u01"]
    assert relu2.schema.metadata[b"discover.block_size"] == b"2"
    # a max-pool of an LWTA map is no longer a competition output; the classifier never was
    assert tables["pool2"].column_names[1] == "u00000" and tables["fc"].column_names[1] == "u00000"


def test_checkpoints_on_s3(world_folder, s3_root):
    result = train(train_config(world_folder, f"{s3_root}/train", name="tiny-cvn-s3"), console=QUIET)
    assert result.trained_epochs == [0]
    assert result.model_file == f"{s3_root}/train/tiny-cvn-s3/epoch_0000/model.safetensors"
    import fsspec

    with fsspec.open(result.model_file, "rb") as handle:
        assert len(handle.read()) > 0
    again = train(train_config(world_folder, f"{s3_root}/train", name="tiny-cvn-s3"), console=QUIET)
    assert again.trained_epochs == [] and again.history == result.history


def test_a_worker_failure_resumes_from_the_last_checkpoint(world_folder, tmp_path):
    """The worker dies in epoch 1 (forward 18: epoch 0 is 1 check + 3 steps + 3 × 4 evaluation passes);
    FailureConfig restarts it, and it goes on from the epoch 0 checkpoint."""
    flag = tmp_path / "crashed"
    model = {**TINY_CVN, "builder": "tests.ray_local.flaky:tiny_cnn_crashing_once",
             "kwargs": {**TINY_CVN["kwargs"], "flag": str(flag), "crash_at": 18}}
    config = train_config(world_folder, tmp_path / "ckpt", name="tiny-cvn-crash", model=model, epochs=2,
                          scaling={"num_workers": 1, "cpus_per_worker": 0.5, "max_failures": 1})
    result = train(config, console=QUIET)
    assert flag.exists() and result.trained_epochs == [0, 1] and [h["epoch"] for h in result.history] == [0, 1]
    epoch0 = tmp_path / "ckpt" / "tiny-cvn-crash" / "epoch_0000" / "metrics.json"
    assert epoch0.stat().st_mtime <= flag.stat().st_mtime  # the crash came after epoch 0 was checkpointed


def test_a_tiny_clip_trains_contrastively_on_captions_and_loads_as_an_encoder(tmp_path):
    from discover_ray.encoders.clip import ClipEncoder, ClipSpec

    data = world.write_parquet(tmp_path / "world.parquet", world.generate(96, seed=7))
    raw = {
        "name": "clip", "task": "contrastive", "recipe": "custom", "storage_path": str(tmp_path / "train"),
        "model": {"name": "TinyCLIP-RN-32"},
        "data": {"train": {"source": str(data), "text_column": "captions"},
                 "val": {"source": str(data), "text_column": "caption"}, "augment": "none"},
        "epochs": 1, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-3},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
    }
    result = train(load_train_config(raw), console=QUIET)
    assert result.trained_epochs == [0] and set(result.final) >= {"loss", "train_top1", "val_top1", "val_ce"}
    assert result.final["kl"] == 0 and result.final["active_fraction"] == {}  # no LWTA layers, no KL
    assert 0 < result.final["loss"] < 10 and 0 <= result.final["val_top1"] <= 1
    encoder = ClipEncoder(ClipSpec("TinyCLIP-RN-32", result.model_file))  # loads as it is, as dissections do
    trained = load_file(result.model_file)
    assert torch.equal(encoder.model.state_dict()["logit_scale"], trained["logit_scale"])
    accuracy = world.zero_shot_accuracy(encoder, world.generate(18, seed=8))
    assert set(accuracy) == {"class", *world.FAMILIES} and all(0 <= v <= 1 for v in accuracy.values())

    with pytest.raises(ValueError, match="set data.train.text_column"):
        load_train_config({**raw, "data": {"train": {"source": str(data)}}})
