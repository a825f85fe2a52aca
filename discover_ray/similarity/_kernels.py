"""Per-method kernels: each turns a block of concepts into the exact scores S[K, m] for all neurons.

A kernel is built once per call (it precomputes everything on the neuron side and any layer-wide
normaliser) and is then asked for concept blocks in increasing order. ``similarity_matrix`` concatenates
the blocks; ``top_concepts`` merges per-block top-k lists, so no K×M or N×M matrix is ever held.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor, nn

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
        return self._fit(self.itemsize * 3 * self.n_neurons)  # blocks of a given P are views, not copies

    def score(self, start: int, stop: int) -> Tensor:
        if isinstance(self.source, EmbeddingScores):
            raw = self.factor @ self.source.concept_emb[start:stop].T
            norms = self.source.column_norms(start, stop)
        else:
            raw = torch.zeros(
                self.n_neurons, stop - start, dtype=self.activations.dtype, device=self.activations.device
            )
            sq = torch.zeros(stop - start, dtype=self.activations.dtype, device=self.activations.device)
            for r in range(0, self.n_images, self.image_chunk):
                block = self.source.block(start, stop, r, r + self.image_chunk, writable=False)
                raw.addmm_(self.activations[r : r + self.image_chunk].T, block)
                sq.add_(torch.linalg.vector_norm(block, dim=0).square_())  # a reduction: no squared copy
            norms = sq.sqrt()
        return raw.div_(self.a_norms[:, None]).div_(norms.clamp_min(self.eps))


class Cos3Kernel(Kernel):
    """Cosine of centred, cubed columns; each cubed column divided by max(‖·‖₂, min_norm)."""

    def __init__(self, activations: Tensor, source: Source, params: Cos3Params, memory_budget: int):
        super().__init__(activations, source, memory_budget)
        self.min_norm = params.min_norm
        self.a_cubed, self.a_norms = _centred_cube(activations, self.min_norm)  # a copy: the input stays as it is
        self._p_buffer: Tensor | None = None

    def default_concept_chunk(self) -> int:
        return self._fit(self.itemsize * (3 * self.n_images + self.n_neurons))

    def score(self, start: int, stop: int) -> Tensor:
        if isinstance(self.source, EmbeddingScores):
            # P's block is a product I Cᵀ: computed into one buffer that serves every block.
            width = stop - start
            if self._p_buffer is None or self._p_buffer.numel() < self.n_images * width:
                self._p_buffer = torch.empty(
                    self.n_images * width, dtype=self.a_cubed.dtype, device=self.a_cubed.device
                )
            block = self.source.block_into(self._p_buffer[: self.n_images * width].view(-1, width), start, stop)
        else:
            block = self.source.block(start, stop)  # a fresh copy, laid out like the given P
        p_cubed, p_norms = _centred_cube(block, self.min_norm, in_place=True)
        return (self.a_cubed.T @ p_cubed).div_(self.a_norms[:, None]).div_(p_norms)


def _centred_cube(x: Tensor, min_norm: float, in_place: bool = False) -> tuple[Tensor, Tensor]:
    """Columns centred over images and cubed (over ``x`` itself when ``in_place``), and their L2 norms
    floored at ``min_norm``."""
    mean = x.mean(dim=0, keepdim=True)
    cubed = (x.sub_(mean) if in_place else x - mean).pow_(3)
    return cubed, cubed.norm(dim=0).clamp_min(min_norm)


class WpmiKernel(Kernel):
    """(soft-)WPMI. With inclusion probabilities p_j (all 1 for WPMI) and Q = softmax_concepts(a·P):

    log E[p(t_m | B_k)] = Σ_j log(1 + p_j (Q[idx_kj, m] − 1) + min_prob)
    S[k, m] = log E[p(t_m | B_k)] − λ · (logsumexp_k(...) − log K)     (prior over the whole layer)

    Each term is p_j · (Q + c_j) with c_j = (1 − p_j + min_prob) / p_j, so the sum of logs is
    Σ_j log p_j plus the logs of products of groups of terms (scaled by a constant s to keep them near
    1). The group length is the largest for which no partial product can underflow or overflow, which
    replaces 100 logarithms by 4 in float32.
    Q is only built for the images some neuron needs (or, for a given P where most are needed, for all
    images, read in contiguous rows), one concept block at a time after one pass for its normaliser.
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
        # Factors s·(Q + c_j) with s = 1/√(c_min (1 + c_max)) spread evenly around 1 on a log scale, which
        # lets the longest group multiply without leaving the normal float range.
        self.log_scale = -0.5 * math.log(float(offsets.min()) * (1 + float(offsets.max())))
        scale = math.exp(self.log_scale)
        self.offsets = (offsets * scale).to(device=activations.device, dtype=activations.dtype)
        self.log_p_total = float(torch.log(p).sum()) - top_k * self.log_scale
        self.group = _safe_group_length(
            float(offsets.min()) * scale, (1 + float(offsets.max())) * scale, activations.dtype
        )

        top = top_images(activations, top_k)  # [K, top_k]
        self.rows, self.positions, self.scores_at_rows = _needed_rows(top, source)
        # Stored negated and shifted by log s, so that the block holds s·Q = exp(a·P + this).
        self.neg_log_normaliser = self._log_normaliser(image_chunk).neg_().add_(self.log_scale)
        self._q_buffer: Tensor | None = None
        self._buffers: dict[str, Tensor] = {}

    def _log_normaliser(self, image_chunk: int) -> Tensor:
        """logsumexp over all concepts of a·P for the needed rows, over blocks of about the cache size.

        A block holds a few rows of all concepts; when one row alone exceeds it, the concepts are streamed
        too, with a running maximum. One buffer holds every block's P and then exp(a·P − max) in place,
        so the thousand-odd blocks of a large layer allocate nothing of their size.
        """
        src, n_rows, n_concepts = self.scores_at_rows, self.scores_at_rows.n_rows, self.source.n_concepts
        per_block = 2 * CACHE_ELEMENTS  # rows of all concepts that fit the cache
        rows_per_block = max(1, min(image_chunk, n_rows, per_block // n_concepts))
        step = min(n_concepts, max(1, per_block // rows_per_block))
        direct = isinstance(src, ConceptScores) and src.is_view_of_rows()  # read P where it lies
        # A view of a P stored by columns would make a fresh a·P − max column-major too, which sums in
        # another order: such blocks keep their fresh temporary, so that results stay bit for bit the same.
        in_buffer = not direct or src.scores.stride(1) == 1
        buffer = torch.empty(rows_per_block * step, dtype=self.offsets.dtype, device=self.offsets.device)
        parts = []
        for r in range(0, n_rows, rows_per_block):
            height = min(rows_per_block, n_rows - r)
            peak = total = None
            for s in range(0, n_concepts, step):
                stop = min(s + step, n_concepts)
                work = buffer[: height * (stop - s)].view(height, stop - s)
                block = (
                    src.block(s, stop, r, r + height, writable=False) if direct else src.block_into(work, s, stop, r)
                )
                block_peak = block.amax(dim=1).mul_(self.a)  # a > 0
                new_peak = block_peak if peak is None else torch.maximum(peak, block_peak)
                # a·P − max, one pass, written over the block (or, for a P read where it lies, into the buffer)
                shifted = (
                    torch.add(-new_peak[:, None], block, alpha=self.a, out=work)
                    if in_buffer
                    else torch.add(-new_peak[:, None], block, alpha=self.a)
                )
                block_sum = shifted.exp_().sum(dim=1)
                total = block_sum if total is None else total.mul_(torch.exp(peak - new_peak)).add_(block_sum)
                peak = new_peak
            parts.append(peak + torch.log(total))
        return torch.cat(parts)

    def default_concept_chunk(self) -> int:
        # Q for the needed rows of one concept block is the largest array: half the budget.
        return self._fit(2 * self.itemsize * (self.rows.numel() + 4 * self.n_neurons))

    def _softmax_block(self, start: int, stop: int) -> Tensor:
        """Q[rows, start:stop] = exp(a·P − log-normaliser), built in cache-sized row tiles, three passes."""
        n_rows, width = self.rows.numel(), stop - start
        # One buffer serves every block: a fresh tens-of-MB array per block costs page faults.
        if self._q_buffer is None or self._q_buffer.numel() < n_rows * width:
            self._q_buffer = torch.empty(
                n_rows * width, dtype=self.neg_log_normaliser.dtype, device=self.neg_log_normaliser.device
            )
        q = self._q_buffer[: n_rows * width].view(n_rows, width)
        tile = max(1, CACHE_ELEMENTS // width)
        direct = isinstance(self.scores_at_rows, ConceptScores) and self.scores_at_rows.is_view_of_rows()
        for r in range(0, n_rows, tile):
            part = q[r : r + tile]
            shift = self.neg_log_normaliser[r : r + tile, None]
            if direct:  # read P where it lies: a·P − z in one pass
                torch.add(
                    shift, self.scores_at_rows.block(start, stop, r, r + tile, writable=False), alpha=self.a, out=part
                )
            else:
                torch.add(shift, self.scores_at_rows.block_into(part, start, stop, r), alpha=self.a, out=part)
            part.exp_()
        return q

    def score(self, start: int, stop: int) -> Tensor:
        q = self._softmax_block(start, stop)
        k, top_k = self.positions.shape
        width = stop - start
        # Sums of logs and the prior reach |x| ~ 10², where float32 cannot resolve the score differences
        # that matter near S = log K (where soft-WPMI saturates), so they accumulate in float64.
        log_e = self._buffer("log_e", k * width, torch.float64).view(k, width).fill_(self.log_p_total)
        block = max(1, CACHE_ELEMENTS // (self.group * width))  # neurons whose terms stay in cache
        # The work arrays of every (neuron block, term group) live in buffers that serve all of them and
        # every concept block: the products' four-megabyte temporaries would otherwise be allocated and
        # freed thousands of times a call.
        terms_buffer = self._buffer("terms", block * self.group * width, q.dtype)
        product_buffer = self._buffer("product", block * width, q.dtype)
        log_buffer = self._buffer("log", block * width, torch.float64)
        for k0 in range(0, k, block):
            k1 = min(k, k0 + block)
            acc = log_e[k0:k1]
            for j0 in range(0, top_k, self.group):
                j1 = min(top_k, j0 + self.group)
                index = self.positions[k0:k1, j0:j1].reshape(-1)
                terms = torch.index_select(q, 0, index, out=terms_buffer[: index.numel() * width].view(-1, width))
                terms = terms.view(k1 - k0, j1 - j0, width).add_(self.offsets[j0:j1].view(1, -1, 1))
                product = torch.prod(terms, dim=1, out=product_buffer[: (k1 - k0) * width].view(k1 - k0, width))
                acc.add_(log_buffer[: (k1 - k0) * width].view(k1 - k0, width).copy_(product).log_())
        log_prior = torch.logsumexp(log_e, dim=0) - math.log(k)
        log_e.sub_(log_prior, alpha=self.lam)
        return torch.empty((k, width), dtype=q.dtype, device=q.device).copy_(log_e)  # log_e is reused

    def _buffer(self, name: str, numel: int, dtype: torch.dtype) -> Tensor:
        """A flat work array that persists across concept blocks, grown only when a block needs more."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[name] = torch.empty(numel, dtype=dtype, device=self.offsets.device)
        return buffer[:numel]


def _needed_rows(top: Tensor, source: Source) -> tuple[Tensor, Tensor, Source]:
    """The images some neuron needs, each neuron's top images as positions among them, and P seen there.

    A given P is read in contiguous row ranges when most images are needed: gathering scattered rows of
    a wide matrix costs more than the few unneeded rows. Embeddings are always restricted (cheaply).
    """
    rows, positions = torch.unique(top, sorted=True, return_inverse=True)
    if isinstance(source, ConceptScores) and 2 * rows.numel() > source.n_rows:
        return torch.arange(source.n_rows, device=top.device), top, source
    return rows, positions, source.restrict(rows)


def _safe_group_length(smallest: float, largest: float, dtype: torch.dtype, cap: int = 64) -> int:
    """Longest run of factors in [smallest, largest] whose partial products stay normal floats (2¹⁰ margin)."""
    info = torch.finfo(dtype)
    bound = float(cap)
    if smallest < 1:
        bound = min(bound, math.log(info.tiny * 1024) / math.log(smallest))
    if largest > 1:
        bound = min(bound, math.log(info.max / 1024) / math.log(largest))
    return max(1, int(bound))


class RankReorderKernel(Kernel):
    """Rank-reorder with one sort per (neuron, concept) column.

    For neuron k with top-n activations a_1 ≥ … ≥ a_n and a concept whose scores rank those images as
    σ(1), σ(2), … (highest first, ties in activation order), the reordered activations give
    err = mean_r |a_σ(r) − a_r|^p. It is divided by the neuron's permutation baseline
    mean_π mean_i |a_i − a_π(i)|^p (seeded permutations) and by max(mean score, min_mean_score)^scale_p;
    S = −err. On CPU in float32 each column is sorted as unique integer keys, which makes numpy's
    vectorised (unstable) sort exactly a stable argsort: 64-bit keys (order-preserving score bits above
    the activation rank), or, over many neurons, 32-bit keys (the score's rank within the concept, ranked
    once for all neurons, above the activation rank).
    """

    def __init__(self, activations: Tensor, source: Source, params: RankReorderParams, memory_budget: int):
        super().__init__(activations, source, memory_budget)
        self.params = params
        n = rank_reorder_top_n(self.n_images, params.top_fraction)
        top = top_images(activations, n)  # [K, n]
        self.top_values = activations.T.gather(1, top)  # [K, n], descending
        self.rows, self.positions, self.scores_at_rows = _needed_rows(top, source)
        perms = rank_reorder_permutations(n, params.n_permutations, params.seed).to(activations.device)
        shuffled = self.top_values[:, perms]  # [K, R, n]
        self.baseline = (
            (self.top_values[:, None, :] - shuffled).abs_().pow_(params.p).mean(dim=(1, 2), dtype=torch.float64)
        )
        self.baseline.clamp_min_(torch.finfo(torch.float64).tiny)
        self.packed_keys = (
            activations.device.type == "cpu" and activations.dtype == torch.float32 and sys.byteorder == "little"
        )

    def default_concept_chunk(self) -> int:
        n = self.top_values.shape[1]
        return self._fit(self.itemsize * (2 * self.rows.numel() + 8 * n), 4 * n)

    def score(self, start: int, stop: int) -> Tensor:
        p = self.params
        block_rows = self.scores_at_rows.block(start, stop)  # [rows, m]
        by_concept = block_rows.T.contiguous()  # [m, rows]
        m = stop - start
        k, n = self.positions.shape
        flat_positions = self.positions.reshape(-1)
        # Mean score of each neuron's top images, for all neurons at once (a fused gather-mean), in float64
        # because means of mixed-sign scores cancel.
        bags = torch.arange(0, k * n, n, device=block_rows.device)
        mean_score = nn.functional.embedding_bag(flat_positions, block_rows.double(), bags, mode="mean")
        normaliser = mean_score.clamp_min_(p.min_mean_score).pow_(p.scale_p).mul_(self.baseline[:, None])  # [K, m]
        rank_bits = max(1, (by_concept.shape[1] - 1).bit_length())
        position_bits = max(1, (n - 1).bit_length())
        # Ranking each concept's scores once lets every column sort 32-bit keys instead of 64-bit ones;
        # it pays off when the neurons' columns hold several times more entries than a concept has rows.
        small_keys = self.packed_keys and rank_bits + position_bits <= 31 and k * n >= 4 * by_concept.shape[1]
        dense = _dense_ranks(by_concept) if small_keys else None  # shared by all neurons of this block
        out = torch.empty(k, m, dtype=by_concept.dtype, device=by_concept.device)
        block = max(1, CACHE_ELEMENTS * 4 // (n * m))
        for k0 in range(0, k, block):
            k1 = min(k, k0 + block)
            flat = flat_positions[k0 * n : k1 * n]
            if dense is not None:
                order = _order_by_dense_rank(dense.index_select(1, flat).view(m, k1 - k0, n), position_bits)
            else:
                # [m, B, n]: for each concept, the scores of each neuron's top images in activation order.
                scores = by_concept.index_select(1, flat).view(m, k1 - k0, n)
                order = (
                    _descending_order(scores)
                    if self.packed_keys
                    else scores.argsort(dim=2, descending=True, stable=True)
                )
            values = self.top_values[None, k0:k1, :]
            reordered = values.expand(m, -1, -1).gather(2, order)  # a_σ(r)
            err = reordered.sub_(values).abs_().pow_(p.p).mean(dim=2, dtype=torch.float64)  # float64: no cancellation
            out[k0:k1] = err.T.div_(normaliser[k0:k1]).neg_()
        return out


_SORT_POOL: ThreadPoolExecutor | None = None


def _sort_rows_in_place(rows: np.ndarray) -> None:
    """numpy's vectorised sort of each row, on row ranges in threads (it releases the GIL)."""
    global _SORT_POOL
    threads = max(1, min(torch.get_num_threads(), rows.shape[0]))
    if threads == 1:
        rows.sort(axis=-1)
        return
    if _SORT_POOL is None or _SORT_POOL._max_workers != threads:
        _SORT_POOL = ThreadPoolExecutor(threads, thread_name_prefix="rank-reorder-sort")
    bounds = [rows.shape[0] * i // threads for i in range(threads + 1)]
    list(_SORT_POOL.map(lambda i: rows[bounds[i] : bounds[i + 1]].sort(axis=-1), range(threads)))


def _packed_descending_keys(scores: Tensor) -> Tensor:
    """int64 keys (order-preserving int of −score) · 2³² + position: ascending = score desc, then position."""
    n = scores.shape[-1]
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns −0.0 into +0.0 so they tie
    monotone = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order == float order
    halves = torch.empty(*scores.shape, 2, dtype=torch.int32)
    halves[..., 1] = ~monotone  # high word: larger score → smaller key (little-endian int64 layout)
    halves[..., 0] = torch.arange(n, dtype=torch.int32)  # low word: the position breaks ties
    return halves.view(torch.int64).view(*scores.shape)


def _descending_order(scores: Tensor) -> Tensor:
    """Stable descending argsort along the last axis of a float32 CPU tensor, via unique packed keys."""
    keys = _packed_descending_keys(scores)
    _sort_rows_in_place(keys.numpy().reshape(-1, scores.shape[-1]))
    return keys.bitwise_and_(0xFFFFFFFF)


def _dense_ranks(scores: Tensor) -> Tensor:
    """int32 [m, n]: each entry's dense rank within its row, 0 for the highest score; equal scores share one."""
    keys = _packed_descending_keys(scores)
    _sort_rows_in_place(keys.numpy().reshape(-1, scores.shape[-1]))
    high = keys >> 32
    starts = torch.ones(high.shape, dtype=torch.int32)
    starts[:, 1:] = high[:, 1:] != high[:, :-1]
    ranks = torch.empty(high.shape, dtype=torch.int32)
    ranks.scatter_(1, keys.bitwise_and_(0xFFFFFFFF), starts.cumsum(dim=1, dtype=torch.int32).sub_(1))
    return ranks


def _order_by_dense_rank(dense: Tensor, position_bits: int) -> Tensor:
    """Stable argsort by dense rank along the last axis: sort int32 keys rank · 2^bits + position."""
    keys = (dense << position_bits).bitwise_or_(torch.arange(dense.shape[-1], dtype=torch.int32))
    _sort_rows_in_place(keys.numpy().reshape(-1, dense.shape[-1]))
    return keys.bitwise_and_((1 << position_bits) - 1).long()


def rank_reorder_top_n(n_images: int, top_fraction: float) -> int:
    """Number of top images rank-reorder looks at: ⌊top_fraction · N⌋."""
    return int(top_fraction * n_images)


def rank_reorder_permutations(n: int, count: int, seed: int) -> Tensor:
    """The seeded permutations ``[count, n]`` of rank-reorder's error baseline."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(count)])
