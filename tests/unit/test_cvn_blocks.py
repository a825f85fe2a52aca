"""Which recorded layers carry competition blocks: decided by output identity in one forward pass."""

from __future__ import annotations

import pytest
import torch

from discover_ray.cvn import LWTA
from discover_ray.cvn.blocks import competition_blocks
from discover_ray.demo import tiny_cnn
from discover_ray.models import ModelSpec, load_model
from discover_ray.record import resolve_layers


def test_lwta_modules_and_containers_ending_in_one_have_blocks():
    model = load_model(ModelSpec(name="cifar_resnet20_cvn2")).model
    names = ["layer1", "layer2.2", "layer3.0.relu1", "layer3.0.bn2", "pool", "linear"]
    sizes = competition_blocks(model, resolve_layers(model, names), torch.randn(1, 3, 32, 32))
    assert sizes == {"layer1": 2, "layer2.2": 2, "layer3.0.relu1": 2, "layer3.0.bn2": 1, "pool": 1, "linear": 1}
    assert model.training is False  # load_model's eval mode is kept


def test_plain_models_have_no_blocks_and_training_mode_is_restored():
    model = tiny_cnn(3).train()
    assert competition_blocks(model, resolve_layers(model, ["relu2", "fc"]), torch.randn(1, 3, 32, 32)) == {"relu2": 1, "fc": 1}
    cvn = tiny_cnn(3, competitors=4).train()
    sizes = competition_blocks(cvn, resolve_layers(cvn, ["relu2", "pool2", "fc"]), torch.randn(1, 3, 32, 32))
    assert sizes == {"relu2": 4, "pool2": 1, "fc": 1} and cvn.training
    assert isinstance(cvn.relu2, LWTA)


def test_per_example_seeds_make_an_images_noise_independent_of_its_batch():
    from discover_ray.cvn import seed_examples
    from discover_ray.dissection.stages.record import image_seed

    torch.manual_seed(0)
    model = tiny_cnn(3, competitors=2).eval()
    x = torch.randn(4, 3, 32, 32)
    seeds = [image_seed(7, f"img/{i}") for i in range(4)]
    with torch.no_grad():
        seed_examples(model, seeds)
        whole = model(x)
        seed_examples(model, seeds[2:3])
        alone = model(x[2:3])
        seed_examples(model, [seeds[3], seeds[2]])
        swapped = model(x[[3, 2]])
        seed_examples(model, [image_seed(8, f"img/{i}") for i in range(4)])
        other_run = model(x)
    assert torch.allclose(whole[2], alone[0], atol=1e-5) and torch.allclose(whole[2], swapped[1], atol=1e-5)
    assert torch.allclose(whole[3], swapped[0], atol=1e-5)
    assert not torch.allclose(whole, other_run)  # another run seed samples other winners
    seed_examples(model, seeds)
    with pytest.raises(ValueError, match="per-example seeds for a batch of 2"):
        model(x[:2])
    seed_examples(model, None)
    assert model(x).shape == (4, 3)
