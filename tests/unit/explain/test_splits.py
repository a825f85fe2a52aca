"""Splits by image id: seeded, exact proportions, stable whatever the order or sharding; or from a column."""

from __future__ import annotations

import pytest

from discover_ray.errors import ExplainInputError
from discover_ray.explain.splits import Splits, column_splits, seeded_splits

IDS = [f"img/{i:05d}" for i in range(1000)]


def test_seeded_split_has_exact_proportions_and_is_a_function_of_seed_and_ids():
    splits = seeded_splits(IDS, seed=0)
    assert splits.counts() == {"train": 700, "val": 100, "test": 200}
    assert seeded_splits(list(reversed(IDS)), seed=0) == splits  # order (sharding) does not matter
    assert seeded_splits(IDS, seed=1) != splits
    assert splits.id == seeded_splits(IDS, seed=0).id != seeded_splits(IDS, seed=1).id


def test_positions_follow_the_rows_of_a_layer():
    splits = seeded_splits(IDS, seed=0)
    rows = IDS[::-1][:300]  # a layer recorded on some of the images, in another order
    positions = splits.positions(rows)
    assert sum(len(p) for p in positions.values()) == 300
    for name, where in positions.items():
        assert all(splits.of[rows[i]] == name for i in where)


def test_a_split_with_no_validation_image_is_an_error_that_names_it():
    splits = Splits({"a": "train", "b": "train", "c": "test"})
    with pytest.raises(ExplainInputError, match="val split holds no image"):
        splits.check(["a", "b", "c"])
    with pytest.raises(ExplainInputError, match="fractions"):
        seeded_splits(IDS, fractions=(0.5, 0.1, 0.1))


def test_column_splits_take_the_names_a_data_set_uses():
    splits = column_splits(["a", "b", "c"], ["train", "Validation", "test"], "split")
    assert splits.of == {"a": "train", "b": "val", "c": "test"}
    with pytest.raises(ExplainInputError, match="holds 'holdout' for image 'b'"):
        column_splits(["a", "b"], ["train", "holdout"], "split")
