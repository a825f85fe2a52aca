"""Linear Explanations (Oikarinen & Weng, ICML 2024): each neuron as a short weighted sum of concepts.

A neuron's explanation is ``a_k(x) ≈ Σ_j w_j c_j(x) + b`` over at most ``max_length`` concepts, found in two
steps (methods.md §3.4–3.5, with the fixes of §3.8 and project decision 7):

1. Ranking. An elastic net of every neuron on the train-standardised concepts orders each neuron's concepts
   by weight, descending and signed (so negative weights come after the zeros). ``ranking="fista"`` (the
   default) solves it to convergence on the M×M Gram matrix; ``ranking="saga"`` reproduces the reference's
   mini-batch proximal SAGA, which stops far from the optimum.
2. Greedy search. Round by round, each neuron's first ``width`` ranked concepts not yet chosen or rejected
   are each tried next to the chosen ones; a model is fitted on raw train data (with a bias) and scored by
   its Pearson correlation on val. The best candidate is added while it improves the correlation by at least
   ``tolerance``; candidates that do not are rejected for good.

Everything after the data passes works on float64 Gram statistics (train and val CᵀC, CᵀA, means), so the
cost does not depend on the number of images, and every neuron is processed at once as batched tensor ops.
Only the rows in ``train`` ∪ ``val`` are ever read: test rows are never touched (not even validated).

Design decisions, and where they differ from the reference code:

* Statistics are train-only: concept pruning, standardisation of concepts and targets (REF uses all rows).
* The converged ranking leaves most weights at exactly 0; those concepts are ordered by their |marginal
  correlation| with the neuron on train, then by index, and negative weights come after them (the signed
  descending order of the reference). The solver is a working-set FISTA whose subproblems are finished
  exactly on their support (see ``_rank_fista``, ``_fista``, ``_polish``): each neuron's working sets,
  step size and stopping decisions are its own, so a neuron's explanation does not depend on which
  neurons share the call (up to float rounding). It never forms anything larger than the M×M Gram, the
  K×M cross terms and a batch of small working-set Grams.
* The small models are fitted "to optimal" by closed-form least squares (``fit="lstsq"``); ``fit="adam"``
  replays the reference's 100 Adam steps for parity. The greedy search returns exactly the chosen concepts
  (REF rebuilds the list from the last candidate tried), and a neuron whose first round finds no positive
  correlation gets an empty explanation instead of a crash.
* Dead neurons (constant on train or on val) are reported in ``dead`` with an empty explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from discover_ray.errors import ExplainInputError

__all__ = ["LinearExplanations", "linear_explanations"]

RANKINGS = ("auto", "fista", "saga")
FITS = ("lstsq", "adam")

#: concept pruning (REF): keep a concept iff the mean of its top-5 train values and its train std reach these
PRUNE_TOP = 5
PRUNE_TOP_MEAN = 0.5
PRUNE_MIN_STD = 1e-5
#: C may leave [0, 1] by this much (float rounding of a sigmoid) before it is an error
RANGE_SLACK = 1e-6
#: a neuron is dead when its std ≤ DEAD_RTOL · (1 + |mean|)
DEAD_RTOL = 1e-8
#: how many ranked concepts per neuron ``LinearExplanations.ranking`` keeps for inspection
RANKING_CAP = 64
#: ridge added to each small least-squares system, times its trace: only guards singular systems
LSTSQ_RIDGE = 1e-10
#: a prediction whose val variance is below this fraction of Σ w_j² var(c_j) is constant (r undefined)
CONSTANT_PREDICTION = 1e-12

#: the reference's Adam fit of each candidate model
ADAM_STEPS = 100
ADAM_LR = 0.3
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

#: the reference's GLM-SAGA (glm_saga as LE calls it)
SAGA_LR = 5e-4
SAGA_BATCH = 512
SAGA_EPOCHS = 500
SAGA_TOL_PER_NEURON = 1e-5
SAGA_LOOKBEHIND = 5
SAGA_NEURON_CHUNK = 128

#: working-set FISTA: rounds of working-set growth, and iterations per round
FISTA_MAX_ROUNDS = 40
FISTA_MAX_ITER = 2000
#: FISTA tries the exact solution on a support (``_polish``) once it has been stable this many iterations
FISTA_POLISH_EVERY = 10
#: power iterations for the step size, and the margin put on their estimate
FISTA_POWER_STEPS = 30
FISTA_POWER_SAFETY = 1.1
#: smallest number of concepts a working set grows by in a round
FISTA_WS_GROW = 32
#: elements per block of the batched working-set Grams (neurons are processed in blocks of this size)
FISTA_BLOCK_ELEMENTS = 1 << 25
#: elements per block of rows read from A and C
ROW_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class LinearExplanations:
    """The explanations of one layer's K neurons over a concept matrix with M columns (all on CPU)."""

    concepts: Tensor  # [K, max_length] int64: column indices into C in the order chosen, -1 padded
    weights: Tensor  # [K, max_length] float64: aligned with concepts, 0 padded
    bias: Tensor  # [K] float64
    val_correlation: Tensor  # [K] float64: Pearson r on val of the final explanation; 0 when empty
    dead: Tensor  # [K] bool: constant on train or on val
    kept: Tensor  # [M] bool: concepts that survived pruning
    ranking: Tensor  # [K, R] int64: each neuron's first R = min(#kept, RANKING_CAP) ranked concepts

    def terms(self, k: int) -> list[tuple[int, float]]:
        """(concept index, weight) of neuron ``k``, in the order chosen."""
        used = self.concepts[k] >= 0
        return list(zip(self.concepts[k][used].tolist(), self.weights[k][used].tolist()))

    def lengths(self) -> Tensor:
        """[K] number of concepts in each explanation."""
        return (self.concepts >= 0).sum(dim=1)


