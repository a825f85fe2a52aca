"""The light backends (the world's renderer, retrieval captions, no summariser) and the cache in front of every
backend: only misses reach a backend, a re-run reaches none, replay never calls, the budget stops calls."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from discover_ray import world
from discover_ray.backends.base import BackendContext, build_backend, parse_backend
from discover_ray.backends.cache import CallCache, ReplayMiss
from discover_ray.backends.cached import CachedCaptioner, CachedGenerator, CachedSummarizer
from discover_ray.backends.limits import BudgetExhausted, CallBudget
from discover_ray.errors import ConfigError, UnknownName


class Counting:
    """Wraps a backend and counts what reaches it."""

    def __init__(self, backend):
        self.backend, self.calls, self.items = backend, 0, 0
        self.identity = backend.identity

    def caption(self, images):
        self.calls, self.items = self.calls + 1, self.items + len(images)
        return self.backend.caption(images)

    def generate(self, prompt, seeds):
        self.calls, self.items = self.calls + 1, self.items + len(seeds)
        return self.backend.generate(prompt, seeds)

    def chat(self, messages, *, temperature, seed):
        self.calls += 1
        return f"reply {seed} {temperature} {messages[-1]['content']}"


@pytest.fixture
def bank(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(world.caption_bank()) + "\n")
    return path


def images(n: int, seed: int = 0) -> list[Image.Image]:
    data = world.generate(n, seed=seed)
    pixels = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def test_the_world_draws_any_phrase_of_its_grammar_per_seed_and_nothing_outside_it():
    generator = build_backend("generator", {"kind": "world", "size": 32})
    drawn = generator.generate("a red striped circle", [1, 2, 3])
    assert len(drawn) == 3 and all(im.size == (32, 32) and im.mode == "RGB" for im in drawn)
    alone = generator.generate("a red striped circle", [2])
    assert np.array_equal(np.asarray(alone[0]), np.asarray(drawn[1]))  # an image depends on its own seed only
    assert generator.generate("a photo of a dog", [1]) is None
    assert generator.identity.as_dict() == {"kind": "world", "model": "discover_ray.world", "revision": None,
                                            "params": {"size": 32}}


def test_retrieval_captions_come_from_the_bank_and_the_identity_names_encoder_and_bank(bank, tmp_path):
    captioner = build_backend("captioner", {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32", "captions": str(bank)})
    captions = captioner.caption(images(6))
    assert len(captions) == 6 and set(captions) <= set(world.caption_bank())
    identity = captioner.identity
    assert identity.revision == captioner.spec.id and set(identity.params) == {"bank"}
    other = tmp_path / "other.txt"
    other.write_text("a red circle\na blue square\n")
    changed = build_backend("captioner", {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32", "captions": str(other)})
    assert changed.identity.params != identity.params
    with pytest.raises(ConfigError, match="clip_retrieval.*captions"):
        parse_backend("captioner", {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32"})


def test_only_uncached_images_reach_the_captioner_and_a_rerun_reaches_nothing(bank, tmp_path):
    backend = Counting(build_backend("captioner", {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32",
                                                   "captions": str(bank)}))
    cache = CallCache(str(tmp_path))
    cached = CachedCaptioner(backend, cache)
    first = cached.caption(images(4))
    assert (backend.calls, backend.items) == (1, 4)
    both = cached.caption(images(4) + images(2, seed=9))  # four cached, two new: one call for the two
    assert both[:4] == first and (backend.calls, backend.items) == (2, 6)
    again = CachedCaptioner(backend, CallCache(str(tmp_path), replay=True))
    assert again.caption(images(2, seed=9)) == both[4:] and backend.calls == 2
    with pytest.raises(ReplayMiss):
        again.caption(images(1, seed=77))
    assert backend.calls == 2  # replay never calls


def test_generated_images_are_cached_per_seed_and_an_undrawable_prompt_is_remembered(tmp_path):
    backend = Counting(build_backend("generator", {"kind": "world"}))
    cached = CachedGenerator(backend, CallCache(str(tmp_path)))
    drawn = cached.generate("blue square", [5, 6])
    more = cached.generate("blue square", [6, 7])
    assert backend.items == 3 and np.array_equal(np.asarray(more[0].image), np.asarray(drawn[1].image))
    assert more[0].key == drawn[1].key and CallCache(str(tmp_path)).read(f"world/{drawn[0].key.id}")
    assert cached.generate("a dog", [1, 2]) is None and cached.generate("a dog", [1, 2]) is None
    assert backend.calls == 3  # the undrawable prompt was asked once


def test_replies_are_cached_by_messages_seed_and_temperature(tmp_path):
    backend = Counting(build_backend("summarizer", {"kind": "none"}))
    cached = CachedSummarizer(backend, CallCache(str(tmp_path)))
    ask = [{"role": "user", "content": "red things"}]
    first = cached.chat(ask, temperature=0.3, seed=1)
    assert cached.chat(ask, temperature=0.3, seed=1) == first and backend.calls == 1
    cached.chat(ask, temperature=0.3, seed=2)
    cached.chat(ask, temperature=0.0, seed=1)
    cached.chat([{"role": "user", "content": "blue things"}], temperature=0.3, seed=1)
    assert backend.calls == 4


def test_the_call_budget_stops_calls_and_a_corrupt_entry_is_computed_again(tmp_path):
    backend = Counting(build_backend("generator", {"kind": "world"}))
    cached = CachedGenerator(backend, CallCache(str(tmp_path)), CallBudget(1))
    cached.generate("red circle", [1])
    with pytest.raises(BudgetExhausted):
        cached.generate("green circle", [1])
    cached.generate("red circle", [1])  # a hit costs nothing
    entries, bad = CallCache(str(tmp_path)).check()
    assert entries == 1 and bad == []
    blob = next(p for p in (tmp_path / "cache").rglob("*.bin"))
    blob.write_bytes(b"\x89PNG truncated")
    assert CallCache(str(tmp_path)).check()[1]
    fresh = CachedGenerator(backend, CallCache(str(tmp_path)))
    assert fresh.generate("red circle", [1])[0].image.size == (32, 32) and backend.calls == 2
    assert CallCache(str(tmp_path)).check() == (1, [])


def test_the_none_summariser_is_never_built_and_backends_configs_name_their_problems():
    assert build_backend("summarizer", {"kind": "none"}).identity.kind == "none"
    with pytest.raises(UnknownName, match="unknown summarizer kind 'gpt'; kinds: none, openai, transformers"):
        parse_backend("summarizer", {"kind": "gpt"})
    with pytest.raises(ConfigError, match="needs a kind"):
        parse_backend("generator", {"model": "x"})
    with pytest.raises(ConfigError, match=r"world\): colour: Extra inputs"):
        parse_backend("generator", {"kind": "world", "colour": "red"})
    assert BackendContext().device == "cpu"


def test_an_image_twice_in_a_batch_is_captioned_once_and_a_request_made_twice_at_once_is_sent_once(bank, tmp_path):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    backend = Counting(build_backend("captioner", {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32",
                                                   "captions": str(bank)}))
    pictures = images(3)
    captions = CachedCaptioner(backend, CallCache(str(tmp_path))).caption(pictures + pictures[:2])
    assert backend.items == 3 and captions[3:] == captions[:2]

    class Slow(Counting):
        def chat(self, messages, *, temperature, seed):
            with lock:
                self.calls += 1
            time.sleep(0.1)
            return "red things"

    lock = threading.Lock()
    slow = Slow(build_backend("summarizer", {"kind": "none"}))
    cached = CachedSummarizer(slow, CallCache(str(tmp_path)))
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: cached.chat([{"role": "user", "content": "x"}], temperature=0.3, seed=0),
                                range(4)))
    assert replies == ["red things"] * 4 and slow.calls == 1
