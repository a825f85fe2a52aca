from __future__ import annotations

import pyarrow as pa
import pytest

from discover_ray.errors import DatasetError
from discover_ray.schema import with_failed
from discover_ray.store import Store, config_hash, safe_segment


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "runs"))
    return Store(request.getfixturevalue("s3_root"))


def table(start: int, rows: int) -> pa.Table:
    return pa.table({"image_id": [f"img{i:04d}" for i in range(start, start + rows)],
                     "u00000": [float(i) for i in range(start, start + rows)]})


def test_a_dataset_path_carries_its_key(store):
    data = store.dataset("activations/ck/pr/layer1.0.conv2", "k1", "activations")
    assert data.relative == "activations/ck/pr/layer1.0.conv2/k1"
    for bad in ("../escape", "..", "new\nline"):
        with pytest.raises(DatasetError, match="cannot be a path segment"):
            store.dataset(f"activations/ck/pr/{bad}", "k1", "activations")
    with pytest.raises(DatasetError):
        safe_segment("../x")


def test_parts_commit_checks_parts_and_rows_and_read(store):
    data = store.dataset("activations/ck/pr/fc", "k1", "activations")
    assert not data.is_committed() and data.parts() == []
    data.write_part(1, with_failed(table(4, 2), [("img0006", "corrupt: x", 6)]))  # 2 rows + 1 failed image
    with pytest.raises(DatasetError, match="parts \\[0\\] are missing"):
        data.commit({0: 4, 1: 3})
    data.write_part(0, table(0, 3))
    with pytest.raises(DatasetError, match="part 0 holds 3 rows and 0 failed images, 4 were expected"):
        data.commit({0: 4, 1: 3})
    with pytest.raises(DatasetError, match="not a complete dataset"):
        data.read()
    data.write_part(0, table(0, 4))  # an interrupted writer's part is rewritten whole
    marker = data.commit({0: 4, 1: 3}, units=1)
    assert marker["rows"] == 6 and marker["key"] == "k1" and marker["units"] == 1 and data.is_committed()
    assert data.read()["image_id"].to_pylist() == [f"img{i:04d}" for i in range(6)]
    assert data.failed() == [("img0006", "corrupt: x", 6)]


def test_a_committed_dataset_is_never_written_again(store):
    data = store.dataset("labels/ck/pr/fc/m__c__e", "k1", "labels")
    data.write_part(0, table(0, 4))
    data.commit({0: 4})
    assert data.write_part(0, table(0, 5)) is False and data.read().num_rows == 4
    other = store.dataset("labels/ck/pr/fc/m__c__e", "k2", "labels")  # other settings: another folder
    other.write_part(0, table(10, 2))
    other.commit({0: 2})
    assert data.read().num_rows == 4 and other.read().num_rows == 2


def test_two_interleaved_writers_of_one_key_commit_one_whole_dataset(store):
    first = store.dataset("activations/ck/pr/fc", "k1", "activations")
    second = store.dataset("activations/ck/pr/fc", "k1", "activations")  # another job of the same content
    assert first.write_part(0, table(0, 4))
    assert second.write_part(0, table(0, 4)) and second.write_part(1, table(4, 4))
    second.commit({0: 4, 1: 4})
    assert first.write_part(1, table(4, 4)) is False  # finished meanwhile: nothing rewritten
    assert first.commit({0: 4, 1: 4})["rows"] == 8 and first.read().num_rows == 8


def test_readers_check_the_key_a_record_names(store):
    data = store.dataset("labels/ck/pr/fc/m__c__e", "k1", "labels")
    data.write_part(0, table(0, 4))
    with pytest.raises(DatasetError, match="not a complete dataset"):
        store.committed(data.relative)
    data.commit({0: 4})
    assert store.committed(data.relative).read().num_rows == 4
    with pytest.raises(DatasetError, match="not 'k9'"):
        store.committed(data.relative, key="k9")
    (part,) = [p for p in store.files(data.relative) if p.endswith("part-00000.parquet")]
    store.fs.rm(store.path(part))  # a part lost after the commit: the dataset no longer counts as complete
    assert not data.is_committed()


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_local_writes_leave_no_temporary_files(tmp_path):
    store = Store(str(tmp_path / "runs"))
    store.write_json("runs/abc/record.json", {"status": "ok"})
    store.write_json("runs/abc/record.json", {"status": "again"})
    assert store.read_json("runs/abc/record.json") == {"status": "again"}
    assert [p.name for p in (tmp_path / "runs/runs/abc").iterdir()] == ["record.json"]
