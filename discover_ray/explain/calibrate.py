"""Calibration of the SigLIP-style concept activation C = σ(a·(cos + b)) (methods.md §3.1, §3.8).

LE(SigLIP) turns the cosine between an image and a concept text into a value in [0, 1] with two constants
(a, b), chosen to minimise the mean binary cross-entropy of σ(a·(cos + b)) against binary targets: on
ImageNet val, the one-hot classes plus the superclasses with at most 300 classes (``calibration_targets``).

``calibrate`` has two methods, both minimising the same loss, the exact mean BCE over all N·M entries
(computed as softplus(z) − t·z, so it never saturates; the reference's ``torch.nn.BCELoss`` clamps log at
−100, which only matters far from the optimum):

- ``"exact"``: the problem is a logistic regression on one feature with an intercept, convex in
  (a, β = a·b). Damped Newton on (a, β) in float64, streamed over row chunks, converged to the numerical
  optimum; b = β/a. It starts from the optimum of the binned loss below, so it needs two or three passes.
- ``"grid"``: the reference's grid search (``secondary/sigmoid_tuning_imagenet_sc.ipynb``), for parity:
  a over ``GRID_A`` in that order (0.1, 0.25, 0.5, 0.75, 1, then 0, 2, …, 150) in the outer loop, b over
  ``GRID_B`` ascending (−1.00 … 1.00) in the inner loop, keeping the first point of least loss (losses
  that agree to within the evaluation's accuracy, about 1e-12 relative, are ties). The 81 × 201 losses
  come from one pass over the data (binned moments of cos, see ``_grid_losses``), not 16 281 passes.

``PUBLISHED`` holds the constants the reference ships for its three explainer models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from discover_ray.errors import ExplainInputError

__all__ = [
    "GRID_A",
    "GRID_B",
    "METHODS",
    "PUBLISHED",
    "Calibration",
    "calibrate",
    "calibration_loss",
    "calibration_targets",
    "kept_superclasses",
    "published_calibration",
]

PUBLISHED: dict[tuple[str, str], tuple[float, float]] = {
    ("ViT-L-16-SigLIP-384", "webli"): (60.0, -0.09),
    ("ViT-SO400M-14-SigLIP-384", "webli"): (58.0, -0.13),
    ("ViT-L-14-336", "openai"): (58.0, -0.25),
}
"""(model, pretrained tag) → (a, b) as published by the reference (methods.md §3.1)."""

METHODS = ("exact", "grid")

GRID_A: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0, *(2.0 * n for n in range(76)))
"""The reference's a values, in its loop order (81 values)."""

GRID_B: tuple[float, ...] = tuple(n / 100 for n in range(-100, 101))
"""The reference's b values, ascending (201 values; n/100, the correctly rounded two-decimal numbers)."""

#: Working elements (rows × columns) per streamed chunk when ``chunk`` is not given: 16 MiB per float64 temporary.
_CHUNK_ELEMENTS = 2**21
#: cos values may exceed [-1, 1] by this much (rounding of half-precision embeddings) and still be accepted.
_COS_SLACK = 1e-2
#: Bin width of the grid's exact-moment histogram over cos, and the order of its Taylor expansion (see _grid).
_BIN = 0.0005
_B_STEP_BINS = 20  # GRID_B's step, 0.01, in bins
_ORDER = 6
#: max |softplus⁽⁷⁾| over the reals (the Taylor remainder's constant)
_NEXT_DERIVATIVE_MAX = 0.4084
#: Newton stops when half the squared Newton decrement (the predicted decrease of the mean loss) is below this,
#: or when a step's promised decrease falls below float64 rounding of the loss (relative _NOISE).
_NEWTON_TOL = 1e-17
_NOISE = 1e-14
_MAX_NEWTON = 100


@dataclass(frozen=True)
class Calibration:
    """Constants of C = σ(a·(cos + b)) and the mean BCE they reach on the calibration targets."""

    a: float
    b: float
    loss: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self, cos: Tensor) -> Tensor:
        """The calibrated concept activation σ(a·(cos + b)), in cos's dtype."""
        return torch.sigmoid(self.a * (cos + self.b))


