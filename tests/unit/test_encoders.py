from __future__ import annotations

import time

import pytest
import torch

from discover_ray.encoders.clip import ClipEncoder, ClipSpec, WeightsUnavailableError
from discover_ray.encoders.hub import hub_reachable


def test_random_init_is_seeded_and_embeds_both_modalities():
    a = ClipEncoder(ClipSpec("TinyCLIP-ViT-32", seed=1))
    b = ClipEncoder(ClipSpec("TinyCLIP-ViT-32", seed=1))
    text = a.encode_text(["a red circle", "a blue square"])
    assert text.shape == (2, 64)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(text, b.encode_text(["a red circle", "a blue square"]))
    images = a.encode_images(torch.rand(3, 3, 32, 32))
    assert images.shape == (3, 64)


def test_local_checkpoint_round_trip(tmp_path):
    source = ClipEncoder(ClipSpec("TinyCLIP-ViT-32", seed=3))
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    loaded = ClipEncoder(ClipSpec("TinyCLIP-ViT-32", pretrained=str(path)))
    torch.testing.assert_close(loaded.encode_text(["dog"]), source.encode_text(["dog"]))


@pytest.mark.skipif(hub_reachable(), reason="the model hub is reachable from here")
def test_offline_pretrained_tag_fails_within_seconds():
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="ViT-B-16/openai.*local or s3:// checkpoint"):
        ClipEncoder(ClipSpec("ViT-B-16", pretrained="openai"))
    assert time.monotonic() - start < 10


def test_unknown_tag_and_model_name_the_alternatives():
    with pytest.raises(ValueError, match="neither an open_clip tag of ViT-B-16 \\(openai"):
        ClipEncoder(ClipSpec("ViT-B-16", pretrained="no-such-tag"))
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        ClipEncoder(ClipSpec("ViT-Q-99"))
