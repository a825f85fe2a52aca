"""Training configs, recipes, schedules and training data: plain torch and pydantic, no cluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from discover_ray.config import ConfigError
from discover_ray.cvn.objective import elbo_loss, predict
from discover_ray.demo import tiny_cnn
from discover_ray.probe import ProbeError, ProbeSet
from discover_ray.training.config import load_train_config
from discover_ray.training.data import LabelledImages
from discover_ray.training.recipe import build_optimizer, learning_rate, train_transform


def config(**changes):
    raw = {"model": {"name": "cifar_resnet20_cvn2"}, "data": {"train": {"source": "/data/train.parquet"}}}
    return load_train_config({**raw, **changes})


def test_recipes_fill_the_papers_values_and_the_file_wins():
    resnet = config()
    assert (resnet.optimizer.name, resnet.optimizer.lr, resnet.optimizer.momentum, resnet.optimizer.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (resnet.schedule.name, resnet.schedule.step_epochs, resnet.schedule.gamma) == ("step", 30, 0.1)
    assert (resnet.epochs, resnet.batch_size) == (90, 256)
    deit = config(recipe="deit")
    assert (deit.optimizer.name, deit.optimizer.lr, deit.optimizer.weight_decay) == ("adamw", 5e-4, 0.02)
    assert (deit.schedule.name, deit.schedule.warmup_epochs, deit.schedule.warmup_lr) == ("cosine", 5, 1e-6)
    tuned = config(optimizer={"lr": 0.05}, epochs=3)
    assert tuned.optimizer.lr == 0.05 and tuned.optimizer.momentum == 0.9 and tuned.epochs == 3
    assert (tuned.competition.tau, tuned.competition.kl_weight, tuned.competition.eval_samples) == (0.67, 1e-3, 4)


def test_run_name_follows_what_is_trained_only():
    base = config()
    assert base.run_name == config(scaling={"num_workers": 4}, storage_path="s3://b/x", epochs=7).run_name
    assert base.run_name != config(model={"name": "cifar_resnet20"}).run_name
    assert base.run_name != config(competition={"kl_weight": 0}).run_name
    assert config(name="mine").run_name == "mine"


def test_bad_training_configs_name_the_field():
    with pytest.raises(ConfigError, match="optimizer.lr"):
        config(optimizer={"lr": -1})
    with pytest.raises(ConfigError, match="scaling.num_workers"):
        config(scaling={"num_workers": 0})
    with pytest.raises(ConfigError, match="data.train"):
        load_train_config({"model": {"name": "x"}, "data": {}})


def test_schedules_per_epoch():
    step = config().schedule
    assert [learning_rate(e, 0.1, 90, step) for e in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    deit = config(recipe="deit")
    lrs = [learning_rate(e, 5e-4, 300, deit.schedule) for e in range(300)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[5] == pytest.approx(5e-4)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6], strict=True))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))  # cosine falls
    assert lrs[-1] == pytest.approx(1e-5, abs=1e-7)


def test_adamw_skips_decay_on_biases_and_norms():
    model = tiny_cnn(3)
    optimizer = build_optimizer(model, config(recipe="deit").optimizer)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.02 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])


def test_training_augmentation_keeps_the_models_size_and_normalisation():
    from discover_ray.models import ModelSpec, load_model

    preprocess = load_model(ModelSpec(name="cifar_resnet20")).preprocess
    augment = train_transform(preprocess, "crop_flip")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    outs = [augment(image) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs) and not all(torch.equal(outs[0], o) for o in outs[1:])
    assert train_transform(preprocess, "none") is preprocess
    assert train_transform(preprocess, "resized_crop_flip")(image).shape == (3, 32, 32)


def _folder(tmp_path, labelled=True, corrupt=0):
    rng = np.random.default_rng(1)
    for i in range(12):
        folder = tmp_path / f"c{i % 3}" if labelled else tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    for i in range(corrupt):
        (tmp_path / "c0" / f"bad{i}.png").write_bytes(b"not a png")
    return ProbeSet.from_folder(str(tmp_path), labels=labelled)


def test_training_images_decode_once_and_check_labels_and_failures(tmp_path):
    data = LabelledImages(_folder(tmp_path / "ok"), lambda im: torch.from_numpy(np.array(im)).float())
    assert len(data) == 12 and data.num_classes == 3 and sorted(set(data.labels)) == [0, 1, 2]
    x, y = data[0]
    assert x.shape == (8, 8, 3) and isinstance(y, int)
    with pytest.raises(ProbeError, match="have no label"):
        LabelledImages(_folder(tmp_path / "flat", labelled=False), lambda im: im)
    with pytest.raises(ProbeError, match="could not be decoded"):
        LabelledImages(_folder(tmp_path / "bad", corrupt=2), lambda im: im)
    with pytest.raises(ProbeError, match="GiB"):
        LabelledImages(_folder(tmp_path / "big"), lambda im: im, max_bytes=100)


def test_elbo_adds_the_weighted_kl_and_prediction_averages_passes():
    torch.manual_seed(0)
    cvn, plain = tiny_cnn(3, competitors=2), tiny_cnn(3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    cvn.train()
    objective = elbo_loss(cvn(x), y, cvn, kl_weight=0.5)
    assert objective.kl > 0 and torch.allclose(objective.loss, objective.ce + 0.5 * objective.kl)
    objective.loss.backward()
    assert all(p.grad is not None for p in cvn.parameters())
    assert elbo_loss(plain(x), y, plain, kl_weight=0.5).kl == 0
    cvn.eval()
    torch.manual_seed(1)
    averaged = predict(cvn, x, samples=3)
    torch.manual_seed(1)
    passes = torch.stack([cvn(x) for _ in range(3)]).mean(0)
    assert torch.allclose(averaged, passes, atol=1e-6)
    plain.eval()
    assert torch.equal(predict(plain, x, samples=5), plain(x))  # a deterministic model needs one pass


def test_shipped_training_configs_validate():
    from pathlib import Path

    jobs = Path(__file__).resolve().parents[3] / "jobs" / "configs"
    configs = {p.stem: load_train_config(p) for p in sorted(jobs.glob("train_*.yaml"))}
    assert set(configs) == {"train_cifar_resnet20", "train_cifar_resnet20_cvn2", "train_deit_small_cvn12", "train_resnet18_cvn4",
                            "train_world_clip"}
    assert configs["train_world_clip"].task == "contrastive" and configs["train_world_clip"].data.train.text_column
    cvn, plain = configs["train_cifar_resnet20_cvn2"], configs["train_cifar_resnet20"]
    # the twins differ in the model alone
    assert cvn.model_dump(exclude={"name", "model"}) == plain.model_dump(exclude={"name", "model"})
    assert configs["train_deit_small_cvn12"].scaling.label_selector == {"gpu-type": "a6000"}
    assert configs["train_resnet18_cvn4"].scaling.label_selector == {"gpu-type": "a6000"}
