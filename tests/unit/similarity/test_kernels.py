"""The similarity kernels against the slow float64 oracle, on random and on planted data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discover_ray.similarity import METHODS, similarity_matrix, top_concepts
from tests.unit.similarity import oracle
from tests.unit.similarity.planted import planted_problem


def random_problem(n=400, k=9, m=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(n, k, generator=g))
    scores = 0.3 * torch.rand(n, m, generator=g) - 0.05  # CLIP-like cosines, some negative
    return acts, scores


@pytest.mark.parametrize("method", METHODS)
def test_float64_equals_oracle_on_random_data(method):
    acts, scores = random_problem()
    expected = oracle.ORACLES[method](acts.double().numpy(), scores.double().numpy())
    got = similarity_matrix(method, acts, scores, dtype=torch.float64)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_float32_within_1e4_of_score_range(method):
    acts, scores = random_problem(seed=1)
    expected = oracle.ORACLES[method](acts.double().numpy(), scores.double().numpy())
    got = similarity_matrix(method, acts, scores).double().numpy()
    assert np.abs(got - expected).max() <= 1e-4 * (expected.max() - expected.min())


@pytest.mark.parametrize(
    "params", [{"top_k": 20, "a": 5.0, "lam": 0.5}, {"p_start": 0.9, "p_end": 0.5, "min_prob": 1e-4}]
)
def test_soft_wpmi_parameters_follow_the_oracle(params):
    acts, scores = random_problem(seed=2)
    expected = oracle.soft_wpmi(acts.double().numpy(), scores.double().numpy(), **params)
    got = similarity_matrix("soft_wpmi", acts, scores, dtype=torch.float64, **params)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_rank_reorder_parameters_follow_the_oracle():
    acts, scores = random_problem(seed=3)
    params = {"p": 2.0, "top_fraction": 0.1, "scale_p": 1.0, "n_permutations": 3, "seed": 7}
    expected = oracle.rank_reorder(acts.double().numpy(), scores.double().numpy(), **params)
    got = similarity_matrix("rank_reorder", acts, scores, dtype=torch.float64, **params)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def planted():
    return planted_problem(n_images=2000, n_concepts=150, n_neurons=100, seed=3)


@pytest.mark.parametrize("method", METHODS)
def test_planted_concepts_are_recovered_and_match_the_oracle(method, planted):
    acts, scores = planted.activations, planted.scores
    expected = oracle.ORACLES[method](acts.double().numpy(), scores.double().numpy())
    values, index = top_concepts(method, acts, image_emb=planted.image_emb, concept_emb=planted.concept_emb, k=3)
    top1 = index[:, 0]
    assert (top1.numpy() == expected.argmax(axis=1)).mean() >= 0.999
    assert float((top1 == planted.planted).float().mean()) >= 0.9
    best = expected.max(axis=1)
    assert np.abs(values[:, 0].double().numpy() - best).max() <= 1e-4 * (expected.max() - expected.min())


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_rank_reorder_breaks_score_ties_by_activation_order(dtype, rtol):
    # One-hot scores (and ±0.0) tie massively; tied images must keep their activation order.
    acts, _ = random_problem(n=200, k=4, m=3)
    labels = torch.arange(200) % 3
    scores = torch.nn.functional.one_hot(labels, 3).float()
    scores[::7, 0] = -0.0
    expected = oracle.rank_reorder(acts.double().numpy(), scores.double().numpy(), top_fraction=0.2)
    got = similarity_matrix("rank_reorder", acts, scores, dtype=dtype, top_fraction=0.2)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=rtol)


def test_soft_wpmi_prior_spans_the_whole_layer():
    acts, scores = random_problem(k=12)
    whole = similarity_matrix("soft_wpmi", acts, scores, dtype=torch.float64)
    half = similarity_matrix("soft_wpmi", acts[:, :6], scores, dtype=torch.float64)
    # The prior p(t_m) averages over the neurons passed in, so a subset changes every score.
    assert not torch.allclose(whole[:6], half)


def test_outputs_are_deterministic():
    acts, scores = random_problem(seed=4)
    for method in METHODS:
        first = top_concepts(method, acts, concept_scores=scores, k=4, concept_chunk=5)
        again = top_concepts(method, acts, concept_scores=scores, k=4, concept_chunk=5)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    acts, scores = random_problem(n=3000, k=64, m=500)
    cpu = top_concepts(method, acts, concept_scores=scores, k=5, dtype=torch.float64)
    gpu = top_concepts(method, acts, concept_scores=scores, k=5, device="cuda", dtype=torch.float64)
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-9, atol=1e-9)
    assert torch.equal(gpu[1].cpu(), cpu[1])


def test_packed_key_orders_equal_a_stable_descending_argsort():
    from discover_ray.similarity._kernels import _dense_ranks, _descending_order, _order_by_dense_rank

    g = torch.Generator().manual_seed(8)
    scores = (torch.randint(-3, 4, (6, 5, 40), generator=g) / 2).float()  # many ties, negatives
    scores[0, 0, :5] = -0.0
    expected = scores.argsort(dim=2, descending=True, stable=True)
    assert torch.equal(_descending_order(scores.clone()), expected)
    dense = _dense_ranks(scores.reshape(30, 40)).view(6, 5, 40)
    assert torch.equal(_order_by_dense_rank(dense, position_bits=6), expected)
