"""Linear Explanations: planted supports are recovered, the greedy rules hold exactly, bad input is refused."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from discover_ray.errors import ExplainInputError
from discover_ray.explain import LinearExplanations, linear_explanations
from discover_ray.explain.linear import _rank_fista, _ranking_order


@dataclass
class Planted:
    A: Tensor  # [N, K] float32
    C: Tensor  # [N, M] float32, binary
    support: list[set[int]]
    weights: list[dict[int, float]]
    train: Tensor
    val: Tensor
    test: Tensor


def planted(n: int = 4000, m: int = 300, k: int = 64, noise: float = 0.1, seed: int = 0) -> Planted:
    """Binary concepts at varied rates; each neuron a positive mix of 1–4 of them plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    rates = 0.05 + 0.4 * torch.rand(m, generator=g)
    C = (torch.rand(n, m, generator=g) < rates).double()
    A = torch.zeros(n, k, dtype=torch.float64)
    support, weights = [], []
    for j in range(k):
        chosen = torch.randperm(m, generator=g)[: 1 + j % 4]
        w = 0.5 + 1.5 * torch.rand(chosen.numel(), generator=g, dtype=torch.float64)
        A[:, j] = C[:, chosen] @ w + 0.3 + noise * torch.randn(n, generator=g, dtype=torch.float64)
        support.append(set(chosen.tolist()))
        weights.append(dict(zip(chosen.tolist(), w.tolist())))
    perm = torch.randperm(n, generator=g)
    cut1, cut2 = int(0.7 * n), int(0.8 * n)
    return Planted(A.float(), C.float(), support, weights, perm[:cut1], perm[cut1:cut2], perm[cut2:])


def explain(p: Planted, **kwargs) -> LinearExplanations:
    return linear_explanations(p.A, p.C, train=p.train, val=p.val, device="cpu", **kwargs)


def chosen_sets(e: LinearExplanations) -> list[set[int]]:
    return [{c for c, _ in e.terms(k)} for k in range(e.concepts.shape[0])]


def mean_f1(found: list[set[int]], truth: list[set[int]]) -> float:
    scores = [2 * len(f & t) / (len(f) + len(t)) for f, t in zip(found, truth)]
    return sum(scores) / len(scores)


@pytest.fixture(scope="module")
def data() -> Planted:
    return planted()


@pytest.fixture(scope="module")
def default(data: Planted) -> LinearExplanations:
    return explain(data)


def assert_well_formed(e: LinearExplanations, k: int, m: int, max_length: int = 10) -> None:
    assert e.concepts.shape == e.weights.shape == (k, max_length)
    assert e.concepts.dtype == torch.int64 and e.weights.dtype == torch.float64
    assert e.bias.shape == e.val_correlation.shape == e.dead.shape == (k,)
    assert e.kept.shape == (m,) and e.kept.dtype == torch.bool
    for t in (e.weights, e.bias, e.val_correlation):
        assert torch.isfinite(t).all()
    pad = e.concepts < 0
    assert (e.concepts[pad] == -1).all() and (e.weights[pad] == 0).all()
    used = e.lengths()
    assert (pad == (torch.arange(max_length)[None, :] >= used[:, None])).all()  # padding only at the end
    assert e.kept[e.concepts[~pad]].all()  # only surviving concepts are used
    assert e.kept[e.ranking].all()


# ---------------------------------------------------------------------------------------------------------
# Planted data


def test_the_default_path_recovers_planted_supports(data, default):
    assert_well_formed(default, 64, 300)
    assert default.kept.all() and not default.dead.any()
    assert mean_f1(chosen_sets(default), data.support) >= 0.95
    assert float(default.val_correlation.mean()) > 0.95
    assert default.ranking.shape == (64, 64)
    for k in range(64):  # where the set is exactly right, the weights and bias are the planted ones
        if chosen_sets(default)[k] == data.support[k]:
            for c, w in default.terms(k):
                assert w == pytest.approx(data.weights[k][c], abs=0.05)
            assert float(default.bias[k]) == pytest.approx(0.3, abs=0.05)


