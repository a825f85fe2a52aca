"""The pixel cache's chunk source, in-process: a chunk read back from the cache is the chunk as decoded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from discover_ray.dissection.stages.decode import PIXEL_ROW_GROUP
from discover_ray.pipeline.chunks import ChunkSource, PixelCache, chunk_ids
from discover_ray.probe import ProbeSet
from discover_ray.probe.pixels import split_preprocess
from discover_ray.schema import pixel_table
from discover_ray.store import Store

TRANSFORM = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24), transforms.ToTensor(),
                                transforms.Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))])


@pytest.fixture
def probe(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(300):  # two row groups of the cache part, so a chunk reads only those it overlaps
        folder = tmp_path / "probe" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 28, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (tmp_path / "probe" / "b" / "200.png").write_bytes(b"not a png")
    return ProbeSet.from_folder(str(tmp_path / "probe"))


def chunk(start: int, stop: int) -> dict[str, np.ndarray]:
    return {"shard": np.array([0]), "chunk": np.array([0]), "start": np.array([start]), "stop": np.array([stop])}


def test_a_cached_chunk_equals_the_decoded_chunk(probe, tmp_path):
    pixel_format = split_preprocess(TRANSFORM)
    store = Store(str(tmp_path / "store"))
    dataset = store.dataset(f"pixels/probe/{pixel_format.id}", "key", "pixels")
    cache = PixelCache(store.root, dataset.relative, pixel_format, frozenset())
    decoded = ChunkSource(probe, TRANSFORM, cache, raw_shards=frozenset({0}))(chunk(0, len(probe)))
    ids = chunk_ids(decoded)
    failed = json.loads(decoded["failed"][0])
    assert len(ids) == 299 and failed[0][0] == "b/200.png" and "corrupt" in failed[0][1]
    raw = decoded["raw"][0]
    assert raw.dtype == np.uint8 and raw.shape == (299, 24, 24, 3)
    position = {im.image_id: i for i, im in enumerate(probe.images)}
    assert failed[0][2] == position["b/200.png"]
    dataset.write_part(0, pixel_table(ids, [position[i] for i in ids], raw, [tuple(f) for f in failed]),
                       row_group_size=PIXEL_ROW_GROUP, compression="none")

    reader = ChunkSource(probe, TRANSFORM, PixelCache(store.root, dataset.relative, pixel_format, frozenset({0})))
    uncached = ChunkSource(probe, TRANSFORM)  # the plain per-image transform, no cache at all
    for start, stop in ((0, len(probe)), (10, 40), (250, 290), (96, 106)):
        got, want = reader(chunk(start, stop)), uncached(chunk(start, stop))
        assert "raw" not in got and "raw" not in want
        assert got["image_ids"][0] == want["image_ids"][0] and got["failed"][0] == want["failed"][0]
        assert np.array_equal(got["pixels"], want["pixels"])  # bit for bit
    assert position["b/200.png"] == 250 and json.loads(reader(chunk(250, 290))["failed"][0]) == [["b/200.png", failed[0][1], 250]]


def test_pixel_format_ids_name_what_the_head_does():
    same = split_preprocess(transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24), transforms.ToTensor()]))
    assert split_preprocess(TRANSFORM).id == same.id  # normalisation is applied on read, not cached
    other = split_preprocess(transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()]))
    assert other.id != same.id
    hidden = split_preprocess(transforms.Compose([transforms.Lambda(lambda im: im), transforms.ToTensor()]))
    assert hidden is not None and hidden.id is None  # a lambda says nothing of what it does: never cached
    assert split_preprocess(transforms.Compose([transforms.PILToTensor()])) is None


def test_image_ids_with_any_character_survive_a_chunk(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(value: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(out, format="PNG")
        return out.getvalue()

    ids = ["line\nbreak", "tab\tand \"quotes\"", "ünï/cödé"]
    pq.write_table(pa.table({"image_id": ids, "image": [png(10), png(20), png(30)]}), tmp_path / "p.parquet")
    probe = ProbeSet.from_parquet(str(tmp_path / "p.parquet"))
    loaded = ChunkSource(probe, TRANSFORM)(chunk(0, 3))
    assert chunk_ids(loaded) == sorted(ids) and loaded["pixels"][0].shape == (3, 3, 24, 24)
