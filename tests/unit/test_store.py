from __future__ import annotations

import pyarrow as pa
import pytest

from discover_ray.store import Store, config_hash


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "runs"))
    return Store(request.getfixturevalue("s3_root"))


def table(start: int, rows: int) -> pa.Table:
    return pa.table(
        {
            "image_id": [f"img{i:04d}" for i in range(start, start + rows)],
            "u00000": [float(i) for i in range(start, start + rows)],
        }
    )


def test_layout_follows_the_architecture(store):
    assert store.activations("ck", "pr", "layer1.0.conv2").relative == "activations/ck/pr/layer1.0.conv2"
    assert store.labels("ck", "pr", "fc", "soft_wpmi", "cs", "enc").relative == "labels/ck/pr/fc/soft_wpmi__cs__enc"
    assert store.image_embeddings("enc", "pr").relative == "embeddings/enc/images/pr"
    assert store.concept_embeddings("enc", "cs").relative == "embeddings/enc/concepts/cs"
    with pytest.raises(ValueError, match="cannot be a path segment"):
        store.activations("ck", "pr", "../escape")


def test_parts_commit_and_read(store):
    data = store.activations("ck", "pr", "fc")
    assert not data.is_complete() and data.parts() == []
    data.write_part(1, table(4, 3))
    data.write_part(0, table(0, 4))
    assert data.parts() == [0, 1] and not data.is_complete()
    with pytest.raises(FileNotFoundError, match="not a complete dataset"):
        data.read()
    cfg = config_hash({"layer": "fc", "pool": "mean"})
    data.commit(cfg, rows=7, schema=table(0, 1).schema, versions={"torch": "x"})
    assert data.is_complete(cfg) and not data.is_complete(config_hash({"layer": "fc", "pool": "max"}))
    assert data.read()["image_id"].to_pylist() == [f"img{i:04d}" for i in range(7)]
    assert data.marker()["rows"] == 7 and "image_id: string" in data.marker()["schema"]


def test_rewriting_a_part_replaces_it_and_reopens_the_dataset(store):
    data = store.activations("ck", "pr", "fc")
    data.write_part(0, table(0, 4))
    data.commit("h", rows=4)
    data.write_part(0, table(0, 4))  # a re-run of the same shard
    assert not data.is_complete()  # writing reopens it until the next commit
    data.commit("h", rows=4)
    assert data.read().num_rows == 4  # replaced, never duplicated
    assert data.missing_parts(range(3)) == [1, 2]


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_local_writes_leave_no_temporary_files(tmp_path):
    store = Store(str(tmp_path / "runs"))
    store.write_json("runs/abc/record.json", {"status": "ok"})
    store.write_json("runs/abc/record.json", {"status": "again"})
    assert store.read_json("runs/abc/record.json") == {"status": "again"}
    assert [p.name for p in (tmp_path / "runs/runs/abc").iterdir()] == ["record.json"]
