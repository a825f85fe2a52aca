"""Content-addressed storage of backend calls: a caption, an LLM reply or a generated image is computed once.

A call is named by everything that decides its result (``CallKey``): the backend kind, its model id and
revision, a content hash of its inputs (image bytes, prompt text), its parameters and its seed. The result
is kept in the store at ``cache/{backend}/{id[:2]}/{id}.bin`` with a ``.json`` marker beside it (the key,
the result's sha256 and size) written after it: an entry without its marker, or whose bytes do not match
it, is no entry, so an interrupted or corrupted write is computed again, never read. A re-run of the same
work makes no backend call; with ``replay=True`` a missing entry is an error instead of a call.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from discover_ray.errors import DiscoverError
from discover_ray.store import Store, config_hash

__all__ = ["CallCache", "CallKey", "ReplayMiss", "content_hash"]


class ReplayMiss(DiscoverError, LookupError):
    """Replay was asked for, but a call's result is not in the cache."""


def content_hash(data: bytes | str) -> str:
    """sha256 of a call's input (text as UTF-8)."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class CallKey:
    """Everything that decides a backend call's result."""

    backend: str  # the kind: blip, clip_retrieval, openai, transformers, diffusers, world, ...
    model: str
    revision: str | None
    inputs: str  # content_hash of the inputs
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def id(self) -> str:
        return config_hash({"backend": self.backend, "model": self.model, "revision": self.revision,
                            "inputs": self.inputs, "params": self.params, "seed": self.seed})

    def describe(self) -> str:
        return f"{self.backend} {self.model}" + (f"@{self.revision}" if self.revision else "")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # calls made
    repaired: int = 0  # entries found incomplete or corrupt, and computed again


class CallCache:
    """Backend results in a store, by ``CallKey``; safe to use from several threads of one process."""

    def __init__(self, store: Store | str, replay: bool = False, prefix: str = "cache"):
        self.store, self.replay, self.prefix = Store.of(store), replay, prefix
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def _paths(self, key: CallKey) -> tuple[str, str]:
        base = f"{self.prefix}/{key.backend}/{key.id[:2]}/{key.id}"
        return base + ".bin", base + ".json"

    def get(self, key: CallKey) -> bytes | None:
        """The stored result, or None when there is no complete, intact entry."""
        return self._read(*self._paths(key))

    def _read(self, data_path: str, marker_path: str) -> bytes | None:
        if not self.store.exists(marker_path):
            return None
        try:
            marker = self.store.read_json(marker_path)
            with self.store.fs.open(self.store.path(data_path), "rb") as handle:
                data = handle.read()
        except (OSError, ValueError):
            return None
        if marker.get("sha256") != hashlib.sha256(data).hexdigest() or marker.get("size") != len(data):
            return None
        return data

    def read(self, ref: str) -> bytes | None:
        """An entry by its reference ``"{backend}/{id}"`` (how tables name generated images), if intact."""
        backend, _, call = ref.partition("/")
        base = f"{self.prefix}/{backend}/{call[:2]}/{call}"
        return self._read(base + ".bin", base + ".json")

    def check(self) -> tuple[int, list[str]]:
        """(entries, references of those that are incomplete or corrupt): a store-wide integrity check."""
        markers = [p for p in self.store.files(self.prefix) if p.endswith(".json")]
        bad = []
        for marker in markers:
            if self._read(marker[: -len(".json")] + ".bin", marker) is None:
                backend, call = marker.split("/")[-3], marker.rsplit("/", 1)[1][: -len(".json")]
                bad.append(f"{backend}/{call}")
        return len(markers), bad

    def put(self, key: CallKey, data: bytes) -> None:
        data_path, marker_path = self._paths(key)
        self.store.write_bytes(data_path, data)
        self.store.write_json(marker_path, {"key": {"backend": key.backend, "model": key.model,
                                                    "revision": key.revision, "inputs": key.inputs,
                                                    "params": key.params, "seed": key.seed},
                                            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})

    def count(self, hits: int = 0, misses: int = 0) -> None:
        """Counts calls answered from the cache and calls made by a caller that reads and writes entries itself."""
        with self._lock:
            self.stats.hits += hits
            self.stats.misses += misses

    def refuse(self, key: CallKey) -> None:
        """Raise ``ReplayMiss`` for a call replay cannot answer."""
        raise ReplayMiss(f"replay: no cached result for {key.describe()} (call {key.id}); run once without "
                         "replay to fill the cache")

    def call(self, key: CallKey, compute: Callable[[], bytes]) -> bytes:
        """The cached result of ``key``, or ``compute()``'s, stored before it is returned."""
        found = self.get(key)
        if found is not None:
            with self._lock:
                self.stats.hits += 1
            return found
        if self.replay:
            self.refuse(key)
        repaired = self.store.exists(self._paths(key)[1])
        data = compute()
        if not isinstance(data, bytes):
            raise TypeError(f"a backend call must return bytes, {key.describe()} returned {type(data).__name__}")
        self.put(key, data)
        with self._lock:
            self.stats.misses += 1
            self.stats.repaired += int(repaired)
        return data

    def call_text(self, key: CallKey, compute: Callable[[], str]) -> str:
        """``call`` for text results (captions, LLM replies)."""
        return self.call(key, lambda: compute().encode("utf-8")).decode("utf-8")
