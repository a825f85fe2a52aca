"""The backend call cache: one call per key, replay without calls, incomplete or corrupt entries recomputed."""

from __future__ import annotations

import pytest

from discover_ray.backends import CallCache, CallKey, ReplayMiss
from discover_ray.backends.cache import content_hash
from discover_ray.store import Store


def _key(**changes) -> CallKey:
    base = {"backend": "openai", "model": "tiny-chat", "revision": None, "inputs": content_hash("captions"),
            "params": {"temperature": 0.3}, "seed": 0}
    return CallKey(**{**base, **changes})


def test_a_second_identical_call_reads_the_cache(tmp_path):
    cache = CallCache(tmp_path)
    calls = []
    for _ in range(3):
        assert cache.call_text(_key(), lambda: calls.append(1) or "dog, pet") == "dog, pet"
    assert len(calls) == 1 and (cache.stats.hits, cache.stats.misses) == (2, 1)
    assert CallCache(tmp_path).call_text(_key(), lambda: pytest.fail("called again")) == "dog, pet"


def test_everything_that_decides_the_result_is_in_the_key(tmp_path):
    cache = CallCache(tmp_path)
    keys = [_key(), _key(seed=1), _key(params={"temperature": 0.0}), _key(revision="abc"), _key(model="other"),
            _key(inputs=content_hash(b"\x89PNG")), _key(backend="transformers")]
    assert len({k.id for k in keys}) == len(keys)
    for i, key in enumerate(keys):
        cache.call(key, lambda i=i: bytes([i]))
    assert [cache.get(k) for k in keys] == [bytes([i]) for i in range(len(keys))]


def test_replay_fails_instead_of_calling(tmp_path):
    CallCache(tmp_path).call_text(_key(), lambda: "cached")
    replay = CallCache(tmp_path, replay=True)
    assert replay.call_text(_key(), lambda: pytest.fail("called")) == "cached"
    with pytest.raises(ReplayMiss, match="replay: no cached result for openai tiny-chat"):
        replay.call_text(_key(seed=5), lambda: "never")


def test_a_corrupt_or_half_written_entry_is_computed_again(tmp_path):
    store = Store(str(tmp_path))
    cache = CallCache(store)
    key = _key()
    cache.call(key, lambda: b"good bytes")
    data_path = f"cache/openai/{key.id[:2]}/{key.id}.bin"
    store.write_bytes(data_path, b"bad")  # corrupted after the fact
    assert cache.get(key) is None
    assert cache.call(key, lambda: b"good bytes") == b"good bytes" and cache.stats.repaired == 1
    other = _key(seed=9)
    store.write_bytes(f"cache/openai/{other.id[:2]}/{other.id}.bin", b"no marker yet")  # interrupted write
    assert cache.get(other) is None and cache.call(other, lambda: b"fresh") == b"fresh"


def test_the_cache_lives_in_any_store(s3_server):
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir("cache-bucket")
    cache = CallCache(Store("s3://cache-bucket/runs", client_kwargs={"endpoint_url": s3_server}))
    assert cache.call(_key(backend="world"), lambda: b"png") == b"png"
    assert cache.call(_key(backend="world"), lambda: pytest.fail("called")) == b"png"
