"""The target shown new images: pooled exactly as RECORD pools (so verification compares like with like), spatial
maps for conv and ViT layers, none for a linear layer, and the same outputs for the same images every time."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from discover_ray import dissect, load_config, world
from discover_ray.analyze import read_activations
from discover_ray.config import ModelConfig
from discover_ray.describe.target import TargetRef
from discover_ray.store import Store


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return world.write_parquet(tmp_path_factory.mktemp("target") / "probe.parquet", world.generate(20, seed=2))


def test_the_layer_probe_pools_as_record_does_through_the_pixel_cache(probe, tmp_path):
    model = {"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9}, "image_size": 32,
             "layers": ["relu2", "fc"]}
    config = load_config({"store": str(tmp_path), "probe": {"source": str(probe), "shard_size": 8}, "models": [model],
                          "concepts": [{"kind": "labels"}], "reduce": {"methods": ["cos"], "top_k": 1}, "seed": 3})
    result = dissect(config, executor="local", console=Console(quiet=True))
    store = Store(result.store)
    opened = config.probe.open()
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in opened.read_bytes(opened.images)]
    for layer in ("relu2", "fc"):
        recorded = read_activations(store, result.record, "tiny_cnn", layer)
        target = TargetRef(ModelConfig(**model), 3, layer).probe("cpu")
        np.testing.assert_allclose(target.activations(images), recorded.values, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(target.activations(images[:5]), target.activations(images[:5]))
    maps = TargetRef(ModelConfig(**model), 3, "relu2").probe("cpu").heatmaps(images[:3], [0, 5])
    assert maps.shape == (3, 2, 16, 16)
    assert TargetRef(ModelConfig(**model), 3, "fc").probe("cpu").heatmaps(images[:3], [0]) is None


def test_vit_patch_tokens_are_laid_out_on_their_grid():
    vit = ModelConfig(name="deit_tiny_patch16_224", image_size=32, layers=["blocks.1.mlp.act"],
                      kwargs={"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 9})
    target = TargetRef(vit, 0, "blocks.1.mlp.act").probe("cpu")
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    maps = target.heatmaps(images, [0, 1, 2])
    assert maps.shape == (2, 3, 4, 4)  # 16 patch tokens (after the class token) on a 4 × 4 grid
    assert target.activations(images).shape == (2, 768)  # the class token, as RECORD's default token pool
