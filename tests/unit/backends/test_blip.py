"""The BLIP captioner, driven through the production loader with a tiny random BLIP saved in a local directory,
and the hub rule: a pretrained name that is not cached fails within seconds offline, saying how to fix it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import discover_ray.backends.blip  # noqa: F401  (registers kind "blip" whether or not builtin lists it)
from discover_ray.backends.base import BackendContext, BackendError, build_backend, parse_backend
from discover_ray.backends.blip import BlipCaptioner, BlipConfig
from discover_ray.backends.hub import load_pretrained, torch_dtype
from discover_ray.errors import ConfigError, WeightsUnavailableError
from tests.tiny_hf import CLOSED_ENDPOINT, hub_resolves, isolated_hub, save_tiny_blip

HUB_NAME = "Salesforce/blip-image-captioning-base"


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="module")
def captioner(blip_dir: Path) -> BlipCaptioner:
    return build_backend("captioner", {"kind": "blip", "model": str(blip_dir), "max_new_tokens": 8, "batch_size": 3})


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(6)]
    pictures.append(pictures[0].convert("L"))  # another mode: captioned as RGB
    pictures.append(pictures[1].convert("RGBA"))
    return pictures


def test_captions_are_strings_one_per_image_and_repeat(captioner: BlipCaptioner, images) -> None:
    assert isinstance(captioner, BlipCaptioner)
    captions = captioner.caption(images)
    assert len(captions) == len(images)
    assert all(isinstance(c, str) and c == c.strip() and c for c in captions)
    assert len(set(captions[:6])) > 1  # the tiny BLIP's captions depend on the image
    assert "[" not in " ".join(captions)  # special tokens are skipped
    assert captioner.caption(images) == captions  # greedy: the same captions again
    assert captioner.caption([]) == []


def test_batch_size_changes_neither_captions_nor_identity(blip_dir: Path, captioner: BlipCaptioner, images) -> None:
    others = [BlipCaptioner(BlipConfig(model=str(blip_dir), max_new_tokens=8, batch_size=size), BackendContext())
              for size in (1, 10)]
    expected = captioner.caption(images)
    for other in others:
        assert other.caption(images) == expected
        assert other.identity == captioner.identity


def test_identity_has_decoding_parameters_and_the_effective_dtype(blip_dir: Path, captioner: BlipCaptioner) -> None:
    identity = captioner.identity
    assert (identity.kind, identity.model, identity.revision) == ("blip", str(blip_dir), None)
    assert identity.params == {"max_new_tokens": 8, "min_length": 5, "dtype": "float32", "prompt": None}
    half = BlipCaptioner(BlipConfig(model=str(blip_dir), max_new_tokens=8, dtype="float16"), BackendContext())
    assert half.identity == identity  # float16 on a CPU runs (and is named) as float32
    assert half.dtype == torch.float32 and next(half.model.parameters()).dtype == torch.float32
    prompted = BlipCaptioner(BlipConfig(model=str(blip_dir), max_new_tokens=8, prompt="a photo of"), BackendContext())
    assert prompted.identity.params["prompt"] == "a photo of" and prompted.identity != identity


def test_a_prompt_conditions_the_caption(blip_dir: Path, images) -> None:
    prompted = BlipCaptioner(BlipConfig(model=str(blip_dir), max_new_tokens=6, prompt="A photo of"), BackendContext())
    captions = prompted.caption(images[:3])
    assert all(c.startswith("a photo of") for c in captions)  # BLIP's output starts with its (lower-cased) prompt


def test_bad_configs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        parse_backend("captioner", {"kind": "blip", "batch_size": 0})
    with pytest.raises(ConfigError, match="dtype"):
        parse_backend("captioner", {"kind": "blip", "dtype": "float64"})
    assert parse_backend("captioner", {"kind": "blip"}).model == HUB_NAME


def test_a_model_that_raises_is_a_backend_error(captioner: BlipCaptioner, images, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(captioner.model.vision_model, "forward", broken)
    with pytest.raises(BackendError, match=r"blip.*injected"):
        captioner.caption(images[:2])


def _fails_fast(name: str) -> WeightsUnavailableError:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as caught:
        BlipCaptioner(BlipConfig(model=name), BackendContext())
    assert time.monotonic() - start < 15
    return caught.value


def test_an_uncached_hub_name_fails_fast_offline(tmp_path: Path, monkeypatch) -> None:
    isolated_hub(monkeypatch, tmp_path / "hf-cache", offline=True)
    message = str(_fails_fast(HUB_NAME))
    assert HUB_NAME in message and "local" in message and "offline" in message
    assert f"hf download {HUB_NAME}" in message


@pytest.mark.parametrize("where", ["closed port", "real hub address"])
def test_an_uncached_hub_name_fails_fast_without_network(where: str, tmp_path: Path, monkeypatch) -> None:
    if where == "real hub address" and hub_resolves():
        pytest.skip("this machine can resolve huggingface.co: the test would download the real model")
    isolated_hub(monkeypatch, tmp_path / "hf-cache", offline=False,
                 endpoint=CLOSED_ENDPOINT if where == "closed port" else None)
    message = str(_fails_fast(HUB_NAME))
    assert HUB_NAME in message and "local" in message and "cannot be reached" in message


def test_a_hub_name_in_a_prefilled_cache_loads_offline(blip_dir: Path, captioner: BlipCaptioner, images,
                                                       tmp_path: Path, monkeypatch) -> None:
    """What a cluster without network does when its HF cache is filled elsewhere (``hf download`` into HF_HOME):
    the cache layout is models--OWNER--NAME/refs/main → snapshots/COMMIT/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-cache" / "models--tiny--blip"
    shutil.copytree(blip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    isolated_hub(monkeypatch, tmp_path / "hf-cache", offline=True)
    for revision in (None, commit):
        cached = BlipCaptioner(BlipConfig(model="tiny/blip", revision=revision, max_new_tokens=8), BackendContext())
        assert cached.caption(images) == captioner.caption(images)
        assert (cached.identity.model, cached.identity.revision) == ("tiny/blip", revision)


def test_a_missing_local_directory_says_so(tmp_path: Path) -> None:
    message = str(_fails_fast(str(tmp_path / "no-such-blip")))
    assert "no-such-blip" in message and "does not exist" in message


def test_the_dtype_rule() -> None:
    assert torch_dtype("float16", "cpu") == torch.float32  # CPU: float16 falls back
    assert torch_dtype("float16", "cuda:0") == torch.float16
    assert torch_dtype("bfloat16", "cpu") == torch.bfloat16 and torch_dtype("float32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="float64"):
        torch_dtype("float64", "cpu")


def test_the_loader_is_a_class_or_a_function(blip_dir: Path) -> None:
    from transformers import BlipProcessor

    by_class = load_pretrained(BlipProcessor, str(blip_dir), None, "captioner processor")
    by_function = load_pretrained(BlipProcessor.from_pretrained, str(blip_dir), None, "captioner processor")
    assert type(by_class) is type(by_function) is BlipProcessor
