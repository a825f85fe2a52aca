"""CoSy verification scores: AUC as Mann–Whitney with ties, MAD in control standard deviations."""

from __future__ import annotations

import pytest
import torch

from discover_ray.evaluate.verification import verification_scores


def _brute_auc(g: torch.Tensor, c: torch.Tensor) -> float:
    return float(((g[:, None] > c[None]).double() + 0.5 * (g[:, None] == c[None]).double()).mean())


def test_auc_matches_the_pairwise_definition_with_ties():
    gen = torch.Generator().manual_seed(0)
    generated = torch.randint(0, 5, (30, 4), generator=gen).float()
    control = torch.randint(0, 4, (50, 4), generator=gen).float()
    scores = verification_scores(generated, control)
    for k in range(4):
        assert float(scores.auc[k]) == pytest.approx(_brute_auc(generated[:, k], control[:, k]), abs=1e-12)


def test_a_unit_the_label_drives_scores_high_and_a_shuffled_one_at_chance():
    gen = torch.Generator().manual_seed(1)
    control = torch.randn(2000, 2, generator=gen)
    generated = torch.stack([torch.randn(2000, generator=gen) + 3, torch.randn(2000, generator=gen)], 1)
    scores = verification_scores(generated, control)
    assert float(scores.auc[0]) > 0.95 and abs(float(scores.auc[1]) - 0.5) < 0.03
    assert float(scores.mad[0]) == pytest.approx(3, abs=0.15) and abs(float(scores.mad[1])) < 0.1


def test_a_unit_constant_on_the_control_is_dead_not_nan():
    scores = verification_scores(torch.ones(5, 1) * 2, torch.ones(7, 1))
    assert bool(scores.dead[0]) and float(scores.mad[0]) == 0.0 and float(scores.auc[0]) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        verification_scores(torch.zeros(0, 1), torch.ones(3, 1))
