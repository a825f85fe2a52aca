"""Per-method kernels: each turns a block of concepts into the exact scores S[K, m] for all neurons.

A kernel is built once per call (it precomputes everything on the neuron side and any layer-wide
normaliser) and is then asked for concept blocks in increasing order. ``similarity_matrix`` concatenates
the blocks; ``top_concepts`` merges per-block top-k lists, so no K×M or N×M matrix is ever held.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discover_ray.similarity._params import (
    Cos3Params,
    CosParams,
    RankReorderParams,
    SoftWpmiParams,
    WpmiParams,
)
from discover_ray.similarity._sources import ConceptScores, EmbeddingScores
from discover_ray.similarity._topk import top_images

Source = ConceptScores | EmbeddingScores

# Work arrays of a block are sized to stay near the CPU cache; memory arrays to stay within the budget.
CACHE_ELEMENTS = 1 << 19


class Kernel:
    """Scores concept blocks ``[start, stop)`` for every neuron of one layer."""

    def __init__(self, activations: Tensor, source: Source, memory_budget: int):
        self.n_images, self.n_neurons = activations.shape
        self.source = source
        self.memory_budget = memory_budget
        self.itemsize = torch.empty((), dtype=activations.dtype).element_size()

    def default_concept_chunk(self) -> int:
        raise NotImplementedError

    def score(self, start: int, stop: int) -> Tensor:
        raise NotImplementedError

    def _fit(self, bytes_per_concept: float, cache_per_concept: float | None = None) -> int:
        chunk = self.memory_budget / max(bytes_per_concept, 1.0)
        if cache_per_concept:
            chunk = min(chunk, CACHE_ELEMENTS / cache_per_concept)
        return int(max(1, min(chunk, self.source.n_concepts)))


class CosKernel(Kernel):
    """S = Âᵀ P̂ with columns L2-normalised over images (norms floored at ``eps``: dead → 0, not NaN).

    Computed as (Aᵀ P) / (‖A‖ ‖P‖): normalising after the product keeps the dot products exact for
    exactly representable data, so equal columns tie bit for bit whatever the chunking.
    """

    def __init__(self, activations: Tensor, source: Source, params: CosParams, memory_budget: int, image_chunk: int):
        super().__init__(activations, source, memory_budget)
        self.eps = params.eps
        self.image_chunk = image_chunk
        self.activations = activations
        self.a_norms = activations.norm(dim=0).clamp_min(self.eps)
        if isinstance(source, EmbeddingScores):
            self.factor = activations.T @ source.image_emb  # [K, d]: Aᵀ P = (Aᵀ I) Cᵀ

    def default_concept_chunk(self) -> int:
        rows = 0 if isinstance(self.source, EmbeddingScores) else min(self.image_chunk, self.n_images)
        return self._fit(self.itemsize * (rows + 2 * self.n_neurons))

    def score(self, start: int, stop: int) -> Tensor:
        if isinstance(self.source, EmbeddingScores):
            raw = self.factor @ self.source.concept_emb[start:stop].T
            norms = self.source.column_norms(start, stop)
        else:
            raw = torch.zeros(self.n_neurons, stop - start, dtype=self.activations.dtype, device=self.activations.device)
            sq = torch.zeros(stop - start, dtype=self.activations.dtype, device=self.activations.device)
            for r in range(0, self.n_images, self.image_chunk):
                block = self.source.block(start, stop, r, r + self.image_chunk)
                raw.addmm_(self.activations[r : r + self.image_chunk].T, block)
                sq.add_((block * block).sum(dim=0))
            norms = sq.sqrt()
        return raw.div_(self.a_norms[:, None]).div_(norms.clamp_min(self.eps))


class Cos3Kernel(Kernel):
    """Cosine of centred, cubed columns; each cubed column divided by max(‖·‖₂, min_norm)."""

    def __init__(self, activations: Tensor, source: Source, params: Cos3Params, memory_budget: int):
        super().__init__(activations, source, memory_budget)
        self.min_norm = params.min_norm
        self.a_cubed, self.a_norms = _centred_cube(activations, self.min_norm)

    def default_concept_chunk(self) -> int:
        return self._fit(self.itemsize * (3 * self.n_images + self.n_neurons))

    def score(self, start: int, stop: int) -> Tensor:
        p_cubed, p_norms = _centred_cube(self.source.block(start, stop), self.min_norm)
        return (self.a_cubed.T @ p_cubed).div_(self.a_norms[:, None]).div_(p_norms)


def _centred_cube(x: Tensor, min_norm: float) -> tuple[Tensor, Tensor]:
    """Columns centred over images and cubed, and their L2 norms floored at ``min_norm``."""
    cubed = (x - x.mean(dim=0, keepdim=True)).pow_(3)
    return cubed, cubed.norm(dim=0).clamp_min(min_norm)


class WpmiKernel(Kernel):
    """(soft-)WPMI. With inclusion probabilities p_j (all 1 for WPMI) and Q = softmax_concepts(a·P):

    log E[p(t_m | B_k)] = Σ_j log(1 + p_j (Q[idx_kj, m] − 1) + min_prob)
    S[k, m] = log E[p(t_m | B_k)] − λ · (logsumexp_k(...) − log K)     (prior over the whole layer)

    Each term is p_j · (Q + c_j) with c_j = (1 − p_j + min_prob) / p_j, so the sum of logs is
    Σ_j log p_j plus the logs of products of groups of terms. The group length is the largest for
    which no product can underflow or overflow, which replaces 100 logarithms by ~9 in float32.
    Q is only built for the images that are some neuron's top image; their softmax normaliser is
    streamed over image and concept blocks.
    """

    def __init__(
        self,
        activations: Tensor,
        source: Source,
        params: WpmiParams | SoftWpmiParams,
        memory_budget: int,
        image_chunk: int,
    ):
        super().__init__(activations, source, memory_budget)
        top_k = params.top_k
        if isinstance(params, SoftWpmiParams):
            ranks = torch.arange(top_k, dtype=torch.float64)
            p = params.p_start - ranks / top_k * (params.p_start - params.p_end)
        else:
            p = torch.ones(top_k, dtype=torch.float64)
        self.a, self.lam = params.a, params.lam
        offsets = (1 - p + params.min_prob) / p
        self.offsets = offsets.to(device=activations.device, dtype=activations.dtype)
        self.log_p_total = float(torch.log(p).sum())
        self.group = _safe_group_length(float(offsets.min()), float(offsets.max()), activations.dtype)

        top = top_images(activations, top_k)  # [K, top_k]
        self.rows, positions = torch.unique(top, sorted=True, return_inverse=True)
        self.positions = positions  # [K, top_k], indices into self.rows
        self.scores_at_rows = source.restrict(self.rows)
        self.log_normaliser = self._log_normaliser(image_chunk)

    def _log_normaliser(self, image_chunk: int) -> Tensor:
        """logsumexp over all concepts of a·P, for the needed rows, streamed over image × concept blocks.

        Each block is reduced in place (scale, shift, exp, sum), so a block is the only temporary.
        """
        src, n_rows, n_concepts = self.scores_at_rows, self.scores_at_rows.n_rows, self.source.n_concepts
        rows_per_block = max(1, min(image_chunk, n_rows))
        step = max(1, min(n_concepts, self.memory_budget // (4 * self.itemsize * rows_per_block)))
        parts = []
        for r in range(0, n_rows, rows_per_block):
            peak = total = None
            for s in range(0, n_concepts, step):
                block = src.block(s, min(s + step, n_concepts), r, r + rows_per_block).mul_(self.a)
                block_peak = block.amax(dim=1)
                new_peak = block_peak if peak is None else torch.maximum(peak, block_peak)
                block_sum = block.sub_(new_peak[:, None]).exp_().sum(dim=1)
                total = block_sum if total is None else total.mul_(torch.exp(peak - new_peak)).add_(block_sum)
                peak = new_peak
            parts.append(peak + torch.log(total))
        return torch.cat(parts)

    def default_concept_chunk(self) -> int:
        n_rows = self.rows.numel()
        return self._fit(self.itemsize * (n_rows + (self.group + 4) * self.n_neurons), self.n_neurons * self.group)

    def score(self, start: int, stop: int) -> Tensor:
        q = self.scores_at_rows.block(start, stop).mul_(self.a).sub_(self.log_normaliser[:, None]).exp_()
        k, top_k = self.positions.shape
        # Sums of logs and the prior reach |x| ~ 10², where float32 cannot resolve the score differences
        # that matter near S = log K (where soft-WPMI saturates), so they accumulate in float64.
        log_e = torch.full((k, stop - start), self.log_p_total, dtype=torch.float64, device=q.device)
        for j0 in range(0, top_k, self.group):
            j1 = min(top_k, j0 + self.group)
            terms = q.index_select(0, self.positions[:, j0:j1].reshape(-1)).view(k, j1 - j0, stop - start)
            terms.add_(self.offsets[j0:j1].view(1, -1, 1))
            log_e.add_(terms.prod(dim=1).to(torch.float64).log_())
        log_prior = torch.logsumexp(log_e, dim=0) - math.log(k)
        return log_e.sub_(log_prior, alpha=self.lam).to(q.dtype)


def _safe_group_length(smallest: float, largest: float, dtype: torch.dtype, cap: int = 64) -> int:
    """Longest run of factors in [smallest, 1 + largest] whose product stays a normal float (2¹⁰ margin)."""
    info = torch.finfo(dtype)
    bound = float(cap)
    if smallest < 1:
        bound = min(bound, math.log(info.tiny * 1024) / math.log(smallest))
    bound = min(bound, math.log(info.max / 1024) / math.log1p(largest))
    return max(1, int(bound))


class RankReorderKernel(Kernel):
    """Rank-reorder with one stable sort per (neuron, concept) column.

    For neuron k with top-n activations a_1 ≥ … ≥ a_n and a concept whose scores rank those images as
    σ(1), σ(2), … (highest first), the reordered activations give err = mean_r |a_σ(r) − a_r|^p. It is
    divided by the neuron's permutation baseline mean_π mean_i |a_i − a_π(i)|^p (seeded permutations)
    and by max(mean score, min_mean_score)^scale_p; S = −err.
    """

    def __init__(self, activations: Tensor, source: Source, params: RankReorderParams, memory_budget: int):
        super().__init__(activations, source, memory_budget)
        self.params = params
        n = rank_reorder_top_n(self.n_images, params.top_fraction)
        top = top_images(activations, n)  # [K, n]
        self.top_values = activations.T.gather(1, top)  # [K, n], descending
        self.rows, self.positions = torch.unique(top, sorted=True, return_inverse=True)
        self.scores_at_rows = source.restrict(self.rows)
        perms = rank_reorder_permutations(n, params.n_permutations, params.seed).to(activations.device)
        shuffled = self.top_values[:, perms]  # [K, R, n]
        self.baseline = (self.top_values[:, None, :] - shuffled).abs_().pow_(params.p).mean(dim=(1, 2), dtype=torch.float64)
        self.baseline.clamp_min_(torch.finfo(torch.float64).tiny)

    def default_concept_chunk(self) -> int:
        n = self.top_values.shape[1]
        return self._fit(self.itemsize * (self.rows.numel() + 8 * n), 4 * n)

    def score(self, start: int, stop: int) -> Tensor:
        p = self.params
        scores = self.scores_at_rows.block(start, stop)  # [|U|, m]
        m = stop - start
        k, n = self.positions.shape
        out = torch.empty(k, m, dtype=scores.dtype, device=scores.device)
        block = max(1, CACHE_ELEMENTS * 4 // (n * m))
        for k0 in range(0, k, block):
            k1 = min(k, k0 + block)
            gathered = scores.index_select(0, self.positions[k0:k1].reshape(-1)).view(k1 - k0, n, m)
            gathered = gathered.transpose(1, 2).contiguous()  # [B, m, n]: one row per (neuron, concept)
            # Mean scores of mixed sign cancel, so both means reduce in float64.
            mean_score = gathered.mean(dim=2, dtype=torch.float64)
            order = gathered.argsort(dim=2, descending=True, stable=True)
            values = self.top_values[k0:k1, None, :]
            reordered = values.expand(-1, m, -1).gather(2, order)
            err = reordered.sub_(values).abs_().pow_(p.p).mean(dim=2, dtype=torch.float64)
            err.div_(self.baseline[k0:k1, None]).div_(mean_score.clamp_min_(p.min_mean_score).pow_(p.scale_p))
            out[k0:k1] = err.neg_()
        return out


def rank_reorder_top_n(n_images: int, top_fraction: float) -> int:
    """Number of top images rank-reorder looks at: ⌊top_fraction · N⌋."""
    return int(top_fraction * n_images)


def rank_reorder_permutations(n: int, count: int, seed: int) -> Tensor:
    """The seeded permutations ``[count, n]`` of rank-reorder's error baseline."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(count)])
