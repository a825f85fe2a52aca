"""Simulation scoring: correlation on test, ablation through a linear head (Optim, Norm), dead units apart."""

from __future__ import annotations

import torch

from discover_ray.evaluate.simulation import ablation_scores, correlation_scores, simulate, summarise


def test_simulate_is_the_weighted_sum_plus_bias():
    values = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    predicted = simulate(values, [[0, 2], [], [1]], [[2.0, -1.0], [], [1.0]], [0.5, 3.0, 0.0])
    assert torch.allclose(predicted, torch.tensor([[2.0, 3.0, 0.0], [-0.0, 3.0, 1.0]], dtype=torch.float64))


def test_correlation_counts_dead_units_apart_and_never_returns_nan():
    g = torch.Generator().manual_seed(0)
    actual = torch.randn(200, 3, generator=g)
    actual[:, 2] = 1.5  # dead
    predicted = torch.stack([actual[:, 0] * 2 + 1, torch.zeros(200), torch.randn(200, generator=g)], 1)
    r, dead = correlation_scores(actual, predicted)
    assert dead.tolist() == [False, False, True]
    assert abs(float(r[0]) - 1) < 1e-9 and float(r[1]) == 0.0 and float(r[2]) == 0.0  # constant prediction scores 0
    summary = summarise(r, dead)
    assert summary.units == 3 and summary.dead_units == 1 and abs(summary.mean - 0.5) < 1e-9
    assert summarise(r[2:], dead[2:]).mean is None  # every unit dead: no mean, not NaN


def _layer(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    concepts = (torch.rand(n, 4, generator=g) > 0.5).double()
    acts = torch.relu(concepts @ torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
                      + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64))
    return concepts, acts


def test_ablation_a_perfect_simulation_scores_1_and_the_mean_scores_0():
    weight = torch.tensor([[1.0, -1.0], [-0.5, 2.0], [0.2, 0.1]], dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float64)
    _, val_acts = _layer(300, 1)
    _, test_acts = _layer(400, 2)
    labels = {s: (a @ weight.T).argmax(1) for s, a in (("val", val_acts), ("test", test_acts))}
    val, test = (val_acts, val_acts, labels["val"]), (test_acts, test_acts, labels["test"])
    for mode in ("optim", "norm"):
        scores, dead = ablation_scores(val, test, weight, bias, mode=mode)
        assert not dead.any()
        assert torch.all(scores > 0.97), (mode, scores)
    mean = (val_acts, val_acts.mean(0).expand_as(val_acts) + 0 * val_acts, labels["val"])
    flat = (test_acts, test_acts.mean(0).expand_as(test_acts).clone(), labels["test"])
    scores, _ = ablation_scores(mean, flat, weight, bias, mode="norm")
    assert torch.all(scores.abs() < 0.05), scores  # predicting a constant is no better than the mean


def test_ablation_a_good_explanation_scores_between_the_mean_and_perfection():
    weight = torch.tensor([[1.0, -1.0], [-0.5, 2.0], [0.2, 0.1]], dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float64)
    c_val, val_acts = _layer(300, 1)
    c_test, test_acts = _layer(400, 2)
    explain = [[0], [1]]  # each unit's main concept only
    pred_val = simulate(c_val, explain, [[1.0], [1.0]])
    pred_test = simulate(c_test, explain, [[1.0], [1.0]])
    labels = {s: (a @ weight.T).argmax(1) for s, a in (("val", val_acts), ("test", test_acts))}
    optim, _ = ablation_scores((val_acts, pred_val, labels["val"]), (test_acts, pred_test, labels["test"]), weight, bias)
    norm, _ = ablation_scores((val_acts, pred_val, labels["val"]), (test_acts, pred_test, labels["test"]), weight, bias,
                              mode="norm")
    assert torch.all((optim > 0.2) & (optim < 0.99)), optim
    assert torch.all((norm > 0.0) & (norm < 0.99)), norm