def published_calibration(model: str, pretrained: str | None = None) -> tuple[float, float] | None:
    """The reference's (a, b) for an open_clip model and pretrained tag, or None when it published none.

    Without ``pretrained`` the model name alone decides when exactly one published entry has it.
    """
    if pretrained is not None:
        return PUBLISHED.get((model, pretrained))
    found = [value for (name, _), value in PUBLISHED.items() if name == model]
    return found[0] if len(found) == 1 else None


# ----- inputs -----------------------------------------------------------------------------------------
def _check_pair(cos: Tensor, targets: Tensor) -> None:
    if not isinstance(cos, Tensor) or not isinstance(targets, Tensor):
        raise ExplainInputError(
            f"calibrate needs two tensors, got cos {type(cos).__name__} and targets {type(targets).__name__}")
    if cos.dim() != 2:
        raise ExplainInputError(f"cos must be a 2-d tensor [images, concepts], got shape {tuple(cos.shape)}")
    if targets.shape != cos.shape:
        raise ExplainInputError(
            f"targets must have the shape of cos {tuple(cos.shape)}, got {tuple(targets.shape)}")
    if cos.numel() == 0:
        raise ExplainInputError(f"cos is empty (shape {tuple(cos.shape)}): nothing to calibrate on")
    if cos.is_complex() or targets.is_complex():
        raise ExplainInputError(f"cos and targets must hold real numbers, got {cos.dtype} and {targets.dtype}")


def _rows(n_rows: int, n_cols: int, chunk: int | None) -> int:
    if chunk is None:
        return max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    if int(chunk) < 1:
        raise ExplainInputError(f"chunk must be a positive number of rows, got {chunk}")
    return int(chunk)


def _chunks(cos: Tensor, targets: Tensor, rows: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(cos, targets) row chunks as float64 on cos's device."""
    for start in range(0, cos.shape[0], rows):
        x = cos[start : start + rows].to(torch.float64).reshape(-1)
        t = targets[start : start + rows].to(device=x.device, dtype=torch.float64).reshape(-1)
        yield x, t


@dataclass
class _Stats:
    """One validating pass: sums over all entries, and the grid's binned moments of cos."""

    n: int = 0
    sum_x: float = 0.0
    sum_xx: float = 0.0
    sum_t: float = 0.0
    sum_tx: float = 0.0
    min_pos: float = math.inf
    max_pos: float = -math.inf
    min_neg: float = math.inf
    max_neg: float = -math.inf
    moments: Tensor | None = None  # [bins, _ORDER + 1]: Σ δ^k per bin of cos, δ = cos − bin centre


def _n_bins() -> int:
    return int(math.ceil(2 * (1 + _COS_SLACK) / _BIN))


def _bin_centres(device: torch.device) -> Tensor:
    return -(1 + _COS_SLACK) + (torch.arange(_n_bins(), dtype=torch.float64, device=device) + 0.5) * _BIN


def _scan(cos: Tensor, targets: Tensor, rows: int, separation: bool) -> _Stats:
    """One pass over the data: validation, sums, the binned moments of cos and, if asked, the ranges of cos
    over the positive and the negative entries (which tell whether cos separates the targets)."""
    stats = _Stats()
    centres = _bin_centres(cos.device)
    stats.moments = torch.zeros(_ORDER + 1, centres.numel(), dtype=torch.float64, device=cos.device)
    for start in range(0, cos.shape[0], rows):
        where = f"rows {start}..{start + rows - 1}" if rows < cos.shape[0] else "the input"
        raw = targets[start : start + rows].to(cos.device)
        if raw.dtype != torch.bool and not bool(((raw == 0) | (raw == 1)).all()):
            bad = raw[(raw != 0) & (raw != 1)]
            raise ExplainInputError(
                f"targets must be 0 or 1; {bad.numel()} value(s) in {where} are not (first: {bad[0].item()!r})")
        x = cos[start : start + rows].to(torch.float64).reshape(-1)
        t = raw.to(torch.float64).reshape(-1)
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(x)).sum())
            raise ExplainInputError(f"cos holds {bad} NaN or infinite value(s) in {where}")
        if lo < -1 - _COS_SLACK or hi > 1 + _COS_SLACK:
            raise ExplainInputError(
                f"cos must hold cosine similarities in [-1, 1]; {where} range over [{lo:.4g}, {hi:.4g}]")
        stats.n += x.numel()
        stats.sum_x += float(x.sum())
        stats.sum_xx += float(torch.dot(x, x))
        stats.sum_t += float(t.sum())
        stats.sum_tx += float(torch.dot(t, x))
        if separation:
            pos = t == 1
            inf = torch.tensor(math.inf, dtype=torch.float64, device=x.device)
            stats.min_pos = min(stats.min_pos, float(torch.where(pos, x, inf).min()))
            stats.max_pos = max(stats.max_pos, float(torch.where(pos, x, -inf).max()))
            stats.min_neg = min(stats.min_neg, float(torch.where(pos, inf, x).min()))
            stats.max_neg = max(stats.max_neg, float(torch.where(pos, -inf, x).max()))
        # Σ δ^k per bin, δ = x − bin centre (powers built by repeated products, one row per power)
        index = ((x + (1 + _COS_SLACK)) / _BIN).floor().long().clamp_(0, centres.numel() - 1)
        powers = torch.empty(_ORDER + 1, x.numel(), dtype=torch.float64, device=x.device)
        powers[0] = 1
        torch.sub(x, centres[index], out=powers[1])
        for k in range(2, _ORDER + 1):
            torch.mul(powers[k - 1], powers[1], out=powers[k])
        stats.moments.index_add_(1, index, powers)
    stats.moments = stats.moments.T.contiguous()
    return stats


