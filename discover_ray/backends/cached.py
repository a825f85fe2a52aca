"""Backends behind the call cache: every caption, LLM reply and generated image is computed once.

Each wrapper names a call by the backend's identity (kind, model, revision, result-changing parameters),
a content hash of its input and its seed (``CallKey``), asks the cache first and calls the backend only on
a miss; a call made is charged to the run's ``CallBudget``. A generated image is stored as PNG under its
own key (its seed), so an image can be shown later by its key alone; a prompt the generator cannot draw
is stored as an empty entry, so it is not asked again either.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from discover_ray.backends.base import BackendError, BackendIdentity, Captioner, Generator, Summarizer
from discover_ray.backends.cache import CallCache, CallKey, content_hash
from discover_ray.backends.limits import CallBudget

__all__ = ["CachedCaptioner", "CachedGenerator", "CachedSummarizer", "GeneratedImage", "image_hash", "png_bytes"]


def image_hash(image: Image.Image) -> str:
    """A content hash of an image's pixels (mode and size included), independent of any encoding."""
    return content_hash(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode() + image.tobytes())


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class _Cached:
    def __init__(self, backend: Captioner | Summarizer | Generator, cache: CallCache, budget: CallBudget | None = None):
        self.backend, self.cache, self.budget = backend, cache, budget
        self.identity: BackendIdentity = backend.identity

    def key(self, inputs: str, seed: int | None = None, **params: object) -> CallKey:
        return CallKey(self.identity.kind, self.identity.model, self.identity.revision, inputs,
                       {**self.identity.params, **params}, seed)

    def _spend(self) -> None:
        if self.budget is not None:
            self.budget.spend()


class CachedCaptioner(_Cached):
    backend: Captioner

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image; only the images without a cached caption go to the backend, in one batch."""
        keys = [self.key(image_hash(im)) for im in images]
        found: dict[int, str] = {}
        for i, key in enumerate(keys):
            data = self.cache.get(key)
            if data is not None:
                found[i] = data.decode("utf-8")
        missing = [i for i in range(len(images)) if i not in found]
        first = {}  # an image twice in one batch (a crop two units share) is captioned once
        for i in missing:
            first.setdefault(keys[i].id, i)
        asked = list(first.values())
        if asked:
            if self.cache.replay:
                self.cache.refuse(keys[asked[0]])
            self._spend()
            made = self.backend.caption([images[i] for i in asked])
            if len(made) != len(asked) or not all(isinstance(c, str) for c in made):
                raise BackendError(f"captioner {self.identity.kind} returned {len(made)} captions for {len(asked)} images")
            for i, text in zip(asked, made, strict=True):
                self.cache.put(keys[i], text.encode("utf-8"))
                found[i] = text
            for i in missing:
                found[i] = found[first[keys[i].id]]
        self.cache.count(hits=len(images) - len(asked), misses=len(asked))
        return [found[i] for i in range(len(images))]


class CachedSummarizer(_Cached):
    backend: Summarizer

    def __init__(self, backend: Summarizer, cache: CallCache, budget: CallBudget | None = None):
        super().__init__(backend, cache, budget)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def chat(self, messages: Sequence[dict[str, str]], *, temperature: float, seed: int) -> str:
        """The reply (cached); the same request made by two threads at once reaches the backend once."""
        inputs = content_hash(json.dumps(list(messages), sort_keys=True, ensure_ascii=False))
        key = self.key(inputs, seed, temperature=temperature)
        with self._guard:
            lock = self._locks.setdefault(key.id, threading.Lock())
        with lock:
            return self._chat(key, messages, temperature, seed)

    def _chat(self, key: CallKey, messages: Sequence[dict[str, str]], temperature: float, seed: int) -> str:
        def call() -> str:
            self._spend()
            reply = self.backend.chat(messages, temperature=temperature, seed=seed)
            if not isinstance(reply, str):
                raise BackendError(f"summariser {self.identity.kind} returned {type(reply).__name__}, not text")
            return reply

        return self.cache.call_text(key, call)


@dataclass(frozen=True)
class GeneratedImage:
    """A generated image and the cache key it is stored under (how the report finds it again)."""

    key: CallKey
    image: Image.Image


class CachedGenerator(_Cached):
    backend: Generator

    def generate(self, concept: str, seeds: Sequence[int]) -> list[GeneratedImage] | None:
        """One image per seed of ``concept`` (None: the backend cannot draw it); cached per seed."""
        inputs = content_hash(concept)
        keys = [self.key(inputs, int(s)) for s in seeds]
        found: dict[int, bytes] = {}
        for i, key in enumerate(keys):
            data = self.cache.get(key)
            if data is not None:
                found[i] = data
        missing = [i for i in range(len(keys)) if i not in found]
        if missing:
            if self.cache.replay:
                self.cache.refuse(keys[missing[0]])
            self._spend()
            made = self.backend.generate(concept, [int(seeds[i]) for i in missing])
            if made is not None and len(made) != len(missing):
                raise BackendError(f"generator {self.identity.kind} drew {len(made)} images for {len(missing)} seeds")
            for j, i in enumerate(missing):
                data = b"" if made is None else png_bytes(made[j].convert("RGB"))
                self.cache.put(keys[i], data)
                found[i] = data
        self.cache.count(hits=len(keys) - len(missing), misses=len(missing))
        if any(not found[i] for i in range(len(keys))):
            return None
        return [GeneratedImage(keys[i], _open(found[i])) for i in range(len(keys))]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")
