"""A new stage in one file, with no edit elsewhere, through the runner with both executors.

``UNIT_STATS`` reads the activations a dissection recorded and writes, per shard, each unit's mean, standard
deviation and maximum (a ``scores`` table): its key is the activations' key, its parts the shards.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from discover_ray import dissect, load_config
from discover_ray.pipeline import Event, LocalExecutor, Output, Runner, TaskStage, stage_key
from discover_ray.schema import VERSIONS, read_activations, score_table
from discover_ray.store import Dataset, Store
from tests.ray_local.conftest import tiny_config


def shard_stats(payload: dict[int, np.ndarray], part: int) -> dict[str, np.ndarray]:
    values = payload[part]
    return {"mean": values.mean(axis=0), "std": values.std(axis=0), "max": values.max(axis=0)}


class UnitStats(TaskStage):
    name = "UNIT_STATS"
    compute = staticmethod(shard_stats)

    def __init__(self, store: Store, activations: Dataset):
        self.activations = activations
        parts = activations.marker()["parts"]
        key = stage_key("UNIT_STATS", "scores", VERSIONS["scores"], activations=activations.key)
        dataset = store.dataset(f"unit_stats/{activations.key}", key, "scores")
        super().__init__(activations.prefix, [Output("stats", dataset, {p: None for p in parts})], [activations.relative])

    def load(self) -> dict[int, np.ndarray]:
        return {p: read_activations(self.activations.read_part(p)).values for p in self.activations.marker()["parts"]}

    def tasks(self, part: int, payload: Any) -> list[int]:
        return [part]

    def assemble(self, part: int, results: list[Any], payload: Any) -> dict[str, pa.Table]:
        units = read_activations(self.activations.read_part(part)).units
        stats = results[0]
        return {"stats": pa.concat_tables([score_table(units, metric, stats[metric]) for metric in ("mean", "std", "max")])}


@pytest.mark.usefixtures("ray_cluster")
def test_a_stage_added_in_one_file_runs_through_both_executors(world_folder, tmp_path):
    from discover_ray.on_ray.executor import RayExecutor

    raw = tiny_config(world_folder, tmp_path / "runs", concepts=[{"kind": "labels"}])
    result = dissect(load_config(raw), executor="local", console=Console(quiet=True))
    store = Store(str(tmp_path / "runs"))
    relu2 = store.committed(result.record.models["tiny_cnn"].layers["relu2"])
    tables = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor(load_config(raw).ray))):
        events: list[Event] = []
        stage = UnitStats(store, relu2)
        Runner(executor, None, events.append).run([stage])
        assert [(e.stage, e.status, e.counts["parts"]) for e in events] == [("UNIT_STATS", "done", 5)]
        Runner(executor, None, events.append).run([UnitStats(store, relu2)])
        assert events[-1].status == "skipped"
        tables[name] = stage.outputs[0].dataset.read()
        shutil.rmtree(tmp_path / "runs" / stage.outputs[0].path)  # the other executor computes it again
    assert tables["local"].equals(tables["ray"]) and tables["ray"].num_rows == 5 * 3 * 32
    shard0 = read_activations(relu2.read_part(0)).values
    first = tables["ray"].slice(0, 32)
    assert np.allclose(first["value"].to_numpy(), shard0.mean(axis=0))  # part 0's means are shard 0's