def test_weights_bias_and_correlation_are_those_of_an_ordinary_least_squares_fit(data, default):
    A, C = data.A.double().numpy(), data.C.double().numpy()
    tr, va = data.train.numpy(), data.val.numpy()
    for k in range(0, 64, 7):
        cols = [c for c, _ in default.terms(k)]
        X = np.c_[C[tr][:, cols], np.ones(len(tr))]
        coef = np.linalg.lstsq(X, A[tr, k], rcond=None)[0]
        np.testing.assert_allclose([w for _, w in default.terms(k)], coef[:-1], rtol=1e-6, atol=1e-8)
        assert float(default.bias[k]) == pytest.approx(coef[-1], abs=1e-6)
        prediction = C[va][:, cols] @ coef[:-1]
        assert float(default.val_correlation[k]) == pytest.approx(np.corrcoef(prediction, A[va, k])[0, 1], abs=1e-9)


def test_saga_ranking_also_recovers_planted_supports():
    p = planted(n=2200, m=120, k=12, seed=3)
    e = explain(p, ranking="saga")
    assert_well_formed(e, 12, 120)
    assert mean_f1(chosen_sets(e), p.support) >= 0.95


def test_a_neurons_explanation_does_not_depend_on_which_neurons_share_the_call(data, default):
    first = linear_explanations(data.A[:, :23], data.C, train=data.train, val=data.val, device="cpu")
    rest = linear_explanations(data.A[:, 23:], data.C, train=data.train, val=data.val, device="cpu")
    assert torch.equal(torch.cat([first.concepts, rest.concepts]), default.concepts)
    torch.testing.assert_close(torch.cat([first.weights, rest.weights]), default.weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([first.bias, rest.bias]), default.bias, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([first.val_correlation, rest.val_correlation]), default.val_correlation,
                               rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([first.ranking, rest.ranking])[:, :10], default.ranking[:, :10])


def test_adam_fit_mostly_agrees_with_least_squares(data, default):
    adam = explain(data, fit="adam")
    assert_well_formed(adam, 64, 300)
    same = [k for k, (a, b) in enumerate(zip(chosen_sets(adam), chosen_sets(default))) if a == b]
    assert len(same) >= 0.85 * 64
    for k in same:
        exact = dict(default.terms(k))
        for c, w in adam.terms(k):
            assert w == pytest.approx(exact[c], abs=0.2)
        assert abs(float(adam.val_correlation[k] - default.val_correlation[k])) < 0.02


def test_float64_ranking_gives_the_same_explanations(data, default):
    e = explain(data, dtype=torch.float64)
    assert torch.equal(e.concepts, default.concepts)
    torch.testing.assert_close(e.weights, default.weights)


def test_without_greedy_search_the_first_five_ranked_concepts_are_fitted_once(data, default):
    e = explain(data, greedy=False)
    assert_well_formed(e, 64, 300)
    assert (e.lengths() == 5).all()
    assert torch.equal(e.concepts[:, :5], e.ranking[:, :5])
    assert torch.equal(e.ranking, default.ranking)
    A, C, tr = data.A.double().numpy(), data.C.double().numpy(), data.train.numpy()
    cols = e.concepts[0, :5].tolist()
    coef = np.linalg.lstsq(np.c_[C[tr][:, cols], np.ones(len(tr))], A[tr, 0], rcond=None)[0]
    np.testing.assert_allclose(e.weights[0, :5].numpy(), coef[:-1], atol=1e-8)


# ---------------------------------------------------------------------------------------------------------
# The ranking