def _check_targets(stats: _Stats) -> None:
    if stats.sum_t == 0 or stats.sum_t == stats.n:
        raise ExplainInputError(
            f"targets are all {int(stats.sum_t > 0)}: the calibration loss has no finite minimum; "
            "it needs both positive and negative entries")


# ----- loss -------------------------------------------------------------------------------------------
def _softplus(z: Tensor) -> Tensor:
    """log(1 + e^z) without overflow and without torch's threshold (which returns z above 20)."""
    return z.clamp(min=0) + torch.log1p(torch.exp(-z.abs()))


def _softplus_derivatives(z: Tensor) -> tuple[Tensor, ...]:
    """softplus(z) and its first six derivatives, written in p = σ(z) and q = σ(−z) (all stable)."""
    p, q = torch.sigmoid(z), torch.sigmoid(-z)
    pq = p * q
    skew = pq * (q - p)
    return _softplus(z), p, pq, skew, pq * (1 - 6 * pq), skew * (1 - 12 * pq), pq * (1 - 30 * pq + 120 * pq * pq)


def calibration_loss(cos: Tensor, targets: Tensor, a: float, b: float, *, chunk: int | None = None) -> float:
    """Mean binary cross-entropy of σ(a·(cos + b)) against ``targets`` over all entries, in float64."""
    _check_pair(cos, targets)
    rows = _rows(*cos.shape, chunk)
    total, n = 0.0, 0
    for x, t in _chunks(cos, targets, rows):
        z = a * (x + b)
        total += float((_softplus(z) - t * z).sum())
        n += x.numel()
    if not math.isfinite(total):
        raise ExplainInputError("cos or targets hold NaN or infinite values")
    return total / n


# ----- exact: Newton on (a, β) ----------------------------------------------------------------------
def _newton_pass(cos: Tensor, targets: Tensor, rows: int, alpha: float, gamma: float, mu: float, s: float,
                 stats: _Stats) -> tuple[float, Tensor, Tensor]:
    """Mean loss, gradient and Hessian at z = α·u + γ, u = (cos − μ)/s (standardised for conditioning)."""
    sp = sig = sig_u = w = w_u = w_uu = 0.0
    for start in range(0, cos.shape[0], rows):
        u = (cos[start : start + rows].to(torch.float64).reshape(-1) - mu) / s
        z = alpha * u + gamma
        p = torch.sigmoid(z)
        pq = p * torch.sigmoid(-z)
        sp += float(_softplus(z).sum())
        sig += float(p.sum())
        sig_u += float((p * u).sum())
        w += float(pq.sum())
        w_u += float((pq * u).sum())
        w_uu += float((pq * u * u).sum())
    n = stats.n
    sum_tu = (stats.sum_tx - mu * stats.sum_t) / s
    loss = (sp - alpha * sum_tu - gamma * stats.sum_t) / n
    grad = torch.tensor([sig_u - sum_tu, sig - stats.sum_t], dtype=torch.float64) / n
    hess = torch.tensor([[w_uu, w_u], [w_u, w]], dtype=torch.float64) / n
    return loss, grad, hess


