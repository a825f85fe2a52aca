"""Slow, obviously correct float64 implementations of the similarity functions, one neuron at a time.

They follow methods.md §1.2 literally (plus the documented choices: lowest-index tie-breaking, norm
floors instead of NaN, the layer-wide prior, seeded rank-reorder permutations) and share no code with
``discover_ray.similarity`` except the seeded permutation generator, which is a parameter of the method.
"""

from __future__ import annotations

import numpy as np

from discover_ray.similarity import rank_reorder_permutations


def top_image_indices(column: np.ndarray, n: int) -> np.ndarray:
    """The n most activating images, highest first; equal activations in image order."""
    return np.array(sorted(range(len(column)), key=lambda i: (-column[i], i))[:n])


def cos(A: np.ndarray, P: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    S = np.zeros((A.shape[1], P.shape[1]))
    p_norm = np.maximum(np.sqrt((P**2).sum(axis=0)), eps)
    for k in range(A.shape[1]):
        a = A[:, k]
        a_hat = a / max(np.sqrt((a**2).sum()), eps)
        for m in range(P.shape[1]):
            S[k, m] = (a_hat * P[:, m]).sum() / p_norm[m]
    return S


def cos3(A: np.ndarray, P: np.ndarray, min_norm: float = 1e-3) -> np.ndarray:
    def transform(column: np.ndarray) -> np.ndarray:
        cubed = (column - column.mean()) ** 3
        return cubed / max(np.linalg.norm(cubed), min_norm)

    P_t = np.stack([transform(P[:, m]) for m in range(P.shape[1])], axis=1)
    return np.stack([transform(A[:, k]) @ P_t for k in range(A.shape[1])])


def softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def soft_wpmi(A, P, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97, soft=True):
    Q = softmax_rows(a * P)
    K = A.shape[1]
    log_cond = np.zeros((K, P.shape[1]))
    for k in range(K):
        for j, i in enumerate(top_image_indices(A[:, k], top_k)):
            p_j = p_start - (j / top_k) * (p_start - p_end) if soft else 1.0
            log_cond[k] += np.log(1 + p_j * (Q[i] - 1) + min_prob)
    peak = log_cond.max(axis=0)
    log_prior = peak + np.log(np.exp(log_cond - peak).sum(axis=0)) - np.log(K)
    return log_cond - lam * log_prior


def wpmi(A, P, top_k=28, a=2.0, lam=0.6, min_prob=1e-7):
    return soft_wpmi(A, P, top_k=top_k, a=a, lam=lam, min_prob=min_prob, soft=False)


def rank_reorder(A, P, p=3.0, top_fraction=0.05, scale_p=0.5, n_permutations=5, seed=0, min_mean_score=1e-6):
    n = int(top_fraction * A.shape[0])
    perms = rank_reorder_permutations(n, n_permutations, seed).numpy()
    S = np.zeros((A.shape[1], P.shape[1]))
    for k in range(A.shape[1]):
        top = top_image_indices(A[:, k], n)
        acts = A[top, k]
        baseline = np.mean([np.mean(np.abs(acts - acts[perm]) ** p) for perm in perms])
        baseline = max(baseline, np.finfo(np.float64).tiny)
        for m in range(P.shape[1]):
            clip = P[top, m]
            # Give the image with the r-th highest concept score the r-th highest activation.
            by_score = sorted(range(n), key=lambda i: (-clip[i], i))
            reordered = np.empty(n)
            reordered[by_score] = acts
            err = np.mean(np.abs(acts - reordered) ** p) / baseline
            err /= max(clip.mean(), min_mean_score) ** scale_p
            S[k, m] = -err
    return S


ORACLES = {"cos": cos, "cos3": cos3, "rank_reorder": rank_reorder, "wpmi": wpmi, "soft_wpmi": soft_wpmi}
