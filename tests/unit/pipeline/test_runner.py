"""The runner without a cluster: skip what is committed, resume only missing parts, survive a failure midway,
group model stages that load images the same way into one pass, and compute a cache only when it is read."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from torchvision import transforms

from discover_ray.config import ProbeConfig
from discover_ray.errors import DatasetError
from discover_ray.pipeline import (
    CacheRef,
    Event,
    Head,
    LocalExecutor,
    ModelStage,
    Output,
    ProbeContext,
    Runner,
    ShardOutput,
    TaskStage,
    stage_key,
)
from discover_ray.pipeline.chunks import ProbeHandle
from discover_ray.probe.pixels import split_preprocess
from discover_ray.schema import pixel_table
from discover_ray.store import Store

FAIL_ON: set[int] = set()  # parts whose task raises (a worker that crashes)


def square(payload: int, task: int) -> list[int]:
    if task in FAIL_ON:
        raise RuntimeError(f"worker lost while computing part {task}")
    return [task * payload + i for i in range(3)]


class Squares(TaskStage):
    name = "SQUARES"
    compute = staticmethod(square)

    def __init__(self, store: Store, factor: int):
        self.factor = factor
        key = stage_key("SQUARES", "scores", 1, factor=factor)
        super().__init__(f"factor {factor}", [Output("values", store.dataset("squares", key, "scores"), {0: 3, 1: 3, 2: 3})])

    def load(self) -> int:
        return self.factor

    def tasks(self, part: int, payload: int) -> list[int]:
        return [part]

    def assemble(self, part: int, results: list[Any], payload: int) -> dict[str, pa.Table]:
        return {"values": pa.table({"value": results[0]})}


class CountingExecutor(LocalExecutor):
    def __init__(self) -> None:
        super().__init__(threads=1)
        self.tasks = 0
        self.passes: list[list[int]] = []

    def run_tasks(self, fn, payload, payload_key, tasks, resident=None):
        self.tasks += len(tasks)
        return super().run_tasks(fn, payload, payload_key, tasks, resident)

    def run_pass(self, model_pass, assembler, on_images):
        self.passes.append(list(model_pass.shards))
        yield from super().run_pass(model_pass, assembler, on_images)


def run(stages, executor, probe=None) -> list[Event]:
    events: list[Event] = []
    Runner(executor, probe, events.append).run(stages)
    return events


def test_a_task_stage_is_done_once_skipped_after_and_resumes_only_a_missing_part(tmp_path):
    store = Store(str(tmp_path))
    executor = CountingExecutor()
    (first,) = run([Squares(store, 10)], executor)
    assert first.status == "done" and first.counts["parts"] == 3 and executor.tasks == 3
    stage = Squares(store, 10)
    assert stage.outputs[0].dataset.read()["value"].to_pylist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]

    (again,) = run([stage], executor)
    assert again.status == "skipped" and executor.tasks == 3  # nothing computed

    (tmp_path / stage.outputs[0].path / "part-00001.parquet").unlink()
    (resumed,) = run([Squares(store, 10)], executor)
    assert resumed.status == "done" and resumed.counts["parts"] == 1 and executor.tasks == 4
    (other,) = run([Squares(store, 2)], executor)  # other parameters: another dataset, the first untouched
    assert other.status == "done" and other.outputs != first.outputs
    assert Squares(store, 10).outputs[0].dataset.read()["value"].to_pylist()[3:6] == [10, 11, 12]


def test_a_failure_midway_keeps_the_finished_parts_and_the_rerun_does_the_rest(tmp_path):
    store = Store(str(tmp_path))
    executor = CountingExecutor()
    FAIL_ON.add(2)
    try:
        with pytest.raises(RuntimeError, match="worker lost"):
            run([Squares(store, 10)], executor)
    finally:
        FAIL_ON.clear()
    dataset = Squares(store, 10).outputs[0].dataset
    assert dataset.parts() == [0, 1] and dataset.marker() is None  # nothing half-done counts as done
    (resumed,) = run([Squares(store, 10)], executor)
    assert resumed.counts["parts"] == 1 and executor.tasks == 4 and dataset.is_committed()


def test_a_stage_whose_input_is_not_complete_does_not_run(tmp_path):
    store = Store(str(tmp_path))
    stage = Squares(store, 3)
    stage.inputs = ["activations/never/written"]
    with pytest.raises(DatasetError, match="reads .*activations/never/written, which is not complete"):
        run([stage], CountingExecutor())
    assert stage.outputs[0].dataset.parts() == []


# -- model stages -------------------------------------------------------------------------------------
TRANSFORM = transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor()])
FORMAT = split_preprocess(TRANSFORM)


class MeanPixel:
    """A 'model': each image's mean pixel value."""

    def __init__(self, scale: float, threads: int):
        self.scale = scale

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = np.asarray(batch["pixels"][0])
        return {"mean": (pixels.reshape(len(pixels), -1).mean(axis=1) * self.scale)[None]} if len(pixels) else {}