def _binned_start(stats: _Stats, a: float, beta: float, device: torch.device) -> tuple[float, float]:
    """Newton on the binned loss (the grid's Taylor sums, at any (a, β)): a start next to the optimum.

    The binned loss differs from the exact one by far less than anything Newton resolves, so the exact
    passes that follow need only a step or two; this saves most passes over the data.
    """
    assert stats.moments is not None
    occupied = stats.moments[:, 0] > 0
    m, centres = stats.moments[occupied].to(device), _bin_centres(device)[occupied.to(device)]
    factorial = [math.factorial(k) for k in range(_ORDER + 1)]

    def loss(theta: Tensor) -> Tensor:
        slope, intercept = theta[0], theta[1]
        total = sum(slope**k / factorial[k] * (f @ m[:, k])
                    for k, f in enumerate(_softplus_derivatives(slope * centres + intercept)))
        return (total - slope * stats.sum_tx - intercept * stats.sum_t) / stats.n

    theta = torch.tensor([a, beta], dtype=torch.float64, device=device)
    value = loss(theta)
    for _ in range(_MAX_NEWTON):
        grad = torch.autograd.functional.jacobian(loss, theta)
        hess = torch.autograd.functional.hessian(loss, theta)
        step = -torch.linalg.solve(hess, grad)
        decrement = float(-(grad @ step))
        if not decrement / 2 > _NEWTON_TOL:  # also stops on NaN (a singular Hessian)
            break
        size = 1.0
        while 0.25 * size * decrement > _NOISE * abs(float(value)):
            trial = theta + size * step
            trial_value = loss(trial)
            if float(trial_value) <= float(value) - 0.25 * size * decrement:
                theta, value = trial, trial_value
                break
            size /= 2
        else:
            break
    return float(theta[0]), float(theta[1])


def _exact(cos: Tensor, targets: Tensor, rows: int) -> Calibration:
    stats = _scan(cos, targets, rows, separation=True)
    _check_targets(stats)
    mu = stats.sum_x / stats.n
    s = math.sqrt(max(stats.sum_xx / stats.n - mu * mu, 0.0))
    if not s > 1e-12:
        raise ExplainInputError("cos is constant: a and b cannot be told apart; use method='grid'")
    if stats.min_pos >= stats.max_neg or stats.max_pos <= stats.min_neg:
        raise ExplainInputError(
            "cos separates the targets perfectly (every positive entry lies on one side of every negative one): "
            "the loss has no finite minimum (a → ±∞); use method='grid' or more varied targets")
    rate = stats.sum_t / stats.n
    # from the best constant model, Newton on the binned loss, then on the exact one (standardised cos)
    a0, beta0 = _binned_start(stats, 0.0, math.log(rate / (1 - rate)), cos.device)
    alpha, gamma = a0 * s, beta0 + a0 * mu
    loss, grad, hess = _newton_pass(cos, targets, rows, alpha, gamma, mu, s, stats)
    for _ in range(_MAX_NEWTON):
        step = -torch.linalg.solve(hess, grad)
        decrement = float(-(grad @ step))  # λ² = gᵀH⁻¹g, twice the predicted decrease
        if decrement / 2 <= _NEWTON_TOL:
            break
        size, new = 1.0, None
        while 0.25 * size * decrement > _NOISE * abs(loss):  # backtracking: a quarter of the promise (Armijo)
            a_new, g_new = alpha + size * float(step[0]), gamma + size * float(step[1])
            trial = _newton_pass(cos, targets, rows, a_new, g_new, mu, s, stats)
            if trial[0] <= loss - 0.25 * size * decrement:
                new = trial
                break
            size /= 2
        if new is None:
            break  # no decrease above float64 rounding is left: at the optimum to working precision
        alpha, gamma = a_new, g_new
        loss, grad, hess = new
    a = alpha / s
    beta = gamma - a * mu  # z = a·cos + β
    if abs(a) < 1e-9:
        raise ExplainInputError(
            f"the fitted slope a is {a:.3g} (≈ 0): cos carries no information about the targets, so b = β/a "
            "is undefined")
    return Calibration(a=a, b=beta / a, loss=loss, method="exact")


