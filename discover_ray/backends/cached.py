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
from collections.abc import Callable, Sequence
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

    def _batch(self, keys: Sequence[CallKey], compute: Callable[[list[int]], list[bytes]]) -> list[bytes]:
        """Every key's result: the cached ones read, the others (each distinct key once) computed in ONE backend
        call, ``compute(positions)``, charged once to the budget and stored before they are returned."""
        found: dict[int, bytes] = {}
        for i, key in enumerate(keys):
            data = self.cache.get(key)
            if data is not None:
                found[i] = data
        first: dict[str, int] = {}  # a key twice in one batch (a crop two units share) is computed once
        for i in range(len(keys)):
            if i not in found:
                first.setdefault(keys[i].id, i)
        asked = list(first.values())
        if asked:
            if self.cache.replay:
                self.cache.refuse(keys[asked[0]])
            self._spend()
            made = compute(asked)
            if len(made) != len(asked):
                raise BackendError(f"{self.backend.role} {self.identity.kind} gave {len(made)} results for {len(asked)} inputs")
            for i, data in zip(asked, made, strict=True):
                self.cache.put(keys[i], data)
                found[i] = data
        self.cache.count(hits=len(keys) - len(asked), misses=len(asked))
        return [found[i] if i in found else found[first[keys[i].id]] for i in range(len(keys))]


class CachedCaptioner(_Cached):
    backend: Captioner

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image; only the images without a cached caption go to the backend, in one batch."""

        def compute(asked: list[int]) -> list[bytes]:
            made = self.backend.caption([images[i] for i in asked])
            if not all(isinstance(c, str) for c in made):
                raise BackendError(f"captioner {self.identity.kind} returned something other than text")
            return [c.encode("utf-8") for c in made]

        return [data.decode("utf-8") for data in self._batch([self.key(image_hash(im)) for im in images], compute)]


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
        keys = [self.key(content_hash(concept), int(s)) for s in seeds]

        def compute(asked: list[int]) -> list[bytes]:
            made = self.backend.generate(concept, [int(seeds[i]) for i in asked])
            if made is None:  # not drawable: remembered as empty entries, so it is not asked again
                return [b""] * len(asked)
            return [png_bytes(image.convert("RGB")) for image in made]

        found = self._batch(keys, compute)
        if not all(found):
            return None
        return [GeneratedImage(key, _open(data)) for key, data in zip(keys, found, strict=True)]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")