class Means(ModelStage):
    name = "MEANS"

    def __init__(self, store: Store, images: int, scale: float, cache: CacheRef | None):
        self.scale, self.reads = scale, cache
        dataset = store.dataset("means", stage_key("MEANS", "scores", 1, scale=scale), "scores")
        super().__init__(f"x{scale}", [Output("means", dataset, {0: 4, 1: images - 4})], loader="pixels", batch_size=3)

    def transform(self):
        return TRANSFORM

    def cache(self) -> CacheRef | None:
        return self.reads

    def head(self, outputs, shards) -> Head:
        return Head("mean", MeanPixel, {"scale": self.scale}, shards)

    def write(self, outputs, shard: ShardOutput, head: dict[str, np.ndarray]) -> None:
        outputs[0].dataset.write_part(shard.shard, pa.table({"image_id": shard.image_ids, "mean": head["mean"]}))


class Pixels(ModelStage):
    """The cache: the decoded pixels of each shard."""

    name = "PIXELS"
    optional: ClassVar[bool] = True
    wants_raw: ClassVar[bool] = True

    def __init__(self, store: Store, images: int):
        self.dataset = store.dataset("pixels", "k", "pixels")
        super().__init__("cache", [Output("pixels", self.dataset, {0: 4, 1: images - 4})], loader="pixels", batch_size=None)

    def transform(self):
        return TRANSFORM

    def cache(self) -> CacheRef:
        return CacheRef(self.dataset, FORMAT)

    def write(self, outputs, shard: ShardOutput, head) -> None:
        first = shard.shard * 4
        self.dataset.write_part(shard.shard, pixel_table(shard.image_ids, list(range(first, first + len(shard.image_ids))),
                                                          shard.raw, shard.failed))


@pytest.fixture
def probe(tmp_path) -> ProbeContext:
    rng = np.random.default_rng(0)
    folder = tmp_path / "probe" / "a"
    folder.mkdir(parents=True)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    config = ProbeConfig(source=str(tmp_path / "probe"), shard_size=4)
    return ProbeContext(ProbeHandle.of(config, config.open()), 7, 4, 0.0, str(tmp_path / "store"))


def test_model_stages_of_one_loader_share_a_pass_and_the_cache_is_made_only_while_read(probe, tmp_path):
    store = Store(str(tmp_path / "store"))
    executor = CountingExecutor()
    cache = Pixels(store, 7)
    events = run([cache, Means(store, 7, 1.0, cache.cache()), Means(store, 7, 2.0, cache.cache())], executor, probe)
    assert [e.stage for e in events] == ["PIXELS", "MEANS", "MEANS"] and executor.passes == [[0, 1]]  # one pass
    assert events[1].counts["pass"] == ["PIXELS", "MEANS", "MEANS"] and events[1].counts["pixels"]["shards_decoded"] == 2
    one = Means(store, 7, 1.0, None).outputs[0].dataset.read()["mean"].to_numpy()
    two = Means(store, 7, 2.0, None).outputs[0].dataset.read()["mean"].to_numpy()
    assert np.allclose(two, 2 * one) and len(one) == 7

    (tmp_path / "store" / cache.outputs[0].path / "part-00001.parquet").unlink()  # the cache loses a part:
    events = run([Pixels(store, 7), Means(store, 7, 1.0, cache.cache())], executor, probe)
    assert [e.status for e in events] == ["skipped"] and executor.passes == [[0, 1]]  # nobody reads it: not redone

    (tmp_path / "store" / Means(store, 7, 1.0, None).outputs[0].path / "part-00000.parquet").unlink()
    events = run([Pixels(store, 7), Means(store, 7, 1.0, cache.cache())], executor, probe)
    assert executor.passes[-1] == [0, 1]  # a reader of shard 0 runs again, so the cache gets its shard 1 back
    assert events[0].stage == "PIXELS" and events[0].counts["shards"] == 1
    assert events[1].counts["shards"] == 1 and events[1].counts["pixels"] == {
        "cache": cache.outputs[0].path, "shards_read": 1, "shards_decoded": 0}
    again = Means(store, 7, 1.0, None).outputs[0].dataset.read()["mean"].to_numpy()
    assert np.array_equal(again, one)  # read from the cache or decoded: the same values
