"""Per-example active units and sparsity on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from discover_ray.analyze import active_units
from discover_ray.evaluate.sparsity import sparsity


def test_cvn_blocks_have_one_active_unit_each_also_when_negative():
    a = np.array([0.0, -0.7, 0.3, 0.0, 0.0, 0.0, 0.0, 2.0])  # 4 blocks of 2; block 2 has a zero winner
    assert active_units(a, block_size=2).tolist() == [1, 2, 4, 7]
    assert len(active_units(np.random.default_rng(0).normal(size=96), block_size=8)) == 12
    with pytest.raises(ValueError, match="blocks of 4"):
        active_units(np.zeros(10), block_size=4)


def test_conventional_units_are_active_above_epsilon():
    a = np.array([0.0, 1e-5, -2e-4, 0.5])
    assert active_units(a).tolist() == [2, 3]


def test_sparsity_is_the_mean_and_std_of_active_fractions():
    lwta = np.zeros((5, 12))
    lwta[:, ::4] = np.random.default_rng(1).normal(size=(5, 3))  # one winner per block of U = 4
    stats = sparsity(lwta)
    assert stats.mean == pytest.approx(0.25) and stats.std == pytest.approx(0.0)
    mixed = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert sparsity(mixed).mean == pytest.approx(0.75) and sparsity(mixed).std == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least one row"):
        sparsity(np.zeros((0, 3)))