# ----- grid -------------------------------------------------------------------------------------------
def _remainder_bound(a: float) -> float:
    """Bound on the per-entry error of the order-6 Taylor sum: max|softplus⁽⁷⁾| · (a·h/2)⁷ / 7!."""
    return _NEXT_DERIVATIVE_MAX * (abs(a) * _BIN / 2) ** (_ORDER + 1) / math.factorial(_ORDER + 1)


def _grid_losses(stats: _Stats, device: torch.device) -> Tensor:
    """Mean loss at every grid point, [len(GRID_A), len(GRID_B)].

    Σ_i softplus(a·(x_i + b)) depends on cos only, not on the targets; it is summed per bin of width
    h = 0.0005 from the exact moments Σ δ^k of each bin (δ = x − bin centre) by the Taylor expansion of
    softplus to order 6 about a·(centre + b). With |a·δ| ≤ 150·h/2 the remainder is below 1e-14 per entry
    (``_remainder_bound``), close to the rounding of a direct float64 sum over millions of entries. The
    targets enter through a·(Σ t·x + b·Σ t) only.

    The b step is 20 bins, so every centre + b lies on one lattice of points h apart: softplus and its
    derivatives are evaluated once per (a, lattice point), and the sums for all 81 × 201 points are one
    matrix product per derivative with a banded matrix of the moments (a handful of large operations, not
    thousands of small ones). At a = 0 every b gives the same loss up to rounding, as in the reference.
    """
    assert stats.moments is not None
    occupied = torch.nonzero(stats.moments[:, 0] > 0).flatten()
    first, last = int(occupied[0]), int(occupied[-1])
    m = stats.moments[first : last + 1].to(device)  # [width, order + 1]: the occupied range of bins
    width = last - first + 1
    steps = len(GRID_B) - 1
    # lattice point t is centre(first) + GRID_B[0] + t·h; centre(first + j) + GRID_B[i] is lattice point j + 20·i
    lattice = float(_bin_centres(torch.device("cpu"))[first]) + GRID_B[0] + _BIN * torch.arange(
        width + _B_STEP_BINS * steps, dtype=torch.float64, device=device)
    a = torch.tensor(GRID_A, dtype=torch.float64, device=device)
    b = torch.tensor(GRID_B, dtype=torch.float64, device=device)
    powers = a[:, None] ** torch.arange(_ORDER + 1, dtype=torch.float64, device=device) / torch.tensor(
        [math.factorial(k) for k in range(_ORDER + 1)], dtype=torch.float64, device=device)  # [a, k]: a^k / k!
    # Σ_k (a^k/k!) Σ_j f_k(a·lattice[j + 20·i]) · m[j, k] for every a and i: one matrix product per k with
    # the banded matrix band[j + 20·i, i] = m[j, k]
    rows = (torch.arange(width, device=device)[:, None] + _B_STEP_BINS * torch.arange(len(GRID_B), device=device))
    columns = torch.arange(len(GRID_B), device=device).expand(width, -1)
    total = torch.zeros(len(GRID_A), len(GRID_B), dtype=torch.float64, device=device)
    for k, f in enumerate(_softplus_derivatives(a[:, None] * lattice[None, :])):  # f: [a, lattice]
        band = torch.zeros(lattice.numel(), len(GRID_B), dtype=torch.float64, device=device)
        band[rows, columns] = m[:, k, None].expand(-1, len(GRID_B))
        total += powers[:, k, None] * (f @ band)
    return ((total - a[:, None] * (stats.sum_tx + b[None, :] * stats.sum_t)) / stats.n).cpu()


