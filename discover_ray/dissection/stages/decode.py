"""DECODE: the probe images decoded once per preprocessing geometry, as uint8 pixels in the store.

A model's preprocessing splits into a geometric head (resize, crop: what decoding costs) and a batch
tail (ToTensor, Normalize; ``probe.pixels``). The head's output is stored per shard as
``pixels/{probe}/{format}/{key}/part-NNNNN.parquet`` and every RECORD whose head is the same reads it
instead of decoding: another checkpoint, a CVN twin, a re-run. It is a cache: computed only while a stage
that reads it has work, in the same pass (the first reader's chunks are decoded once and kept).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from discover_ray.pipeline.stage import CacheRef, ModelStage, Output, ShardOutput, shard_lengths, stage_key
from discover_ray.probe import ProbeSet
from discover_ray.probe.pixels import PixelFormat
from discover_ray.schema import VERSIONS, pixel_table
from discover_ray.store import Store

__all__ = ["PIXEL_ROW_GROUP", "DecodeStage"]

PIXEL_ROW_GROUP = 256


class DecodeStage(ModelStage):
    name = "DECODE"
    optional = True
    wants_raw = True

    def __init__(self, store: Store, probe: ProbeSet, probe_id: str, shard_size: int, pixel_format: PixelFormat,
                 preprocess: Any):
        assert pixel_format.id is not None
        self.format, self.preprocess, self.probe = pixel_format, preprocess, probe
        expected = shard_lengths(len(probe), shard_size)
        self.first = {s: s * shard_size for s in expected}
        key = stage_key("DECODE", "pixels", VERSIONS["pixels"], probe=probe_id, pixels=pixel_format.id, shard=shard_size)
        self.dataset = store.dataset(f"pixels/{probe_id}/{pixel_format.id}", key, "pixels")
        super().__init__(f"pixels {pixel_format.id}", [Output("pixels", self.dataset, expected)],
                         loader=f"pixels:{pixel_format.id}", batch_size=None)
        self.shard_size = shard_size

    def transform(self) -> Any:
        return self.preprocess

    def cache(self) -> CacheRef:
        return CacheRef(self.dataset, self.format)

    def write(self, outputs, shard: ShardOutput, head: dict[str, np.ndarray]) -> None:
        raw = shard.raw if shard.raw is not None else np.zeros((0, 1, 1, 3), np.uint8)
        first = self.first[shard.shard]
        position = {im.image_id: first + i for i, im in enumerate(self.probe.images[first : first + self.shard_size])}
        table = pixel_table(shard.image_ids, [position[i] for i in shard.image_ids], raw, shard.failed)
        self.dataset.write_part(shard.shard, table, row_group_size=PIXEL_ROW_GROUP, compression="none")

    def marker(self, output: Output) -> dict[str, Any]:
        return {"head": [repr(step) for step in self.format.head], "failed": [list(f) for f in self.dataset.failed()]}