@dataclass(frozen=True)
class _Moments:
    """Float64 centred sums of one split over the kept concepts (the greedy search needs nothing else)."""

    n: int
    mean_c: Tensor  # [M]
    mean_a: Tensor  # [K]
    cc: Tensor  # [M, M] Σ (c - mean)(c - mean)ᵀ
    ca: Tensor  # [M, K] Σ (c - mean)(a - mean)ᵀ
    aa: Tensor  # [K] Σ (a - mean)²


@dataclass(frozen=True)
class _Scan:
    """Per-column statistics of one split over all concepts, and the problems found in its values."""

    n: int
    mean_c: Tensor  # [M]
    m2_c: Tensor  # [M] centred sum of squares
    top_mean: Tensor | None  # [M] mean of the PRUNE_TOP largest values
    mean_a: Tensor  # [K]
    m2_a: Tensor  # [K]
    bad_a: Tensor  # [K] non-finite values per neuron
    bad_c: Tensor  # [M] non-finite values per concept
    outside_c: Tensor  # [M] values outside [0, 1] per concept
    c_min: float
    c_max: float


@dataclass(frozen=True)
class _Problem:
    """What the greedy search needs: train and val moments over the kept concepts, and who is dead."""

    train: _Moments
    val: _Moments
    dead: Tensor  # [K] bool