def test_the_ranking_is_the_converged_elastic_net_with_zeros_ordered_by_marginal_correlation():
    g = torch.Generator().manual_seed(5)
    n, m, k = 3000, 150, 8  # correlated concepts, dense targets: supports outgrow the first working set
    f64 = {"generator": g, "dtype": torch.float64}
    X = torch.randn(n, 6, **f64) @ torch.randn(6, m, **f64) + 0.7 * torch.randn(n, m, **f64)
    Y = X @ torch.randn(m, k, **f64) / 4 + torch.randn(n, k, **f64)
    X, Y = (X - X.mean(0)) / X.std(0), (Y - Y.mean(0)) / Y.std(0)
    gram, rho = X.T @ X / n, (X.T @ Y / n).T.contiguous()
    l1, l2 = 0.05, 0.05 / 0.99 * 0.01
    w = _rank_fista(gram, rho, l1, l2, torch.ones(k, dtype=torch.bool))
    step = 1 / float(torch.linalg.eigvalsh(gram)[-1])  # plain proximal gradient, run far past convergence
    ref = torch.zeros(k, m, dtype=torch.float64)
    for _ in range(20000):
        z = ref - step * (ref @ gram - rho)
        ref = z.sign() * (z.abs() - step * l1).clamp_min(0) / (1 + step * l2)
    assert ((ref != 0).sum(1) > 10).all() and (ref < 0).any()
    torch.testing.assert_close(w, ref, rtol=0, atol=1e-8)
    w32 = _rank_fista(gram.float(), rho.float(), l1, l2, torch.ones(k, dtype=torch.bool))
    torch.testing.assert_close(w32.double(), ref, rtol=0, atol=1e-3)
    order = _ranking_order(w, rho, m)
    assert torch.equal(_ranking_order(w32, rho, m)[:, :10], order[:, :10])
    for row, weights, corr in zip(order, w, rho):
        ranked = weights[row]
        assert (ranked[:-1] >= ranked[1:]).all()  # weight descending: positives, zeros, then negatives
        zeros = row[ranked == 0]
        assert (corr[zeros].abs()[:-1] >= corr[zeros].abs()[1:]).all()


# ---------------------------------------------------------------------------------------------------------
# The greedy search's rules, on hand-built neurons


