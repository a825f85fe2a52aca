"""``describe_units`` on a target whose units are known (a colour detector), the world's renderer, retrieval
captions: the steps, their seeds, crops on a conv layer, and a unit that never activates."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from discover_ray import world
from discover_ray.backends.base import build_backend
from discover_ray.backends.cache import CallCache
from discover_ray.backends.cached import CachedCaptioner, CachedGenerator
from discover_ray.config import ModelConfig
from discover_ray.describe import DescribeSettings, describe_units, seed_for
from discover_ray.describe.scorer import clip_scorer
from discover_ray.describe.target import TargetRef
from discover_ray.encoders.clip import ClipSpec

COLOURS = ModelConfig(name="colours", builder="tests.world_models:colour_detector", image_size=32, layers=["relu", "fc"])


@pytest.fixture(scope="module")
def probe():
    data = world.generate(27, seed=4)
    pixels = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return {f"img{i}": Image.fromarray(p) for i, p in enumerate(pixels)}, data


def run(probe, layer: str, tmp_path, **settings):
    images, data = probe
    target = TargetRef(COLOURS, 0, layer).probe("cpu")
    acts = target.activations(list(images.values()))
    ids = list(images)
    top = {u: [] if acts[:, u].max() == acts[:, u].min() else [ids[i] for i in np.argsort(-acts[:, u])[:4]]
           for u in range(4)}
    bank = tmp_path / "bank.txt"
    bank.write_text("\n".join(world.caption_bank()) + "\n")
    cache = CallCache(str(tmp_path / "store"))
    captioner = CachedCaptioner(build_backend("captioner", {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32",
                                                            "captions": str(bank)}), cache)
    generator = CachedGenerator(build_backend("generator", {"kind": "world"}), cache)
    timings: dict[str, float] = {}
    found = describe_units([0, 1, 2, 3], top, images, target, captioner, None, generator,
                           clip_scorer(ClipSpec("TinyCLIP-ViT-32")),
                           DescribeSettings(top_images=4, caption_images=4, images_per_candidate=3, beta=2,
                                            top_generated=6, crop_size=48, **settings), (0, "colours", layer), timings)
    return found, timings, cache


def test_every_step_runs_and_a_constant_unit_is_recorded_dead(probe, tmp_path):
    found, timings, cache = run(probe, "fc", tmp_path)
    assert set(timings) == {"crops", "caption", "summarise", "generate", "select"}
    assert [d.status for d in found] == ["ok", "ok", "ok", "dead"]
    for d in found[:3]:
        assert len(d.captioned) == 4 and all(c.box is None for c in d.captioned)  # fc: no spatial map, no crops
        captions = [c.caption for c in d.captioned]
        assert [c.concept for c in d.candidates if c.drawn] and {c.concept for c in d.candidates} == set(captions)
        assert all(len(c.images) == 3 for c in d.candidates)
        assert [c.score for c in d.candidates] == sorted((c.score for c in d.candidates), reverse=True)
    assert cache.stats.misses > 0


def test_images_are_seeded_per_unit_and_candidate_and_crops_come_from_conv_maps(probe, tmp_path):
    found, _, _ = run(probe, "relu", tmp_path, crops=2)
    assert any(c.box is not None for d in found[:3] for c in d.captioned)
    assert all(len(d.captioned) <= 4 for d in found[:3])
    by_concept: dict[str, list[tuple[int, list[str]]]] = {}
    for d in found[:3]:
        for c in d.candidates:
            by_concept.setdefault(c.concept, []).append((d.unit, c.images))
    assert seed_for(0, "colours", "relu", "generate", 0, "red") != seed_for(0, "colours", "relu", "generate", 1, "red")
    for shared in (v for v in by_concept.values() if len(v) > 1):  # one concept, two units: different images
        assert shared[0][1] != shared[1][1]