def _grid(cos: Tensor, targets: Tensor, rows: int) -> Calibration:
    stats = _scan(cos, targets, rows, separation=False)
    _check_targets(stats)
    losses = _grid_losses(stats, cos.device)
    # The first least value in loop order (a outer, b inner). Values within the evaluation's accuracy of the
    # least count as ties: the Taylor remainder bound at the largest a, twice, plus float64 rounding.
    flat = losses.reshape(-1)
    least = float(flat.min())
    tolerance = 2 * _remainder_bound(max(GRID_A)) + 1e-12 * abs(least)
    best = int(torch.nonzero(flat <= least + tolerance)[0, 0])
    a, b = GRID_A[best // len(GRID_B)], GRID_B[best % len(GRID_B)]
    return Calibration(a=a, b=b, loss=calibration_loss(cos, targets, a, b, chunk=rows), method="grid")


def calibrate(cos: Tensor, targets: Tensor, *, method: str = "exact", chunk: int | None = None) -> Calibration:
    """The (a, b) of C = σ(a·(cos + b)) that minimise the mean BCE against ``targets`` over all entries.

    Args:
        cos: [N, M] cosine similarities between N images and M texts (any float dtype, CPU or CUDA;
            streamed in float64 chunks on its device, so it need not fit in memory twice).
        targets: [N, M] binary targets (0/1 in any dtype), e.g. ``calibration_targets(...)``.
        method: ``"exact"`` (Newton's method on the convex problem in (a, β = a·b); the optimum) or
            ``"grid"`` (the reference's grid; the first least point, a outer in ``GRID_A`` order, b inner).
        chunk: rows per streamed chunk; by default about 2M entries.

    Raises:
        ExplainInputError: shapes that differ or are empty, NaN or infinite cos, cos outside [-1, 1],
            targets other than 0/1, targets all 0 or all 1; for ``"exact"`` also a constant cos, targets
            that cos separates perfectly, or a slope a ≈ 0 (no finite or no defined optimum).
    """
    if method not in METHODS:
        raise ExplainInputError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    _check_pair(cos, targets)
    rows = _rows(*cos.shape, chunk)
    with torch.no_grad():
        if method == "exact":
            return _exact(cos, targets, rows)
        return _grid(cos, targets, rows)


# ----- targets ----------------------------------------------------------------------------------------
def kept_superclasses(superclasses: Mapping[str, Sequence[int]] | None, max_classes: int = 300) -> list[str]:
    """Names of the superclasses with at most ``max_classes`` distinct classes, in mapping order.

    On ImageNet this drops the nine largest (entity 1000 … instrumentality 358) and keeps 391 of 400.
    """
    if not superclasses:
        return []
    return [name for name, ids in superclasses.items() if len(set(ids)) <= max_classes]


def calibration_targets(labels: Sequence[int] | Tensor, n_classes: int,
                        superclasses: Mapping[str, Sequence[int]] | None = None, max_classes: int = 300) -> Tensor:
    """[N, n_classes + kept superclasses] float32 0/1: one-hot classes, then one indicator per kept superclass.

    Column ``n_classes + j`` is 1 for the images whose class is in the j-th of ``kept_superclasses``
    (mapping order), as in the reference's calibration notebook (methods.md §3.1, §3.8).
    """
    if n_classes < 1:
        raise ExplainInputError(f"n_classes must be at least 1, got {n_classes}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() == 0:
        raise ExplainInputError(
            f"labels must be a non-empty 1-d sequence of class ids, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ExplainInputError(f"labels must be integer class ids, got {labels.dtype}")
    labels = labels.long()
    if bool(((labels < 0) | (labels >= n_classes)).any()):
        bad = labels[(labels < 0) | (labels >= n_classes)]
        raise ExplainInputError(
            f"{bad.numel()} label(s) outside [0, {n_classes}) (first: {int(bad[0])}); n_classes is {n_classes}")
    names = kept_superclasses(superclasses, max_classes)
    membership = torch.zeros(n_classes, len(names), dtype=torch.float32)
    for j, name in enumerate(names):
        ids = torch.as_tensor(list(superclasses[name]), dtype=torch.long)  # type: ignore[index]
        if bool(((ids < 0) | (ids >= n_classes)).any()):
            raise ExplainInputError(f"superclass {name!r} names classes outside [0, {n_classes}): {ids.tolist()}")
        membership[ids, j] = 1.0
    one_hot = torch.nn.functional.one_hot(labels, n_classes).to(torch.float32)
    return torch.cat([one_hot, membership[labels]], dim=1)
