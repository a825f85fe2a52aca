"""Every table of the store round-trips through the one schema module."""

from __future__ import annotations

import numpy as np
import pytest

from discover_ray import schema


def test_activations_round_trip_with_blocks_failures_and_the_position_statistic():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    table = schema.activation_table(["a", "b", "c"], values, 2, failed=[("d", "corrupt: x", 3)],
                                    active_fraction=np.array([0.5, 0.5, 0.5]), layer="l")
    assert table.column_names == ["image_id", "b0000_u00", "b0000_u01", "b0001_u00", "b0001_u01",
                                  "position_active_fraction"]
    assert schema.failed_of(table.schema) == [("d", "corrupt: x", 3)]
    back = schema.read_activations(table, 2)
    assert back.image_ids == ["a", "b", "c"] and np.array_equal(back.values, values)
    assert back.units == table.column_names[1:5] and np.array_equal(back.active_fraction, [0.5, 0.5, 0.5])
    with pytest.raises(KeyError, match="not in the probe set"):
        back.row("z")


def test_labels_round_trip_ranked_and_top():
    values = np.array([[0.9, 0.5], [0.7, 0.6]], dtype=np.float32)
    index = np.array([[2, 0], [1, 2]])
    labels = schema.Labels(schema.label_table(values, index, ["cat", "dog", "car"], 1))
    assert labels.top() == {"u00000": ("car", pytest.approx(0.9)), "u00001": ("dog", pytest.approx(0.7))}
    assert [c for c, _ in labels.ranked()["u00001"]] == ["dog", "car"] and labels.num_rows == 4


def test_embeddings_and_pixels_round_trip():
    emb = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    ids, back = schema.read_embeddings(schema.image_embedding_table(["a", "b", "c"], emb))
    assert ids == ["a", "b", "c"] and np.array_equal(back, emb)
    names, back = schema.read_embeddings(schema.concept_embedding_table(["x", "y", "z"], emb))
    assert names == ["x", "y", "z"] and np.array_equal(back, emb)
    raw = np.random.default_rng(1).integers(0, 256, (2, 4, 3, 3), dtype=np.uint8)
    table = schema.pixel_table(["a", "b"], [0, 1], raw, [])
    ids, pixels = schema.read_pixels(table, table.schema)
    assert ids == ["a", "b"] and np.array_equal(pixels, raw)


def test_the_tables_the_next_methods_write():
    explanations = schema.Explanations(schema.explanation_table(
        ["u00000", "u00001"], [["dog", "cat"], []], [[1, 0], []], [[0.7, 0.2], []], [0.1, 0.0], [0.6, 0.0],
        [False, True]))
    assert explanations.by_unit() == {"u00000": ([("dog", pytest.approx(0.7)), ("cat", pytest.approx(0.2))],
                                                 pytest.approx(0.1), pytest.approx(0.6), False),
                                      "u00001": ([], 0.0, 0.0, True)}
    from discover_ray.describe import CandidateResult, Captioned, UnitDescription

    described = [
        UnitDescription(0, captioned=[Captioned("img1", (0, 0, 10, 10), 2.5, "a tabby cat")], summaries=["cats"],
                        candidates=[CandidateResult("tabby cat fur", ["world/ab"], True, 1.0, 2, 0.4, 0.8),
                                    CandidateResult("striped cats", [], False, float("inf"), 1, -1.0, -1.0)]),
        UnitDescription(1).fail("failed", "summarising: server down"),
    ]
    descriptions = schema.Descriptions(schema.description_table(["u00000", "u00001"], described))
    assert descriptions.ranked() == {"u00000": [("tabby cat fur", pytest.approx(0.8)), ("striped cats", -1.0)]}
    assert descriptions.top() == {"u00000": ("tabby cat fur", pytest.approx(0.8))}
    assert descriptions.failures() == {"u00001": ("failed", "summarising: server down")}
    row = descriptions.rows()["u00000"][0]
    assert row["captioned"] == [{"image_id": "img1", "box": [0, 0, 10, 10], "activation": 2.5, "caption": "a tabby cat"}]
    assert row["images"] == ["world/ab"] and row["summaries"] == ["cats"] and row["ordinal"] == 2
    scores = schema.Scores(schema.score_table(["u00000", "u00001"], "simulation_correlation", [0.3, -0.1]))
    assert scores.by_unit("simulation_correlation") == {"u00000": pytest.approx(0.3), "u00001": pytest.approx(-0.1)}
    assert set(schema.VERSIONS) >= {"activations", "labels", "explanations", "descriptions", "scores"}
