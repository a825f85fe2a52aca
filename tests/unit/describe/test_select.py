"""Describe-and-Dissect's choice among candidates: TopK-Squared ordinals, Image-Products, the final order."""

from __future__ import annotations

import numpy as np

from discover_ray.describe.select import image_products, select_candidates, topk_squared


def test_topk_squared_scores_the_beta_best_ranks_and_gives_the_best_candidate_the_ordinal_c():
    # candidate 0 owns the images ranked 0, 1; candidate 1 ranks 2, 3; candidate 2 ranks 4, 5
    acts = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    owner = np.array([0, 0, 1, 1, 2, 2])
    score, ordinal = topk_squared(acts, owner, 3, beta=2)
    np.testing.assert_allclose(score, [0.5, 6.5, 20.5])  # mean of rank² over the 2 best: (0+1)/2, (4+9)/2, (16+25)/2
    assert ordinal.tolist() == [3, 2, 1]  # the reference code's C … 1, not the paper's C−1 … 0


def test_topk_squared_uses_only_the_beta_best_images_and_ranks_a_candidate_without_images_last():
    acts = np.array([1.0, 9.0, 8.0, 0.0])
    owner = np.array([0, 0, 1, 1])
    score, ordinal = topk_squared(acts, owner, 3, beta=1)
    assert score[0] == 0.0 and score[1] == 1.0 and np.isinf(score[2])
    assert ordinal.tolist() == [3, 2, 1]


def test_image_products_average_over_top_images_and_the_candidates_images_in_the_global_top():
    top = np.array([[1.0, 0.0], [0.0, 1.0]])
    generated = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    owner = np.array([0, 0, 1, 1])
    acts = np.array([4.0, 3.0, 1.0, 2.0])  # top-2 generated: images 0 and 1 (both candidate 0)
    ip = image_products(top, generated, owner, acts, 2, top=2)
    np.testing.assert_allclose(ip, [0.5, -1.0])  # candidate 1 has no image in the top 2
    ip3 = image_products(top, generated, owner, acts, 2, top=3)
    np.testing.assert_allclose(ip3[1], (0.6 + 0.8) / 2)


def test_the_final_order_is_ordinal_times_image_products_and_undrawn_candidates_come_last():
    acts = np.array([9.0, 8.0, 7.0, 6.0])
    owner = np.array([0, 0, 1, 1])
    top = np.ones((1, 2)) / np.sqrt(2)
    generated = np.tile(top, (4, 1))
    chosen = select_candidates(acts, owner, 3, top, generated, beta=2, top=4)
    assert chosen.drawn.tolist() == [True, True, False]
    assert chosen.order.tolist() == [0, 1, 2]
    np.testing.assert_allclose(chosen.score[:2], [3.0, 2.0])  # ordinals 3 and 2 × IP 1.0


def test_a_candidate_whose_images_resemble_the_top_images_can_win_over_a_better_ranked_one():
    acts = np.array([9.0, 8.0, 7.0, 6.0])
    owner = np.array([0, 0, 1, 1])
    top = np.array([[1.0, 0.0]])
    generated = np.array([[0.2, 0.98], [0.2, 0.98], [1.0, 0.0], [1.0, 0.0]])
    chosen = select_candidates(acts, owner, 2, top, generated, beta=2, top=4)
    # candidate 0: ordinal 2 × IP 0.2 = 0.4; candidate 1: ordinal 1 × IP 1.0 = 1.0
    assert chosen.order.tolist() == [1, 0]
