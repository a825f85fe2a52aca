"""top_concepts streams over concept and image blocks yet equals similarity_matrix(...) + top-k."""

from __future__ import annotations

import pytest
import torch

from discover_ray.similarity import METHODS, similarity_matrix, top_concepts, topk_lowest_index


def problem(n=350, k=11, m=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(n, k, generator=g))
    image_emb = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    concept_emb = torch.nn.functional.normalize(torch.randn(m, 16, generator=g), dim=1)
    return acts, image_emb, concept_emb


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("concept_chunk,image_chunk", [(1, 1000), (7, 64), (16, 13), (None, None), (1000, 1)])
def test_equals_dense_topk_across_chunk_sizes(method, concept_chunk, image_chunk):
    acts, image_emb, concept_emb = problem()
    scores = image_emb @ concept_emb.T
    dense = similarity_matrix(method, acts, scores, dtype=torch.float64)
    expected_values, expected_index = topk_lowest_index(dense, 5)
    values, index = top_concepts(
        method,
        acts,
        concept_scores=scores,
        k=5,
        dtype=torch.float64,
        concept_chunk=concept_chunk,
        image_chunk=image_chunk,
    )
    torch.testing.assert_close(values, expected_values, rtol=1e-10, atol=1e-10)
    assert torch.equal(index, expected_index)
    # The values really are the dense scores of the chosen concepts, and torch.topk agrees on them.
    torch.testing.assert_close(dense.gather(1, index), values, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dense.topk(5, dim=1).values, values, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_embeddings_give_the_same_answer_as_explicit_scores(method):
    acts, image_emb, concept_emb = problem(seed=1)
    image_emb = torch.nn.functional.normalize(image_emb.double(), dim=1)
    concept_emb = torch.nn.functional.normalize(concept_emb.double(), dim=1)
    scores = image_emb @ concept_emb.T
    explicit = top_concepts(method, acts, concept_scores=scores, k=4, dtype=torch.float64)
    implicit = top_concepts(
        method, acts, image_emb=3 * image_emb, concept_emb=concept_emb, k=4, dtype=torch.float64, concept_chunk=9
    )  # unnormalised embeddings are normalised first
    torch.testing.assert_close(implicit[0], explicit[0], rtol=1e-9, atol=1e-9)
    assert torch.equal(implicit[1], explicit[1])


@pytest.mark.parametrize("method", METHODS)
def test_ties_go_to_the_lowest_concept_index(method):
    # Binary data over 128 images keeps every sum and product exact, so duplicated columns tie bit for bit.
    g = torch.Generator().manual_seed(5)
    acts = torch.randint(0, 2, (128, 8), generator=g).double()
    scores = torch.randint(0, 2, (128, 12), generator=g).double()
    duplicated = torch.cat([scores, scores], dim=1)  # concept j and j + 12 always tie
    values, index = top_concepts(method, acts, concept_scores=duplicated, k=6, concept_chunk=5, dtype=torch.float64)
    for row_values, row_index in zip(values, index, strict=True):
        for a in range(5):
            if row_values[a] == row_values[a + 1]:
                assert row_index[a] < row_index[a + 1]
    dense = similarity_matrix(method, acts, duplicated, dtype=torch.float64)
    assert torch.equal(index, topk_lowest_index(dense, 6)[1])


@pytest.mark.parametrize("method", METHODS)
def test_dead_neurons_get_defined_scores(method):
    acts, image_emb, concept_emb = problem()
    acts[:, 3] = 0.0
    scores = image_emb @ concept_emb.T
    dense = similarity_matrix(method, acts, scores)
    assert torch.isfinite(dense).all()
    values, index = top_concepts(method, acts, concept_scores=scores, k=5, concept_chunk=8)
    assert torch.isfinite(values).all()
    assert torch.equal(index[3], topk_lowest_index(dense, 5)[1][3])


def test_constant_dead_neuron_scores_zero_under_cosines():
    acts, image_emb, concept_emb = problem()
    acts[:, 0] = 0.0
    scores = image_emb @ concept_emb.T
    for method in ("cos", "cos3", "rank_reorder"):
        assert torch.equal(similarity_matrix(method, acts, scores)[0], torch.zeros(scores.shape[1]))
    values, index = top_concepts("cos", acts, concept_scores=scores, k=3)
    assert index[0].tolist() == [0, 1, 2]  # all tied at 0: lowest indices, in order


def test_topk_lowest_index_handles_ties_and_blocks():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    values, index = topk_lowest_index(x, 3, block_elements=5)
    assert index.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert values.tolist() == [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]


def test_float32_by_default_float64_on_request():
    acts, image_emb, concept_emb = problem()
    assert top_concepts("cos", acts, image_emb=image_emb, concept_emb=concept_emb)[0].dtype == torch.float32
    assert (
        top_concepts("cos", acts, image_emb=image_emb, concept_emb=concept_emb, dtype=torch.float64)[0].dtype
        == torch.float64
    )


def test_soft_wpmi_memory_stays_within_the_budget():
    # With the whole-matrix approach this would allocate N×M twice; here blocks are sized by the budget.
    acts, image_emb, concept_emb = problem(n=2000, k=40, m=3000)
    budget = 2 * 2**20
    values, _ = top_concepts("soft_wpmi", acts, image_emb=image_emb, concept_emb=concept_emb, memory_budget=budget)
    dense = similarity_matrix("soft_wpmi", acts, image_emb @ concept_emb.T)
    torch.testing.assert_close(values, dense.topk(5, dim=1).values, rtol=1e-5, atol=1e-5)


class TestBadInput:
    def test_fewer_images_than_top_k(self):
        acts, image_emb, concept_emb = problem(n=50)
        with pytest.raises(ValueError, match="needs at least 100 probe images.*N=50"):
            top_concepts("soft_wpmi", acts, image_emb=image_emb, concept_emb=concept_emb)

    def test_more_concepts_requested_than_exist(self):
        acts, image_emb, concept_emb = problem(m=3)
        with pytest.raises(ValueError, match="k=5 concepts requested but the concept set has 3"):
            top_concepts("cos", acts, image_emb=image_emb, concept_emb=concept_emb, k=5)

    def test_rank_reorder_needs_enough_images(self):
        acts, image_emb, concept_emb = problem(n=10)
        with pytest.raises(ValueError, match="rank_reorder needs at least 20"):
            top_concepts("rank_reorder", acts, image_emb=image_emb, concept_emb=concept_emb)

    def test_unknown_method_and_parameter(self):
        acts, image_emb, concept_emb = problem()
        with pytest.raises(ValueError, match="unknown similarity method 'softwpmi'; choose one of"):
            top_concepts("softwpmi", acts, image_emb=image_emb, concept_emb=concept_emb)
        with pytest.raises(ValueError, match="topk.*valid: top_k"):
            top_concepts("soft_wpmi", acts, image_emb=image_emb, concept_emb=concept_emb, topk=10)

    def test_mismatched_rows_and_widths(self):
        acts, image_emb, concept_emb = problem()
        with pytest.raises(ValueError, match="rows must align by image"):
            similarity_matrix("cos", acts[:-1], image_emb @ concept_emb.T)
        with pytest.raises(ValueError, match="same encoder"):
            top_concepts("cos", acts, image_emb=image_emb, concept_emb=concept_emb[:, :8])

    def test_scores_xor_embeddings(self):
        acts, image_emb, concept_emb = problem()
        with pytest.raises(ValueError, match="give either concept_scores"):
            top_concepts("cos", acts)
        with pytest.raises(ValueError, match="give either concept_scores"):
            top_concepts(
                "cos", acts, concept_scores=image_emb @ concept_emb.T, image_emb=image_emb, concept_emb=concept_emb
            )

    def test_non_finite_input(self):
        acts, image_emb, concept_emb = problem()
        acts[0, 0] = float("nan")
        with pytest.raises(ValueError, match="activations contain NaN"):
            top_concepts("cos", acts, image_emb=image_emb, concept_emb=concept_emb)


@pytest.mark.parametrize("method", METHODS)
def test_concept_shards_merge_to_the_whole(method):
    """Shards of the concept axis scored separately (as REDUCE tasks do) and merged give the same top-k."""
    from discover_ray.similarity import merge_topk

    acts, image_emb, concept_emb = problem()
    whole = top_concepts(method, acts, image_emb=image_emb, concept_emb=concept_emb, k=5, dtype=torch.float64)
    values = index = None
    for start, stop in ((0, 3), (3, 30), (30, 53)):
        v, i = top_concepts(
            method, acts, image_emb=image_emb, concept_emb=concept_emb, k=5, dtype=torch.float64,
            concept_range=(start, stop),
        )
        assert bool(((i >= start) & (i < stop)).all())
        values, index = (v, i) if values is None else merge_topk(values, index, v, i, 5)
    torch.testing.assert_close(values, whole[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(index, whole[1])
    with pytest.raises(ValueError, match="concept_range"):
        top_concepts(method, acts, image_emb=image_emb, concept_emb=concept_emb, concept_range=(10, 60))