def linear_explanations(
    A: Tensor,
    C: Tensor,
    *,
    train: Tensor,
    val: Tensor,
    max_length: int = 10,
    tolerance: float = 0.02,
    width: int = 10,
    glm_lambda: float = 0.05,
    alpha: float = 0.99,
    ranking: str = "auto",
    fit: str = "lstsq",
    greedy: bool = True,
    ablation_length: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LinearExplanations:
    """Explain every neuron (column) of ``A`` [N, K] as a sparse linear model of the concepts ``C`` [N, M].

    ``train`` and ``val`` are row indices (or boolean masks) of A and C; other rows are never read.
    ``max_length``, ``tolerance`` and ``width`` drive the greedy search (paper: 10, 0.02, 10).
    ``glm_lambda`` and ``alpha`` set the ranking's elastic net (λ = glm_lambda / alpha, as in the reference);
    ``ranking`` is "auto" (= "fista", converged) or "saga" (the reference's solver, seeded by ``seed``).
    ``fit`` is "lstsq" (exact) or "adam" (the reference's 100 steps). ``greedy=False`` is the paper's
    ablation: the first ``ablation_length`` ranked concepts, fitted once. ``device`` defaults to CUDA when
    available; ``dtype`` (default float32) is used for the ranking's matrix products, while every statistic
    of the greedy search is float64. ``concepts`` has max(max_length, ablation_length) columns without the
    greedy search, ``max_length`` with it.
    """
    device, dtype = _resolve_device(device, dtype)
    ranking = _check_options(ranking, fit, max_length, width, tolerance, glm_lambda, alpha, ablation_length)
    _check_matrices(A, C)
    train_rows = _check_rows(train, A.shape[0], "train")
    val_rows = _check_rows(val, A.shape[0], "val")
    _check_disjoint(train_rows, val_rows, A.shape[0])

    scan_train = _scan(A, C, train_rows, device, top=True)
    scan_val = _scan(A, C, val_rows, device, top=False)
    _raise_on_bad_values(scan_train, scan_val)
    kept = _prune_concepts(scan_train)
    kept_idx = kept.nonzero().squeeze(1)
    problem = _problem(A, C, train_rows, val_rows, kept_idx.to(device), scan_train, scan_val, device)

    l1, l2 = glm_lambda, glm_lambda / alpha * (1.0 - alpha)  # λα and λ(1-α) with λ = glm_lambda / alpha
    gram, rho = _standardised(problem.train, problem.dead)
    if ranking == "saga":
        del gram
        weights = _rank_saga(A, C, train_rows, kept_idx.to(device), problem, l1, l2, seed, dtype)
    else:
        gram = gram.to(dtype)
        weights = _rank_fista(gram, rho.to(dtype), l1, l2, ~problem.dead)
        del gram
    # deep enough that the greedy search never runs out: each round rejects at most `width` concepts
    depth = min(kept_idx.numel(), max(max_length * (width + 1), ablation_length, RANKING_CAP))
    order = _ranking_order(weights, rho, depth)

    if greedy:
        chosen, w, b, r = _greedy_search(order, problem, max_length, width, tolerance, fit)
        columns = max_length
    else:
        chosen, w, b, r = _fixed_explanation(order, problem, min(ablation_length, depth), fit)
        columns = max(max_length, ablation_length)
    return _assemble(chosen, w, b, r, problem, kept, kept_idx, order, columns)


# ---------------------------------------------------------------------------------------------------------
# Input checks


def _resolve_device(device: str | torch.device | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """CUDA when there is one (the ranking's products are the heavy part), float32 for those products."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ExplainInputError(f"dtype must be torch.float32 or torch.float64, not {dtype}")
    return torch.device(device), dtype


def _check_options(ranking: str, fit: str, max_length: int, width: int, tolerance: float, glm_lambda: float,
                   alpha: float, ablation_length: int) -> str:
    """The scalar options; returns the ranking solver to use ("auto" is "fista")."""
    if ranking not in RANKINGS:
        raise ExplainInputError(f"ranking must be one of {', '.join(RANKINGS)}, not {ranking!r}")
    if fit not in FITS:
        raise ExplainInputError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    for name, value in (("max_length", max_length), ("width", width), ("ablation_length", ablation_length)):
        if int(value) != value or value < 1:
            raise ExplainInputError(f"{name} must be an integer ≥ 1, not {value!r}")
    if not math.isfinite(tolerance):
        raise ExplainInputError(f"tolerance must be a finite number, not {tolerance!r}")
    if not (math.isfinite(glm_lambda) and glm_lambda >= 0):
        raise ExplainInputError(f"glm_lambda must be a finite number ≥ 0, not {glm_lambda!r}")
    if not 0 < alpha <= 1:
        raise ExplainInputError(f"alpha (the L1 share of the elastic net) must be in (0, 1], not {alpha!r}")
    return "fista" if ranking == "auto" else ranking


def _check_matrices(A: Tensor, C: Tensor) -> None:
    """Shapes and kinds of A [N, K] and C [N, M]; their values are checked on the rows used only."""
    for name, x in (("A (activations)", A), ("C (concepts)", C)):
        if not isinstance(x, Tensor):
            raise ExplainInputError(f"{name} must be a torch.Tensor, not {type(x).__name__}")
        if x.dim() != 2:
            raise ExplainInputError(f"{name} must be 2-D [images, columns], got shape {tuple(x.shape)}")
        if x.is_complex():
            raise ExplainInputError(f"{name} must be real, got {x.dtype}")
    if A.shape[0] != C.shape[0]:
        raise ExplainInputError(
            f"A has {A.shape[0]} rows but C has {C.shape[0]}; both must hold the same images in the same order"
        )
    if A.shape[1] == 0:
        raise ExplainInputError("A has no neurons (0 columns)")


def _check_rows(rows: Tensor, n: int, name: str) -> Tensor:
    """A split as sorted int64 row indices: non-empty (≥ 2 rows), in range, no repeats. Masks are accepted."""
    rows = torch.as_tensor(rows)
    if rows.dtype == torch.bool:
        if rows.shape != (n,):
            raise ExplainInputError(f"{name} is a boolean mask of shape {tuple(rows.shape)}; it must have shape ({n},)")
        rows = rows.nonzero().squeeze(1)
    if rows.dim() != 1:
        raise ExplainInputError(f"{name} must be a 1-D tensor of row indices, got shape {tuple(rows.shape)}")
    if rows.numel() < 2:
        raise ExplainInputError(
            f"{name} holds {rows.numel()} rows; it needs at least 2 (a correlation needs two images) — "
            f"pass the {name} split's row indices"
        )
    if rows.is_floating_point() or rows.is_complex():
        raise ExplainInputError(f"{name} must hold integer row indices, got {rows.dtype}")
    rows = rows.to(device="cpu", dtype=torch.long)
    if int(rows.min()) < 0 or int(rows.max()) >= n:
        raise ExplainInputError(f"{name} has row indices outside [0, {n}) (min {int(rows.min())}, max "
                                f"{int(rows.max())}); indices must address rows of A and C")
    rows = rows.sort().values
    if bool((rows[1:] == rows[:-1]).any()):
        raise ExplainInputError(f"{name} repeats row indices; each image may appear once in a split")
    return rows


def _check_disjoint(train: Tensor, val: Tensor, n: int) -> None:
    """Choosing concepts on rows that were fitted on would reward overfitting."""
    seen = torch.zeros(n, dtype=torch.bool)
    seen[train] = True
    shared = int(seen[val].sum())
    if shared:
        raise ExplainInputError(f"train and val share {shared} rows; the splits must be disjoint")


def _row_blocks(rows: Tensor, width: int) -> list[Tensor]:
    """Row index blocks sized to keep one float64 block of ``width`` columns near ROW_BLOCK_ELEMENTS."""
    step = max(1, ROW_BLOCK_ELEMENTS // max(width, 1))
    return list(rows.split(step))


def _read(x: Tensor, rows: Tensor, device: torch.device, columns: Tensor | None = None) -> Tensor:
    """Rows (and optionally columns) of ``x`` as float64 on ``device``; only these rows are read."""
    block = x.index_select(0, rows.to(x.device))
    if columns is not None:
        block = block.index_select(1, columns.to(x.device))
    return block.to(device=device, dtype=torch.float64)


def _merge(n: int, mean: Tensor, m2: Tensor, block: Tensor) -> tuple[int, Tensor, Tensor]:
    """Chan's update of per-column count, mean and centred sum of squares with one block of rows."""
    nb = block.shape[0]
    mean_b = block.mean(0)
    m2_b = (block - mean_b).square().sum(0)
    total = n + nb
    delta = mean_b - mean
    return total, mean + delta * (nb / total), m2 + m2_b + delta.square() * (n * nb / total)


def _scan(A: Tensor, C: Tensor, rows: Tensor, device: torch.device, top: bool) -> _Scan:
    """One pass over a split's rows: what the checks, the pruning and the dead-neuron test need."""
    n_neurons, n_concepts = A.shape[1], C.shape[1]
    f64 = {"device": device, "dtype": torch.float64}
    n, mean_c, m2_c = 0, torch.zeros(n_concepts, **f64), torch.zeros(n_concepts, **f64)
    mean_a, m2_a = torch.zeros(n_neurons, **f64), torch.zeros(n_neurons, **f64)
    bad_a = torch.zeros(n_neurons, dtype=torch.long, device=device)
    bad_c = torch.zeros(n_concepts, dtype=torch.long, device=device)
    outside = torch.zeros(n_concepts, dtype=torch.long, device=device)
    largest = torch.empty(0, n_concepts, **f64)
    c_min, c_max = math.inf, -math.inf
    for block_rows in _row_blocks(rows, n_concepts + n_neurons):
        c, a = _read(C, block_rows, device), _read(A, block_rows, device)
        finite_c, finite_a = torch.isfinite(c), torch.isfinite(a)
        bad_c += (~finite_c).sum(0)
        bad_a += (~finite_a).sum(0)
        c, a = torch.where(finite_c, c, 0.5), torch.where(finite_a, a, 0.0)
        out_of_range = (c < -RANGE_SLACK) | (c > 1 + RANGE_SLACK)
        outside += out_of_range.sum(0)
        if bool(out_of_range.any()):
            c_min, c_max = min(c_min, float(c.min())), max(c_max, float(c.max()))
        if top:
            largest = torch.cat([largest, c]).topk(min(PRUNE_TOP, largest.shape[0] + c.shape[0]), dim=0).values
        _, mean_a, m2_a = _merge(n, mean_a, m2_a, a)
        n, mean_c, m2_c = _merge(n, mean_c, m2_c, c)
    top_mean = largest.mean(0) if top else None
    return _Scan(n, mean_c, m2_c, top_mean, mean_a, m2_a, bad_a, bad_c, outside, c_min, c_max)


def _raise_on_bad_values(*scans: _Scan) -> None:
    """NaN/inf anywhere in the rows used, or concept values outside [0, 1], are input errors."""
    for name, counts in (("A (activations)", [s.bad_a for s in scans]), ("C (concepts)", [s.bad_c for s in scans])):
        per_column = sum(counts[1:], counts[0])
        total = int(per_column.sum())
        if total:
            first = int(per_column.nonzero()[0, 0])
            raise ExplainInputError(
                f"{name} holds {total} non-finite values (NaN or inf) in the train/val rows, the first in "
                f"column {first}; repair or drop those columns before explaining"
            )
    outside = sum((s.outside_c for s in scans[1:]), scans[0].outside_c)
    total = int(outside.sum())
    if total:
        first = int(outside.nonzero()[0, 0])
        low, high = min(s.c_min for s in scans), max(s.c_max for s in scans)
        raise ExplainInputError(
            f"C (concepts) holds {total} values outside [0, 1] (min {low:.4g}, max {high:.4g}), the first in "
            f"column {first}; concept values must be presence scores in [0, 1] (e.g. calibrated sigmoids)"
        )


def _prune_concepts(scan: _Scan) -> Tensor:
    """[M] bool: concepts that are clearly present somewhere in train and vary there (REF rule, train only)."""
    std = (scan.m2_c / (scan.n - 1)).sqrt()
    kept = (scan.top_mean >= PRUNE_TOP_MEAN) & (std >= PRUNE_MIN_STD)
    if not bool(kept.any()):
        raise ExplainInputError(
            f"no concept survives pruning: each needs a mean of its top-{PRUNE_TOP} train values ≥ "
            f"{PRUNE_TOP_MEAN} and a train std ≥ {PRUNE_MIN_STD}; check that C holds presence scores in [0, 1] "
            "that reach high values on some training images"
        )
    return kept.cpu()


# ---------------------------------------------------------------------------------------------------------
# Gram statistics


def _moments(A: Tensor, C: Tensor, rows: Tensor, kept_idx: Tensor, mean_c: Tensor, mean_a: Tensor,
             device: torch.device) -> _Moments:
    """Centred float64 Gram statistics of one split over the kept concepts, accumulated over row blocks."""
    m, k = kept_idx.numel(), A.shape[1]
    f64 = {"device": device, "dtype": torch.float64}
    cc, ca, aa = torch.zeros(m, m, **f64), torch.zeros(m, k, **f64), torch.zeros(k, **f64)
    for block_rows in _row_blocks(rows, C.shape[1] + k):
        c = _read(C, block_rows, device, kept_idx) - mean_c
        a = _read(A, block_rows, device) - mean_a
        cc.addmm_(c.T, c)
        ca.addmm_(c.T, a)
        aa += a.square().sum(0)
    return _Moments(rows.numel(), mean_c, mean_a, cc, ca, aa)


def _is_constant(m2: Tensor, mean: Tensor, n: int) -> Tensor:
    """std ≤ DEAD_RTOL · (1 + |mean|): a neuron that carries no signal on these rows."""
    return (m2.clamp_min(0) / (n - 1)).sqrt() <= DEAD_RTOL * (1 + mean.abs())


def _problem(A: Tensor, C: Tensor, train: Tensor, val: Tensor, kept_idx: Tensor, scan_train: _Scan,
             scan_val: _Scan, device: torch.device) -> _Problem:
    """Train and val moments over the kept concepts, and the neurons that are constant on either split."""
    tr = _moments(A, C, train, kept_idx, scan_train.mean_c[kept_idx], scan_train.mean_a, device)
    va = _moments(A, C, val, kept_idx, scan_val.mean_c[kept_idx], scan_val.mean_a, device)
    dead = _is_constant(scan_train.m2_a, scan_train.mean_a, tr.n) | _is_constant(scan_val.m2_a, scan_val.mean_a, va.n)
    return _Problem(tr, va, dead)


def _standardised(tr: _Moments, dead: Tensor) -> tuple[Tensor, Tensor]:
    """Gram [M, M] and cross terms [K, M] of train-standardised concepts and targets (unbiased std, as REF).

    With X and y standardised, the elastic net's smooth part is ½wᵀΣw − ρᵀw + ½ and its bias is 0.
    """
    n = tr.n
    c_var = tr.cc.diagonal() / (n - 1)
    a_var = tr.aa / (n - 1)
    c_std = c_var.sqrt()
    a_std = torch.where(dead, 1.0, a_var.sqrt())
    gram = tr.cc.div(c_std[:, None]).div_(c_std[None, :]).div_(n)  # one M×M temporary, not three
    rho = tr.ca.div(c_std[:, None]).div_(a_std[None, :]).div_(n).T
    rho = torch.where(dead[:, None], 0.0, rho)
    return gram, rho.contiguous()


# ---------------------------------------------------------------------------------------------------------
# Ranking: elastic net of all neurons at once


def _soft_threshold(z: Tensor, threshold: Tensor | float) -> Tensor:
    return z.sign() * (z.abs() - threshold).clamp_min(0)


def _fista_rtol(dtype: torch.dtype) -> float:
    """Relative change at which an iterate is converged: near the dtype's rounding, never below 1e-7."""
    return max(1e-7, 100 * torch.finfo(dtype).eps)


def _rank_fista(gram: Tensor, rho: Tensor, l1: float, l2: float, solve: Tensor) -> Tensor:
    """Converged elastic-net weights [K, M]: min ½wᵀΣw − ρᵀw + l1‖w‖₁ + ½ l2‖w‖² for each neuron.

    Working-set FISTA: the solution has few non-zeros, so each round solves each neuron's problem
    restricted to its working set (its support plus its worst KKT violators) by FISTA with gradient restart,
    then checks the KKT conditions of the full problem with one product with the Gram; a neuron is done
    when no concept outside its working set violates them. Each neuron's working sets, step size and
    stopping decisions depend on its own problem only, so its weights do not depend on its batch-mates.
    """
    x = torch.zeros_like(rho)
    todo = solve.to(rho.device).clone()
    kkt_tol = max(1e-6, 1000 * torch.finfo(rho.dtype).eps)
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(rho.shape[1], generator=generator, dtype=torch.float64).to(rho)
    for _ in range(FISTA_MAX_ROUNDS):
        rows = todo.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        xs = x[rows]
        support = xs != 0
        grad = _sparse_rows_times(xs, support, gram) - rho[rows]
        violation = torch.where(support, -math.inf, grad.abs() - l1)
        violators = (violation > kkt_tol).sum(1)
        done = violators == 0
        todo[rows[done]] = False
        keep = ~done
        if not bool(keep.any()):
            break
        rows, xs, support, violation, violators = rows[keep], xs[keep], support[keep], violation[keep], violators[keep]
        ws, valid = _working_sets(support, violation, violators)
        x[rows] = _solve_working_sets(gram, rho[rows], xs, ws, valid, probe, l1, l2)
    return x


def _sparse_rows_times(x: Tensor, support: Tensor, gram: Tensor) -> Tensor:
    """x @ gram using only the columns where some row of x is non-zero (exact: the others are zeros)."""
    columns = support.any(0).nonzero().squeeze(1)
    if columns.numel() == 0:
        return torch.zeros_like(x)
    return x[:, columns] @ gram[columns]


def _working_sets(support: Tensor, violation: Tensor, violators: Tensor) -> tuple[Tensor, Tensor]:
    """Each neuron's support plus its largest KKT violators (as many as its support, at least FISTA_WS_GROW).

    Returns concept indices [rows, s] padded to the largest set, and which slots are real.
    """
    n_support = support.sum(1)
    size = n_support + torch.minimum(violators, n_support.clamp_min(FISTA_WS_GROW))
    s = int(size.max())
    score = torch.where(support, math.inf, violation)
    index = score.topk(s, dim=1).indices
    valid = torch.arange(s, device=index.device)[None, :] < size[:, None]
    return index, valid


def _solve_working_sets(gram: Tensor, rho: Tensor, x0: Tensor, ws: Tensor, valid: Tensor, probe: Tensor, l1: float,
                        l2: float) -> Tensor:
    """Solve each neuron's problem on its working set, warm-started from x0; returns the full rows [b, M].

    ``probe`` [M] is a fixed start vector per concept for the power iterations (the same for every neuron).
    """
    b, s = ws.shape
    out = torch.zeros_like(x0)
    step = max(1, FISTA_BLOCK_ELEMENTS // (s * s))
    for start in range(0, b, step):
        sl = slice(start, start + step)
        idx, ok = ws[sl], valid[sl].to(gram.dtype)
        sub_gram = gram[idx[:, :, None], idx[:, None, :]] * ok[:, :, None] * ok[:, None, :]
        sub_rho = rho[sl].gather(1, idx) * ok
        sub_x0 = x0[sl].gather(1, idx) * ok
        solved = _fista(sub_gram, sub_rho, sub_x0, probe[idx] * ok, l1, l2) * ok
        out[sl].scatter_add_(1, idx, solved)  # padded slots add exact zeros
    return out


def _largest_eigenvalues(gram: Tensor, start: Tensor) -> Tensor:
    """[b] an upper estimate of the largest eigenvalue of each small PSD Gram [b, s, s], by power iteration.

    FISTA_POWER_STEPS steps from ``start`` give a Rayleigh quotient just below λmax; it is raised by
    FISTA_POWER_SAFETY but never above the Gershgorin bound (max absolute row sum), which always holds.
    Batched LAPACK eigvalsh is much slower on these rank-deficient Grams.
    """
    v = start
    for _ in range(FISTA_POWER_STEPS):
        v = torch.bmm(gram, v.unsqueeze(2)).squeeze(2)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    rayleigh = (v * torch.bmm(gram, v.unsqueeze(2)).squeeze(2)).sum(1)
    gershgorin = gram.abs().sum(2).amax(1)
    return torch.minimum(rayleigh * FISTA_POWER_SAFETY, gershgorin).clamp_min(torch.finfo(gram.dtype).tiny)


def _fista(gram: Tensor, rho: Tensor, x0: Tensor, start: Tensor, l1: float, l2: float) -> Tensor:
    """Batched FISTA with gradient restart (O'Donoghue & Candès) for b small elastic nets [b, s].

    Step 1/L_b, with L_b the largest eigenvalue of problem b's Gram (power iteration from ``start``); the
    penalty is applied in the prox (soft-threshold by l1/L, shrink by 1/(1 + l2/L)). FISTA finds the
    support long before its values converge on ill-conditioned Grams (correlated concepts), so once a
    problem's support and signs have been stable for FISTA_POLISH_EVERY iterations, ``_polish`` tries the
    exact optimum on them. A problem stops, on its own, when that succeeds, or when an iteration changes
    its iterate by at most ``_fista_rtol`` relative, or at FISTA_MAX_ITER; its result is then frozen.
    """
    rtol = _fista_rtol(gram.dtype)
    step = 1.0 / _largest_eigenvalues(gram, start)
    out = x0.clone()
    live = torch.arange(x0.shape[0], device=x0.device)
    x, y = x0.clone(), x0.clone()
    t = torch.ones_like(step)
    frozen = torch.zeros_like(step, dtype=torch.bool)
    stable_since = torch.zeros_like(live)  # iteration at which the current signs appeared
    tried = torch.full_like(live, -1)  # the stable_since of the last pattern _polish rejected
    for iteration in range(FISTA_MAX_ITER):
        g = torch.bmm(gram, y.unsqueeze(2)).squeeze(2) - rho
        x_new = _soft_threshold(y - step[:, None] * g, (l1 * step)[:, None]) / (1 + l2 * step)[:, None]
        dx = x_new - x
        restart = ((y - x_new) * dx).sum(1) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(restart, 0.0, (t - 1) / t_new)
        t = torch.where(restart, 1.0, t_new)
        y = x_new + beta[:, None] * dx
        stable_since = torch.where((x_new.sign() != x.sign()).any(1), iteration, stable_since)
        x = x_new
        converged = ~frozen & (dx.norm(dim=1) <= rtol * x_new.norm(dim=1))
        if (iteration + 1) % FISTA_POLISH_EVERY == 0:
            ready = ~frozen & ~converged & (iteration - stable_since >= FISTA_POLISH_EVERY) & (tried != stable_since)
            rows = ready.nonzero().squeeze(1)
            if rows.numel():
                polished, exact = _polish(gram[rows], rho[rows], x[rows], l1, l2)
                x[rows] = torch.where(exact[:, None], polished, x[rows])
                converged[rows] |= exact
                tried[rows] = torch.where(exact, tried[rows], stable_since[rows])
        if bool(converged.any()):
            out[live[converged]] = x[converged]
            frozen |= converged
            if bool(frozen.all()):
                return out
            if int(frozen.sum()) * 4 >= frozen.numel():  # compact: drop the finished problems
                keep = ~frozen
                live, x, y, t, step, frozen = live[keep], x[keep], y[keep], t[keep], step[keep], frozen[keep]
                gram, rho, stable_since, tried = gram[keep], rho[keep], stable_since[keep], tried[keep]
    out[live[~frozen]] = x[~frozen]
    return out


def _polish(gram: Tensor, rho: Tensor, x: Tensor, l1: float, l2: float) -> tuple[Tensor, Tensor]:
    """The elastic net's optimum if x has the optimum's support and signs: (weights [b, s], is optimal [b]).

    On a support S with signs σ, the optimum solves (Σ_SS + l2·I) w_S = ρ_S − l1·σ; it is the optimum of
    the whole problem iff w_S keeps the signs σ and every coordinate off S has |(Σw − ρ)_j| ≤ l1 (KKT).
    Solved in float64 on the supports only (padded with identity rows).
    """
    g64, r64 = gram.to(torch.float64), rho.to(torch.float64)
    support = x != 0
    size = support.sum(1)
    p = max(int(size.max()), 1)
    idx = support.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :p]  # support first
    on = torch.arange(p, device=x.device)[None, :] < size[:, None]
    both = on[:, :, None] & on[:, None, :]
    eye = torch.eye(p, dtype=torch.float64, device=x.device)
    system = torch.where(both, _sub_gram_batched(g64, idx), 0.0) + eye * torch.where(on, l2, 1.0)[:, :, None]
    sign = x.gather(1, idx).sign().to(torch.float64)
    rhs = torch.where(on, r64.gather(1, idx) - l1 * sign, 0.0)
    w_support, solved = _spd_solve(system, rhs)
    w = torch.zeros_like(r64).scatter_add_(1, idx, torch.where(on, w_support, 0.0))
    grad = torch.bmm(g64, w.unsqueeze(2)).squeeze(2) - r64
    signs_kept = ((w_support * sign > 0) | ~on).all(1)
    kkt = ((grad.abs() <= l1 * (1 + 1e-6) + 1e-9) | support).all(1)
    return w.to(x.dtype), signs_kept & kkt & solved


def _sub_gram_batched(gram: Tensor, idx: Tensor) -> Tensor:
    """[b, p, p] entries gram[b, idx[b, i], idx[b, j]] of a batch of Grams [b, s, s]."""
    rows = gram.gather(1, idx.unsqueeze(2).expand(-1, -1, gram.shape[2]))
    return rows.gather(2, idx.unsqueeze(1).expand(-1, idx.shape[1], -1))


def _spd_solve(system: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """Solve batched symmetric positive definite systems [..., p, p] by Cholesky: (solution [..., p], ok [...]).

    Cholesky rather than LU: it is what these systems are, and batched LU (torch.linalg.solve) on CPU
    corrupts its pivots and hangs for p ≥ ~150 with several threads (torch 2.14, MKL).
    """
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
    ok = (info == 0) & torch.isfinite(solution).all(-1)
    return torch.where(ok.unsqueeze(-1), solution, math.nan), ok


def _rank_saga(A: Tensor, C: Tensor, train: Tensor, kept_idx: Tensor, problem: _Problem, l1: float, l2: float,
               seed: int, dtype: torch.dtype) -> Tensor:
    """The reference's GLM-SAGA on train-standardised data, in chunks of SAGA_NEURON_CHUNK neurons [K, M].

    Chunk-mates share the shuffle and the early stop, as in the reference; each chunk restarts the seeded
    generator, so a chunk's result depends only on its neurons and the seed.
    """
    tr, device = problem.train, problem.train.cc.device
    c_std = (tr.cc.diagonal() / (tr.n - 1)).sqrt()
    a_std = torch.where(problem.dead, 1.0, (tr.aa / (tr.n - 1)).sqrt())
    x = ((_read(C, train, device, kept_idx) - tr.mean_c) / c_std).to(dtype)
    y = (_read(A, train, device) - tr.mean_a) / a_std
    y = torch.where(problem.dead[None, :], 0.0, y).to(dtype)
    n_neurons = y.shape[1]
    chunks = [_saga_chunk(x, y[:, s : s + SAGA_NEURON_CHUNK], l1, l2, seed)
              for s in range(0, n_neurons, SAGA_NEURON_CHUNK)]
    return torch.cat(chunks, dim=0)


def _saga_chunk(x: Tensor, y: Tensor, l1: float, l2: float, seed: int) -> Tensor:
    """Proximal SAGA for a multi-output least squares; the loss driving early stop sums over outputs (LE)."""
    n, m = x.shape
    k = y.shape[1]
    w, b = x.new_zeros(k, m), x.new_zeros(k)
    table = x.new_zeros(n, k)  # each example's last residual, the SAGA memory
    w_avg, b_avg = torch.zeros_like(w), torch.zeros_like(b)
    generator = torch.Generator().manual_seed(seed)
    tol = SAGA_TOL_PER_NEURON * k
    best, stale = math.inf, 0
    threshold, shrink = SAGA_LR * l1, 1 + SAGA_LR * l2
    for _ in range(SAGA_EPOCHS):
        total = 0.0
        for batch in torch.randperm(n, generator=generator).to(x.device).split(SAGA_BATCH):
            xb = x[batch]
            residual = xb @ w.T + b - y[batch]
            total += 0.5 * float(residual.square().sum())  # = ½ Σ_outputs mean_batch(...)² × batch size
            change = residual - table[batch]
            w_change = change.T @ xb / batch.numel()
            b_change = change.mean(0)
            w = _soft_threshold(w - SAGA_LR * (w_change + w_avg), threshold) / shrink
            b = b - SAGA_LR * (b_change + b_avg)
            table[batch] = residual
            w_avg += w_change * (batch.numel() / n)
            b_avg += b_change * (batch.numel() / n)
        objective = total / n + l1 * float(w.abs().sum()) + 0.5 * l2 * float(w.square().sum())
        if objective + tol < best:
            best, stale = objective, 0
        else:
            stale += 1
            if stale >= SAGA_LOOKBEHIND:
                break
    return w


def _ranking_order(weights: Tensor, rho: Tensor, depth: int) -> Tensor:
    """[K, depth] kept-concept indices by weight descending (signed), ties by |ρ| descending, then index.

    A converged elastic net leaves most weights at exactly 0: the marginal correlation orders those, so the
    greedy search still gets a meaningful list of candidates past the support. Negative weights come last.
    """
    weights = weights.to(torch.float64)
    by_corr = torch.sort(-rho.abs(), dim=1, stable=True).indices
    by_weight = torch.sort(-weights.gather(1, by_corr), dim=1, stable=True).indices
    return by_corr.gather(1, by_weight)[:, :depth]


# ---------------------------------------------------------------------------------------------------------
# Greedy search over small least-squares models, from Gram statistics


def _sub_gram(cc: Tensor, idx: Tensor) -> Tensor:
    """[..., p, p] principal submatrices of ``cc`` at the index sets ``idx`` [..., p]."""
    return cc[idx.unsqueeze(-1), idx.unsqueeze(-2)]


def _sub_cross(ca: Tensor, idx: Tensor, neurons: Tensor) -> Tensor:
    """[b, ..., p] entries ca[idx, neuron] for each neuron's index sets ``idx`` [b, ..., p]."""
    shape = (neurons.numel(),) + (1,) * (idx.dim() - 1)
    return ca[idx, neurons.view(shape).expand_as(idx)]


def _fit_lstsq(tr: _Moments, idx: Tensor, neurons: Tensor) -> tuple[Tensor, Tensor]:
    """Least squares with a bias of each neuron on raw train concept columns ``idx`` [b, w, p]: (W, b)."""
    s = _sub_gram(tr.cc, idx)
    trace = s.diagonal(dim1=-2, dim2=-1).sum(-1)
    eye = torch.eye(idx.shape[-1], dtype=s.dtype, device=s.device)
    s = s + (LSTSQ_RIDGE * trace).clamp_min(1e-300)[..., None, None] * eye
    w, _ = _spd_solve(s, _sub_cross(tr.ca, idx, neurons))
    bias = _expand_neurons(tr.mean_a[neurons], idx) - (tr.mean_c[idx] * w).sum(-1)
    return w, bias


def _expand_neurons(values: Tensor, idx: Tensor) -> Tensor:
    """Per-neuron values [b] broadcast to the candidate grid idx[..., 0]."""
    return values.view((-1,) + (1,) * (idx.dim() - 2)).expand(idx.shape[:-1])


def _fit_adam(tr: _Moments, idx: Tensor, neurons: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's fit: 100 full-batch Adam steps (lr 0.3) on the MSE from zero, on raw train data.

    The full-batch gradient only needs the raw Gram statistics, so every (neuron, candidate) model takes
    its steps at once; Adam acts elementwise, so batching them changes nothing.
    """
    n = tr.n
    mean_x = tr.mean_c[idx]  # [b, w, p]
    mean_y = _expand_neurons(tr.mean_a[neurons], idx)
    gram = (_sub_gram(tr.cc, idx) + n * mean_x.unsqueeze(-1) * mean_x.unsqueeze(-2)) / n  # E[x xᵀ]
    xy = (_sub_cross(tr.ca, idx, neurons) + n * mean_x * mean_y.unsqueeze(-1)) / n  # E[x y]
    w, b = torch.zeros_like(mean_x), torch.zeros_like(mean_y)
    moments = [torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(b)]
    beta1, beta2 = ADAM_BETAS
    for step in range(1, ADAM_STEPS + 1):
        residual_x = (gram @ w.unsqueeze(-1)).squeeze(-1) + mean_x * b.unsqueeze(-1) - xy  # E[x(ŷ − y)]
        grad_w = 2 * residual_x
        grad_b = 2 * ((mean_x * w).sum(-1) + b - mean_y)
        for i, (param_grad, name) in enumerate(((grad_w, "w"), (grad_b, "b"))):
            m, v = moments[2 * i], moments[2 * i + 1]
            m.mul_(beta1).add_(param_grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(param_grad, param_grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(ADAM_EPS)
            update = (ADAM_LR / (1 - beta1**step)) * m / denom
            if name == "w":
                w = w - update
            else:
                b = b - update
    return w, b


def _val_correlation(va: _Moments, idx: Tensor, w: Tensor, neurons: Tensor) -> Tensor:
    """Pearson r on val of the predictions Σ w_j c_j (+ bias, irrelevant) of each model; NaN if undefined."""
    s = _sub_gram(va.cc, idx)
    var_pred = (w * (s @ w.unsqueeze(-1)).squeeze(-1)).sum(-1)
    scale = (w.square() * s.diagonal(dim1=-2, dim2=-1)).sum(-1)
    cov = (w * _sub_cross(va.ca, idx, neurons)).sum(-1)
    var_a = _expand_neurons(va.aa[neurons], idx)
    defined = (var_pred > CONSTANT_PREDICTION * scale) & (scale > 0) & (var_a > 0)
    r = cov / (var_pred.clamp_min(1e-300) * var_a.clamp_min(1e-300)).sqrt()
    return torch.where(defined, r.clamp(-1, 1), math.nan)


def _candidates(order: Tensor, used: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's first ``width`` ranked positions not used yet: (positions, concepts, valid) [b, width]."""
    depth = order.shape[1]
    positions = torch.arange(depth, device=order.device).expand_as(used)
    key = torch.where(used, depth, positions)
    pos = key.sort(dim=1).values[:, :width]
    valid = pos < depth
    pos = pos.clamp_max(depth - 1)
    if pos.shape[1] < width:  # fewer ranked concepts than width
        pad = width - pos.shape[1]
        pos = torch.cat([pos, pos[:, :1].expand(-1, pad)], dim=1)
        valid = torch.cat([valid, torch.zeros_like(valid[:, :1]).expand(-1, pad)], dim=1)
    return pos, order.gather(1, pos), valid


def _fit(tr: _Moments, idx: Tensor, neurons: Tensor, fit: str) -> tuple[Tensor, Tensor]:
    return _fit_adam(tr, idx, neurons) if fit == "adam" else _fit_lstsq(tr, idx, neurons)


def _greedy_search(order: Tensor, problem: _Problem, max_length: int, width: int, tolerance: float,
                   fit: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The reference's greedy search (as its code does it), for every live neuron at once.

    Round 1 adds the candidate with the highest val r if that r > 0. Later rounds mark every candidate with
    r − best < tolerance as bad for good (NaN r counts as bad), and add the best of the others. Returns the
    chosen kept-concept indices [K, max_length] (-1 padded), their weights, the biases and the val r.
    """
    tr, va = problem.train, problem.val
    n_neurons, depth = order.shape
    device = order.device
    chosen = torch.full((n_neurons, max_length), -1, dtype=torch.long, device=device)
    weights = torch.zeros(n_neurons, max_length, dtype=torch.float64, device=device)
    bias = tr.mean_a.clone()
    best = torch.zeros(n_neurons, dtype=torch.float64, device=device)
    used = torch.zeros(n_neurons, depth, dtype=torch.bool, device=device)
    active = ~problem.dead
    for length in range(max_length):
        neurons = active.nonzero().squeeze(1)
        if neurons.numel() == 0:
            break
        pos, cand, valid = _candidates(order[neurons], used[neurons], width)
        selected = chosen[neurons, :length].unsqueeze(1).expand(-1, width, -1)
        idx = torch.cat([selected, cand.unsqueeze(-1)], dim=-1)  # [b, width, length + 1]
        w, b = _fit(tr, idx, neurons, fit)
        r = _val_correlation(va, idx, w, neurons)
        r = torch.where(valid & torch.isfinite(r), r, -math.inf)
        previous = best[neurons, None]
        if length > 0:
            bad = valid & (r - previous < tolerance)
            rows, cols = bad.nonzero(as_tuple=True)
            used[neurons[rows], pos[rows, cols]] = True
        else:
            bad = torch.zeros_like(valid)
        qualifies = valid & ~bad & (r > previous)
        pick = torch.where(qualifies, r, -math.inf).argmax(dim=1)  # first of equals: the better ranked
        found = qualifies.any(dim=1)
        active[neurons[~found]] = False
        neurons, pick, rows = neurons[found], pick[found], found.nonzero().squeeze(1)
        chosen[neurons, length] = cand[rows, pick]
        weights[neurons, : length + 1] = w[rows, pick]
        bias[neurons] = b[rows, pick]
        best[neurons] = r[rows, pick]
        used[neurons, pos[rows, pick]] = True
    return chosen, weights, bias, best


def _fixed_explanation(order: Tensor, problem: _Problem, length: int,
                       fit: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The "no greedy search" ablation: each live neuron's first ``length`` ranked concepts, fitted once."""
    tr, va = problem.train, problem.val
    n_neurons = order.shape[0]
    live = (~problem.dead).nonzero().squeeze(1)
    chosen = torch.full((n_neurons, length), -1, dtype=torch.long, device=order.device)
    weights = torch.zeros(n_neurons, length, dtype=torch.float64, device=order.device)
    bias = tr.mean_a.clone()
    corr = torch.zeros(n_neurons, dtype=torch.float64, device=order.device)
    if live.numel():
        idx = order[live, :length].unsqueeze(1)  # [b, 1, length]
        w, b = _fit(tr, idx, live, fit)
        r = _val_correlation(va, idx, w, live)
        chosen[live] = idx[:, 0]
        weights[live] = torch.nan_to_num(w[:, 0])
        bias[live] = torch.where(torch.isfinite(b[:, 0]), b[:, 0], tr.mean_a[live])
        corr[live] = torch.nan_to_num(r[:, 0], nan=0.0)
    return chosen, weights, bias, corr


def _assemble(chosen: Tensor, weights: Tensor, bias: Tensor, corr: Tensor, problem: _Problem, kept: Tensor,
              kept_idx: Tensor, order: Tensor, width: int) -> LinearExplanations:
    """Map kept-concept indices back to columns of C and pad to ``width``; everything on CPU."""
    chosen, weights = chosen.cpu(), weights.cpu()
    if chosen.shape[1] < width:
        pad = width - chosen.shape[1]
        chosen = torch.cat([chosen, chosen.new_full((chosen.shape[0], pad), -1)], dim=1)
        weights = torch.cat([weights, weights.new_zeros(weights.shape[0], pad)], dim=1)
    concepts = torch.where(chosen >= 0, kept_idx[chosen.clamp_min(0)], -1)
    ranking = kept_idx[order[:, : min(kept_idx.numel(), RANKING_CAP)].cpu()]
    return LinearExplanations(
        concepts=concepts,
        weights=torch.where(chosen >= 0, weights, 0.0),
        bias=bias.cpu(),
        val_correlation=torch.nan_to_num(corr.cpu(), nan=0.0),
        dead=problem.dead.cpu(),
        kept=kept,
        ranking=ranking,
    )
