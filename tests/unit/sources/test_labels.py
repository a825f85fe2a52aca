"""Label concepts from attribute columns: one concept per value, lists of values, names that must not clash."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from discover_ray import world
from discover_ray.config import load_config
from discover_ray.errors import ConfigError
from discover_ray.sources.labels import attribute_scores


def test_each_value_is_a_concept_and_a_list_holds_several():
    names, scores = attribute_scores(["wood", ["metal", "wood"], None], "material", "{value} texture")
    assert names == ["metal texture", "wood texture"]
    assert scores.tolist() == [[0, 1], [1, 1], [0, 0]]


def _prepare(config):
    from discover_ray.dissection.identity import prepare_sources
    from discover_ray.store import Store

    probe = config.probe.open()
    sources, _ = prepare_sources(config, Store(config.store), probe, [])
    return probe, sources


def test_world_families_become_the_worlds_concept_names(tmp_path):
    data = world.generate(40, seed=1)
    path = world.write_parquet(tmp_path / "probe.parquet", data)
    columns = {f: "{value} background" if f == "background" else "{value}" for f in world.FAMILIES}
    config = load_config({"store": str(tmp_path / "s"), "probe": {"source": str(path)},
                          "models": [{"name": "cifar_resnet20", "layers": ["layer3"]}],
                          "concepts": [{"kind": "labels", "name": "families", "classes": False, "columns": columns}]})
    probe, (source,) = _prepare(config)
    vocabulary = [c for c in world.concept_vocabulary() if c not in world.class_names()]
    assert sorted(source.concepts.concepts) == sorted(vocabulary)
    scores, _ = source.load([im.image_id for im in probe.images])
    truth = world.truth_matrix(data).numpy()[:, [world.concept_vocabulary().index(c) for c in source.concepts.concepts]]
    assert np.array_equal(scores.values(), truth)  # probe rows are in id order = generation order here
    with pytest.raises(ConfigError, match="gives concepts .* another column or a class already names"):
        _prepare(load_config({**config.model_dump(), "concepts": [{"kind": "labels", "columns": ["colour"],
                                                                    "superclasses": {"red": ["red circle"]}}]}))


def test_a_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"image": [b"x"], "image_id": ["a"], "label": [0], "label_name": ["cat"]}), path)
    config = load_config({"store": str(tmp_path / "s"), "probe": {"source": str(path)},
                          "models": [{"name": "cifar_resnet20", "layers": ["layer3"]}],
                          "concepts": [{"kind": "labels", "columns": ["material"]}]})
    with pytest.raises(ConfigError, match="no column 'material'"):
        _prepare(config)
