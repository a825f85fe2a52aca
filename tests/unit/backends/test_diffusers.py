"""The Stable Diffusion generator, driven through the production loader with a tiny random pipeline saved in a
local directory (2 steps, 32² images): one image per seed, each depending on its own seed only; float16 on a
CPU runs as float32; an uncached hub name fails within seconds offline."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

import discover_ray.backends.diffusers_sd  # noqa: F401  (registers kind "diffusers" whether or not builtin lists it)
from discover_ray.backends.base import BackendContext, BackendError, build_backend, parse_backend
from discover_ray.backends.diffusers_sd import DiffusersConfig, DiffusersGenerator
from discover_ray.errors import ConfigError, WeightsUnavailableError
from tests.tiny_hf import CLOSED_ENDPOINT, hub_resolves, isolated_hub, save_tiny_sd

HUB_NAME = "CompVis/stable-diffusion-v1-4"
PROMPT = "a red dog on a blue car"

# diffusers 0.42's DPM-Solver turns a torch tensor into numpy with np.array(...), which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"), image_size=32)


def tiny(sd_dir: Path, **fields) -> DiffusersGenerator:
    config = DiffusersConfig(**{"model": str(sd_dir), "steps": 2, "size": 32, **fields})
    return DiffusersGenerator(config, BackendContext())


@pytest.fixture(scope="module")
def generator(sd_dir: Path) -> DiffusersGenerator:
    return build_backend("generator", {"kind": "diffusers", "model": str(sd_dir), "steps": 2, "size": 32,
                                       "batch_size": 2})


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_one_image_of_the_configured_size_per_seed(generator: DiffusersGenerator) -> None:
    assert isinstance(generator, DiffusersGenerator)
    images = generator.generate(PROMPT, [0, 1, 2, 3, 4])  # three batches of at most 2
    assert len(images) == 5
    assert all(image.size == (32, 32) and image.mode == "RGB" for image in images)
    assert generator.generate(PROMPT, []) == []
    assert tiny(generator.config.model, size=16).generate(PROMPT, [0])[0].size == (16, 16)


def test_an_image_depends_on_its_own_seed_only(generator: DiffusersGenerator) -> None:
    together = pixels(generator.generate(PROMPT, [1, 2]))
    assert np.array_equal(pixels(generator.generate(PROMPT, [1, 2]))[0], together[0])  # repeatable, bit for bit
    reversed_ = pixels(generator.generate(PROMPT, [2, 1]))
    assert np.array_equal(reversed_[1], together[0]) and np.array_equal(reversed_[0], together[1])  # order: exact
    alone = pixels(generator.generate(PROMPT, [2]) + generator.generate(PROMPT, [1]))
    # In a batch of another size the kernels round differently: about 1e-6 before quantisation, so at most one
    # level of 255 (measured on CPU, float32); not necessarily bit-identical.
    assert np.abs(alone[0] - together[1]).max() <= 1 and np.abs(alone[1] - together[0]).max() <= 1
    assert np.abs(together[0] - together[1]).mean() > 10  # another seed is another image


def test_batch_size_is_not_in_the_identity_nor_in_the_images(sd_dir: Path, generator: DiffusersGenerator) -> None:
    seeds = [5, 6, 7]
    other = tiny(sd_dir, batch_size=3)
    assert other.identity == generator.identity
    for a, b in zip(pixels(other.generate(PROMPT, seeds)), pixels(generator.generate(PROMPT, seeds))):
        assert np.abs(a - b).max() <= 1


def test_float16_on_cpu_runs_and_is_named_as_float32(sd_dir: Path, generator: DiffusersGenerator) -> None:
    assert generator.config.dtype == "float16"  # the default, as on GPU nodes
    assert generator.dtype == torch.float32 and generator.pipeline.unet.dtype == torch.float32
    identity = generator.identity
    assert (identity.kind, identity.model, identity.revision) == ("diffusers", str(sd_dir), None)
    assert identity.params == {"dtype": "float32", "scheduler": "dpm_multistep", "steps": 2, "size": 32,
                               "guidance": 7.5, "negative_prompt": None,
                               "prompt": "One realistic image of {concept}"}
    assert tiny(sd_dir, dtype="float32").identity == identity
    assert type(generator.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_parameters_that_change_images_change_the_identity(sd_dir: Path, generator: DiffusersGenerator) -> None:
    negative = tiny(sd_dir, negative_prompt="green", batch_size=2)
    assert negative.identity != generator.identity and negative.identity.params["negative_prompt"] == "green"
    assert np.abs(pixels(negative.generate(PROMPT, [3]))[0] - pixels(generator.generate(PROMPT, [3]))[0]).max() > 1
    assert tiny(sd_dir, steps=3).identity != generator.identity


def test_bad_configs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="size"):
        parse_backend("generator", {"kind": "diffusers", "size": 30})
    with pytest.raises(ConfigError, match="scheduler"):
        parse_backend("generator", {"kind": "diffusers", "scheduler": "euler"})
    default = parse_backend("generator", {"kind": "diffusers"})
    assert (default.model, default.dtype, default.steps, default.size) == (HUB_NAME, "float16", 50, 512)


def test_a_pipeline_that_raises_is_a_backend_error(generator: DiffusersGenerator, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error (injected)")

    monkeypatch.setattr(generator.pipeline.unet, "forward", broken)
    with pytest.raises(BackendError, match=r"diffusers.*seeds \[0, 1\].*injected"):
        generator.generate(PROMPT, [0, 1, 2])


def _fails_fast(name: str) -> str:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        DiffusersGenerator(DiffusersConfig(model=name), BackendContext())
    assert time.monotonic() - start < 15
    return str(caught.value)


def test_an_uncached_hub_name_fails_fast_offline(tmp_path: Path, monkeypatch) -> None:
    isolated_hub(monkeypatch, tmp_path / "hf-cache", offline=True)
    message = _fails_fast(HUB_NAME)
    assert HUB_NAME in message and "local" in message and "offline" in message


@pytest.mark.parametrize("where", ["closed port", "real hub address"])
def test_an_uncached_hub_name_fails_fast_without_network(where: str, tmp_path: Path, monkeypatch) -> None:
    if where == "real hub address" and hub_resolves():
        pytest.skip("this machine can resolve huggingface.co: the test would download the real model")
    isolated_hub(monkeypatch, tmp_path / "hf-cache", offline=False,
                 endpoint=CLOSED_ENDPOINT if where == "closed port" else None)
    message = _fails_fast(HUB_NAME)
    assert HUB_NAME in message and "local" in message and "cannot be reached" in message


def test_a_revision_is_named_in_the_message(tmp_path: Path, monkeypatch) -> None:
    isolated_hub(monkeypatch, tmp_path / "hf-cache", offline=True)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"CompVis/stable-diffusion-v1-4.*'fp16'.*--revision fp16"):
        DiffusersGenerator(DiffusersConfig(model=HUB_NAME, revision="fp16"), BackendContext())
    assert time.monotonic() - start < 15


def test_the_prompt_template_puts_the_concept_in_and_must_name_it(sd_dir):
    plain = tiny(sd_dir, prompt="{concept}")
    templated = tiny(sd_dir)
    assert templated.config.prompt == "One realistic image of {concept}"
    assert np.abs(pixels(plain.generate("red circle", [0]))[0] - pixels(templated.generate("red circle", [0]))[0]).max() > 0
    with pytest.raises(ConfigError, match=r"\{concept\}"):
        parse_backend("generator", {"kind": "diffusers", "model": str(sd_dir), "prompt": "a photo"})
