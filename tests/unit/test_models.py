from __future__ import annotations

import time
import warnings

import pytest
import torch

from discover_ray.cvn import lwta_modules, set_deterministic
from discover_ray.encoders.hub import hub_reachable
from discover_ray.models import (
    TIMM_VARIANTS,
    CheckpointMismatch,
    ModelSpec,
    create_cvn,
    load_model,
    load_state_dict,
    parse_cvn_name,
    register_timm_variants,
)
from discover_ray.models.cifar_resnet import cifar_resnet
from discover_ray.probe import ProbeSet, decode_images

RESNET20 = "models/cifar10-resnet/resnet20-12fca82f.th"
TINY_DEIT = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 10}


def accuracy(loaded, probe) -> float:
    decoded = decode_images(probe, probe.images)
    x = torch.stack([loaded.preprocess(im) for im in decoded.images])
    y = torch.tensor([im.label for im in decoded.kept])
    with torch.no_grad():
        return float((loaded.model(x).argmax(1) == y).float().mean())


def test_shared_cifar_resnet20_loads_as_it_is(shared):
    loaded = load_model(ModelSpec("cifar_resnet20", checkpoint=str(shared / RESNET20)))
    assert loaded.checkpoint_id.startswith("12fca82f")  # sha256 of the file, as its name says
    probe = ProbeSet.from_parquet(str(shared / "data/cifar10/test.parquet")).sample(1000, seed=0)
    assert accuracy(loaded, probe) > 0.75  # 81.0 % on the whole (JPEG re-encoded) test split


def test_checkpoint_that_does_not_fit_names_the_keys(shared):
    with pytest.raises(CheckpointMismatch, match="does not fit the model: .*unexpected \\(layer1.3"):
        load_model(ModelSpec("cifar_resnet20", checkpoint=str(shared / "models/cifar10-resnet/resnet56-4bfd9763.th")))


def test_safetensors_and_s3_checkpoints(tmp_path, s3_server):
    import boto3
    from safetensors.torch import save_file

    source = load_model(ModelSpec("cifar_resnet20"))
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="weights")
    boto3.client("s3", endpoint_url=s3_server).upload_file(str(tmp_path / "w.pt"), "weights", "ck/w.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = source.model(x)
        for uri in (str(tmp_path / "w.safetensors"), "s3://weights/ck/w.pt"):
            loaded = load_model(ModelSpec("cifar_resnet20", checkpoint=uri))
            torch.testing.assert_close(loaded.model(x), expected)
            assert len(loaded.checkpoint_id) == 64


class NotATensor:
    pass


def test_checkpoints_are_never_unpickled_unsafely(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match="cannot be read safely.*save a state_dict"):
        load_state_dict(str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict(str(tmp_path / "missing.pt"))


def test_builder_entry_point_and_timm_models():
    loaded = load_model(ModelSpec("tiny", builder="discover_ray.demo:tiny_cnn", kwargs={"n_classes": 9}))
    assert loaded.model(torch.rand(1, 3, 32, 32)).shape == (1, 9)
    with pytest.raises(ValueError, match="package.module:function"):
        load_model(ModelSpec("x", builder="discover_ray.demo.tiny_cnn"))
    timm_model = load_model(ModelSpec("test_resnet"))
    from PIL import Image

    assert timm_model.preprocess(Image.new("RGB", (200, 180))).shape == (3, 160, 160)  # the model's data config
    with pytest.raises(ValueError, match="unknown model 'resnet_9000'"):
        load_model(ModelSpec("resnet_9000"))


@pytest.mark.skipif(hub_reachable(), reason="the model hub is reachable from here")
def test_offline_pretrained_timm_weights_fail_fast():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="resnet50.*unreachable.*checkpoint="):
        load_model(ModelSpec("resnet50", pretrained=True))
    assert time.monotonic() - start < 10


def test_cifar_state_dict_loads_into_its_twin():
    original = cifar_resnet("cifar_resnet20")
    twin = create_cvn("cifar_resnet20_cvn2")
    assert twin.state_dict().keys() == original.state_dict().keys()
    twin.load_state_dict(original.state_dict(), strict=True)
    set_deterministic(twin, True)
    assert torch.isfinite(twin.eval()(torch.rand(2, 3, 32, 32))).all()


# -- names ---------------------------------------------------------------------------------------
def test_names_parse():
    assert parse_cvn_name("deit_tiny_cvn16") == ("deit_tiny_patch16_224", 16)
    assert parse_cvn_name("deit_small_cvn12") == ("deit_small_patch16_224", 12)
    assert parse_cvn_name("resnet18_cvn4") == ("resnet18", 4)
    assert parse_cvn_name("cifar_resnet20_cvn2") == ("cifar_resnet20", 2)
    assert parse_cvn_name("vit_small_patch16_224.augreg_in21k_cvn8") == ("vit_small_patch16_224.augreg_in21k", 8)
    for name in ("resnet18", "resnet18_cvn", "resnet18_cvn0", "_cvn4", "resnet18_cvn4x"):
        assert parse_cvn_name(name) is None
    with pytest.raises(ValueError, match="unknown model 'resnet_9000_cvn4': not a name of any model family"):
        create_cvn("resnet_9000_cvn4")
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_cvn("cifar_resnet20_cvn2", pretrained=True)


def test_create_and_timm_registration():
    import timm

    model = create_cvn("deit_tiny_cvn16", **TINY_DEIT)
    assert [m.competitors for _, m in lwta_modules(model)] == [16, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second registration would warn about overwriting
        register_timm_variants()
        register_timm_variants()
    assert set(TIMM_VARIANTS) <= set(timm.list_models("*_cvn*"))
    model = timm.create_model("deit_tiny_cvn24", tau=1.67, **TINY_DEIT)
    assert [(m.competitors, m.tau) for _, m in lwta_modules(model)] == [(24, 1.67), (24, 1.67)]
    assert torch.isfinite(model(torch.rand(1, 3, 32, 32))).all()
    assert timm.data.resolve_model_data_config(model)["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