def independent_concepts(n: int, m: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    C = (torch.rand(n, m, generator=g) < 0.5).double()
    rows = torch.randperm(n, generator=g)
    return C, rows[: n // 2], rows[n // 2 :]


def oracle_r(A: np.ndarray, C: np.ndarray, cols: list[int], tr: np.ndarray, va: np.ndarray) -> float:
    coef = np.linalg.lstsq(np.c_[C[tr][:, cols], np.ones(len(tr))], A[tr], rcond=None)[0]
    return float(np.corrcoef(C[va][:, cols] @ coef[:-1], A[va])[0, 1])


def test_a_second_concept_is_added_only_if_it_gains_at_least_the_tolerance():
    C, tr, va = independent_concepts(4000, 8, seed=1)
    g = torch.Generator().manual_seed(2)
    a = C[:, 0] + 0.3 * C[:, 1] + 0.3 * torch.randn(4000, generator=g, dtype=torch.float64)
    gain = oracle_r(a.numpy(), C.numpy(), [0, 1], tr.numpy(), va.numpy()) - oracle_r(
        a.numpy(), C.numpy(), [0], tr.numpy(), va.numpy())
    assert 0.01 < gain < 0.2
    A = a[:, None]
    above = linear_explanations(A, C, train=tr, val=va, tolerance=gain * 0.98, device="cpu")
    below = linear_explanations(A, C, train=tr, val=va, tolerance=gain * 1.02, device="cpu")
    assert [c for c, _ in above.terms(0)][:2] == [0, 1]
    assert [c for c, _ in below.terms(0)] == [0]
    r0 = oracle_r(a.numpy(), C.numpy(), [0], tr.numpy(), va.numpy())
    assert float(below.val_correlation[0]) == pytest.approx(r0, abs=1e-9)


def test_a_small_contribution_stays_out_at_the_default_tolerance_and_a_large_one_gets_in():
    C, tr, va = independent_concepts(4000, 8, seed=4)
    g = torch.Generator().manual_seed(5)
    noise = 0.3 * torch.randn(4000, generator=g, dtype=torch.float64)
    A = torch.stack([C[:, 2] + 0.05 * C[:, 5] + noise, C[:, 2] + C[:, 5] + noise], dim=1)
    e = linear_explanations(A, C, train=tr, val=va, device="cpu")
    assert [c for c, _ in e.terms(0)] == [2]
    assert {c for c, _ in e.terms(1)} == {2, 5}


def test_reaching_max_length_returns_exactly_the_chosen_concepts():
    C, tr, va = independent_concepts(6000, 12, seed=6)
    planted_weights = [3.0, 2.5, 2.0, 1.6, 1.3, 1.0]
    g = torch.Generator().manual_seed(7)
    a = C[:, :6] @ torch.tensor(planted_weights, dtype=torch.float64) + 0.05 * torch.randn(6000, generator=g,
                                                                                            dtype=torch.float64)
    A = a[:, None]
    short = linear_explanations(A, C, train=tr, val=va, max_length=4, device="cpu")
    assert short.concepts.shape == (1, 4)
    assert [c for c, _ in short.terms(0)] == [0, 1, 2, 3]  # biggest contribution first, the 4th is the 4th
    full = linear_explanations(A, C, train=tr, val=va, max_length=6, device="cpu")
    assert [c for c, _ in full.terms(0)] == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose([w for _, w in full.terms(0)], planted_weights, atol=0.01)


# ---------------------------------------------------------------------------------------------------------
# Dead, constant and unexplainable neurons


def test_dead_and_constant_neurons_are_reported_and_nothing_is_nan():
    p = planted(n=2000, m=60, k=8, seed=8)
    A = p.A.clone()
    A[:, 1] = 0.0
    A[:, 2] = 3.0
    A[p.val, 3] = 1.5  # varies on train, constant on val
    A[p.test, 4] = 7.0  # constant on the test rows only: not dead
    e = linear_explanations(A, p.C, train=p.train, val=p.val, device="cpu")
    assert_well_formed(e, 8, 60)
    assert e.dead.tolist() == [False, True, True, True, False, False, False, False]
    for k in (1, 2, 3):
        assert e.lengths()[k] == 0 and e.val_correlation[k] == 0
        assert float(e.bias[k]) == pytest.approx(float(A[p.train, k].double().mean()))
    assert (e.lengths()[~e.dead] > 0).all()


def test_a_layer_of_dead_neurons_is_all_dead_without_error():
    p = planted(n=1000, m=40, k=3, seed=9)
    A = torch.ones(1000, 5)
    for kwargs in ({}, {"greedy": False}, {"fit": "adam"}):
        e = linear_explanations(A, p.C, train=p.train, val=p.val, device="cpu", **kwargs)
        assert_well_formed(e, 5, 40)
        assert e.dead.all() and (e.lengths() == 0).all() and (e.bias == 1).all()


def test_a_neuron_no_concept_correlates_with_on_val_gets_an_empty_explanation_not_dead():
    C, tr, va = independent_concepts(2000, 6, seed=10)
    C[va] = 0.0  # every concept constant on val: no prediction can correlate
    g = torch.Generator().manual_seed(11)
    A = (C[:, :2].sum(1, keepdim=True) + 0.1 * torch.randn(2000, 1, generator=g, dtype=torch.float64))
    A[va] = torch.randn(va.numel(), 1, generator=g, dtype=torch.float64)
    e = linear_explanations(A, C, train=tr, val=va, device="cpu")
    assert not e.dead[0] and e.lengths()[0] == 0 and e.val_correlation[0] == 0
    assert float(e.bias[0]) == pytest.approx(float(A[tr, 0].mean()))


# ---------------------------------------------------------------------------------------------------------
# Input


def test_only_train_and_val_rows_are_read(data, default):
    A, C = data.A.clone(), data.C.clone()
    A[data.test[:5], 3] = math.nan
    C[data.test[:5], 7] = math.inf
    C[data.test[5:300], 11] = 1.0  # would change a concept's statistics if test rows were read
    C[data.test[300:], 12] = 4.0  # out of range on test rows only
    e = linear_explanations(A, C, train=data.train, val=data.val, device="cpu")
    assert torch.equal(e.concepts, default.concepts)
    torch.testing.assert_close(e.weights, default.weights, rtol=0, atol=1e-9)


def test_pruning_uses_train_rows_only(data):
    C = data.C.clone()
    C[:, 5] = 0.0
    C[data.val, 5] = 1.0  # present on val and test rows, never on train
    C[data.test, 5] = 1.0
    C[data.train, 9] = 0.2  # constant on train: std 0
    C[data.train[:3], 17] = 0.0  # concept 17 reaches at most 0.4 on train (top-5 mean 0.4 < 0.5)
    C[:, 17] = C[:, 17] * 0.4
    e = linear_explanations(data.A[:, :8], C, train=data.train, val=data.val, device="cpu")
    assert not e.kept[5] and not e.kept[9] and not e.kept[17]
    assert int(e.kept.sum()) == 297
    assert not torch.isin(e.concepts, torch.tensor([5, 9, 17])).any()
    assert not torch.isin(e.ranking, torch.tensor([5, 9, 17])).any()


def test_nothing_surviving_pruning_is_an_error(data):
    with pytest.raises(ExplainInputError, match="no concept survives pruning"):
        linear_explanations(data.A, data.C * 0.3, train=data.train, val=data.val, device="cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda A, C, p: C.__setitem__((p.train[4], 6), math.nan), r"C \(concepts\) holds 1 non-finite.*column 6"),
        (lambda A, C, p: C.__setitem__((p.val[:3], 9), math.inf), r"C \(concepts\) holds 3 non-finite.*column 9"),
        (lambda A, C, p: A.__setitem__((p.val[2], 2), math.nan), r"A \(activations\) holds 1 non-finite.*column 2"),
        (lambda A, C, p: C.__setitem__((p.train[:2], 4), 1.5), r"outside \[0, 1\].*max 1\.5.*column 4"),
        (lambda A, C, p: C.__setitem__((p.val[0], 8), -0.2), r"outside \[0, 1\].*min -0\.2.*column 8"),
    ],
)
def test_bad_values_are_refused(change, message):
    p = planted(n=500, m=20, k=3, seed=12)
    A, C = p.A.clone(), p.C.clone()
    change(A, C, p)
    with pytest.raises(ExplainInputError, match=message):
        linear_explanations(A, C, train=p.train, val=p.val, device="cpu")


def test_bad_splits_and_shapes_are_refused():
    p = planted(n=500, m=20, k=3, seed=13)

    def run(**kwargs) -> LinearExplanations:
        return linear_explanations(**{"A": p.A, "C": p.C, "train": p.train, "val": p.val, "device": "cpu", **kwargs})

    with pytest.raises(ExplainInputError, match="val holds 0 rows"):
        run(val=torch.tensor([], dtype=torch.long))
    with pytest.raises(ExplainInputError, match="train holds 0 rows"):
        run(train=torch.tensor([], dtype=torch.long))
    with pytest.raises(ExplainInputError, match="share 5 rows"):
        run(val=torch.cat([p.val, p.train[:5]]))
    with pytest.raises(ExplainInputError, match="outside"):
        run(val=torch.tensor([0, 500]))
    with pytest.raises(ExplainInputError, match="repeats"):
        run(val=torch.cat([p.val, p.val[:1]]))
    with pytest.raises(ExplainInputError, match="same images"):
        run(A=p.A[:-1])
    with pytest.raises(ExplainInputError, match="2-D"):
        run(C=p.C[:, 0])
    with pytest.raises(ExplainInputError, match="ranking must be one of"):
        run(ranking="lasso")
    with pytest.raises(ExplainInputError, match="max_length"):
        run(max_length=0)
    with pytest.raises(ExplainInputError, match="width"):
        run(width=0)
    mask = torch.zeros(500, dtype=torch.bool)
    mask[p.val] = True
    assert torch.equal(run(val=mask).concepts, run().concepts)  # a boolean mask is a split too
