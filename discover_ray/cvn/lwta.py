"""Stochastic local winner-takes-all (LWTA) activation of competitive vision networks (DISCOVER §2.1).

Units compete in contiguous blocks of U: exactly one unit per block passes its raw value, sampled from
Categorical(softmax(x)) with the Gumbel-max trick; the others output exactly 0. Gradients flow through the
relaxed Gumbel-softmax sample (straight-through), so τ shapes the gradients but never the forward output.

With two competitors the two Gumbel variables only enter through their difference, which is a
Logistic(0, 1) variable L: one L is drawn per block instead of two Gumbels (the same distribution, half
the random numbers), unit 0 wins iff x0 − x1 + L ≥ 0 and the relaxed sample is σ((x0 − x1 + L)/τ).

Forward and backward are written out as autograd functions that keep few full-size temporaries and never
take an argmax along an inner axis (very slow on CPU); without autograd only the winners are computed.

Each module can accumulate, since its last reset, the KL(q‖Uniform(U)) term of the ELBO and the fraction
of its outputs that were non-zero; both cost nothing unless switched on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "FALLBACKS",
    "LWTA",
    "active_fractions",
    "collect_kl",
    "competition_signature",
    "lwta_modules",
    "reset_kl",
    "reset_stats",
    "seed_examples",
    "seed_sampling",
    "set_deterministic",
    "set_kl_tracking",
    "tracking",
]

EPS = 1e-8  # inside the Gumbel logs (and the logistic noise's clamp), as in the paper's DeiT code
Noise = torch.Generator | list[torch.Generator] | None  # one generator, one per example, or the global RNG
FALLBACKS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class LWTA(nn.Module):
    """Stochastic LWTA over blocks of ``competitors`` contiguous units (unit j is in block j // U).

    ``dim`` is the feature axis: -1 for (B, D) or (B, T, D), 1 for conv maps (B, C, H, W) where units
    compete per spatial position, ``"auto"`` for axis 1 of 4-D inputs and the last axis otherwise.
    ``deterministic`` (or ``tau == 0``) takes the argmax of x instead of sampling. With one competitor the
    module is the plain ``fallback`` activation, so U=1 networks are exactly the originals.

    ``track_kl``: ``None`` accumulates the KL term while training only, ``True`` always, ``False`` never.
    ``track_stats`` accumulates the non-zero output count. The module has no parameters or buffers.
    """

    def __init__(
        self,
        competitors: int,
        tau: float = 0.67,
        dim: int | str = "auto",
        deterministic: bool = False,
        fallback: str = "relu",
    ):
        super().__init__()
        if isinstance(competitors, bool) or not isinstance(competitors, int) or competitors < 1:
            raise ValueError(f"competitors must be a positive integer, got {competitors!r}")
        if not math.isfinite(tau) or tau < 0:
            raise ValueError(f"tau must be a finite number ≥ 0, got {tau!r}")
        if dim != "auto" and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise ValueError(f"dim must be an integer axis or 'auto', got {dim!r}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
        self.competitors = competitors
        self.tau = float(tau)
        self.dim = dim
        self.deterministic = deterministic
        self.fallback = fallback
        self.track_kl: bool | None = None
        self.track_stats = False
        self._seed: int | None = None
        self._generator: torch.Generator | None = None
        self._example_seeds: list[int] | None = None
        self._example_generators: list[torch.Generator] | None = None
        self.reset_kl()
        self.reset_stats()

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.competitors == 1:
            out = FALLBACKS[self.fallback](x)
        else:
            blocks, axis = self._blocks(x)
            track_kl = bool(self.track_kl or (self.track_kl is None and self.training))
            out, kl = self._compete(blocks, axis, track_kl)
            out = out.reshape(x.shape)
            if kl is not None:
                self._kl = kl if self._kl is None else self._kl + kl
        if self.track_stats:
            with torch.no_grad():
                count = torch.count_nonzero(out)
                self._active = count if self._active is None else self._active + count
                self._numel += out.numel()
        return out

    def _blocks(self, x: Tensor) -> tuple[Tensor, int]:
        """x viewed with its feature axis split into (D / U, U); returns the view and the U axis."""
        axis = self.feature_axis(x)
        size, u = x.shape[axis], self.competitors
        if size % u:
            divisors = [d for d in range(2, min(size, 64) + 1) if size % d == 0][:8]
            raise ValueError(
                f"LWTA with U={u} competitors cannot split the feature axis {axis} of size {size} "
                f"(input shape {tuple(x.shape)}) into blocks: {size} is not divisible by {u}. Choose a U that "
                f"divides {size} (e.g. {divisors or 'none below 64'}) or a layer width that is a multiple of {u}."
            )
        shape = (*x.shape[:axis], size // u, u, *x.shape[axis + 1 :])
        return x.reshape(shape), axis + 1

    def feature_axis(self, x: Tensor) -> int:
        """The (non-negative) axis along which units compete for this input."""
        axis = (1 if x.ndim == 4 else -1) if self.dim == "auto" else int(self.dim)
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"LWTA dim={self.dim} does not exist in an input of shape {tuple(x.shape)}")
        return axis % x.ndim

    def _compete(self, blocks: Tensor, axis: int, track_kl: bool) -> tuple[Tensor, Tensor | None]:
        """x ⊙ ξ in the block view and, when ``track_kl``, the mean block KL (differentiable when x is).

        ξ is one-hot forward and d softmax((x+g)/τ) backward (straight-through); deterministic winners have
        no soft path. Without autograd only the winners are computed.
        """
        if self.deterministic or self.tau == 0:
            out = blocks * _argmax_mask(blocks.detach(), axis)
            return out, block_kl(blocks, axis) if track_kl else None
        generator = self._rng(blocks.device)
        if torch.is_grad_enabled() and blocks.requires_grad:
            sampler = _PairLWTA if self.competitors == 2 else _BlockLWTA
            return sampler.apply(blocks, axis, self.tau, generator, track_kl)
        with torch.no_grad():
            if self.competitors == 2:
                diff, _, mask = _pair_sample(blocks, axis, self.tau, generator)
                return blocks * mask, _pair_kl(diff)[0] if track_kl else None
            noisy = _gumbel_scores(blocks, generator)
            top = noisy.amax(dim=axis, keepdim=True)
            out = blocks * _winners(noisy, axis, blocks.dtype, top)
            return out, _block_kl(blocks, axis, top)[0] if track_kl else None

    # -- seeded sampling -------------------------------------------------------------------------
    def reseed(self, seed: int | None) -> None:
        """Draw the noise from a private generator seeded with ``seed``; ``None`` returns to torch's global RNG.

        The generator is created on first use on the input's device (and again if the device changes,
        restarting from the seed), so a model can be seeded before it is moved.
        """
        self._seed = None if seed is None else int(seed)
        self._generator = None

    def reseed_examples(self, seeds: list[int] | None) -> None:
        """One generator per example of the next batches (its first axis), seeded with ``seeds[i]``;
        ``None`` returns to ``reseed``'s generator or the global RNG."""
        self._example_seeds = None if seeds is None else [int(s) for s in seeds]
        self._example_generators = None

    def _rng(self, device: torch.device) -> Noise:
        if self._example_seeds is not None:
            if self._example_generators is None or self._example_generators[0].device != device:
                self._example_generators = [torch.Generator(device=device).manual_seed(s) for s in self._example_seeds]
            return self._example_generators
        if self._seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._seed)
        return self._generator

    def __getstate__(self) -> dict[str, Any]:
        # A generator is tied to a device: copies and pickles restart from the seed on their own device.
        # The accumulated KL belongs to the original's autograd graph (and cannot be deep-copied): not copied.
        state = self.__dict__.copy()
        state["_generator"] = None
        state["_example_generators"] = None
        state["_kl"] = None
        return state

    # -- accumulated KL and statistics ----------------------------------------------------------
    def pop_kl(self) -> Tensor | None:
        """The KL summed over the calls since the last reset (``None`` if none was recorded), then reset."""
        kl, self._kl = self._kl, None
        return kl

    def reset_kl(self) -> None:
        self._kl: Tensor | None = None

    def active_fraction(self) -> float | None:
        """Fraction of non-zero outputs since the last reset; ``None`` if nothing was recorded."""
        if self._active is None or self._numel == 0:
            return None
        return float(self._active) / self._numel

    def reset_stats(self) -> None:
        self._active: Tensor | None = None  # a device tensor: counting never waits for the device
        self._numel = 0

    def extra_repr(self) -> str:
        parts = [f"competitors={self.competitors}", f"tau={self.tau}", f"dim={self.dim!r}"]
        if self.deterministic:
            parts.append("deterministic=True")
        if self.competitors == 1:
            parts.append(f"fallback={self.fallback!r}")
        return ", ".join(parts)


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _one_hot(scores: Tensor, axis: int) -> Tensor:
    """1.0 at the argmax along ``axis`` (first index on ties), 0.0 elsewhere."""
    return torch.zeros_like(scores).scatter_(axis, scores.argmax(dim=axis, keepdim=True), 1.0)


# -- winners ---------------------------------------------------------------------------------------
# On CPU, argmax along an inner axis (the U axis of a (B, C/U, U, H, W) view) runs ~100× slower than a max
# along it, so winners are "equal to the block maximum", ties then resolved to the first maximum: the same
# one-hot as argmax. Two competitors need a single comparison. Every full-size pass costs memory traffic,
# so masks are written straight in the dtype they are used in and the noise buffer is reused in place.
def _winners(scores: Tensor, axis: int, dtype: torch.dtype, top: Tensor | None = None) -> Tensor:
    """One-hot (1/0 in ``dtype``) of the argmax along ``axis``, first index on ties; a block holding NaN has
    no winner (its output, x·0 with a NaN, is the same as with argmax). ``top``: the block maxima, if at hand.
    """
    if top is None:
        top = scores.amax(dim=axis, keepdim=True)
    mask = torch.eq(scores, top, out=torch.empty(scores.shape, dtype=dtype, device=scores.device))
    # Counting costs one pass and, on an accelerator, a wait: there the tie pass always runs instead. A sum
    # of 0/1 values is exact while its partial sums stay below 2^24 (float32) or 2^53 (float64).
    if mask.device.type != "cpu" or int(_count(mask)) != top.numel():
        hard = mask.bool()
        taken = hard.select(axis, 0).clone()
        for k in range(1, hard.shape[axis]):
            column = hard.select(axis, k)
            column &= ~taken
            taken |= column
        mask.copy_(hard)
    return mask


def _count(mask: Tensor) -> Tensor:
    """The number of ones in a 0/1 mask, exactly (much faster than ``count_nonzero`` on CPU)."""
    return mask.sum(dtype=torch.float32 if mask.numel() < 2**24 else torch.float64)


def _pair_mask(blocks: Tensor, axis: int, score: Tensor, other: Tensor | float = 0.0) -> Tensor:
    """ξ for two competitors, shaped like ``blocks`` in its dtype: (1, 0) where ``score ≥ other``, else (0, 1).

    Unit 0 wins ties, as with argmax; a NaN comparison gives (0, 0), whose output x·0 is NaN where x is.
    """
    mask = torch.empty(blocks.shape, dtype=blocks.dtype, device=blocks.device)
    torch.ge(score, other, out=mask.select(axis, 0))
    torch.lt(score, other, out=mask.select(axis, 1))
    return mask


def _argmax_mask(blocks: Tensor, axis: int) -> Tensor:
    """The one-hot of argmax x along the U axis, in x's dtype (deterministic winners)."""
    if blocks.shape[axis] == 2:
        return _pair_mask(blocks, axis, blocks.select(axis, 0), blocks.select(axis, 1))
    return _winners(blocks, axis, blocks.dtype)


# -- noise ---------------------------------------------------------------------------------------
# Always at least float32, whatever the input dtype: in fp16 the ε would vanish and the noise round badly.
# With u in [0, 1) and ε = 1e-8 every log stays finite, so there is never a NaN/Inf to resample.
def _uniform(shape: torch.Size, generator: Noise, device: torch.device, dtype: torch.dtype) -> Tensor:
    """U[0, 1) noise of ``shape``: from one generator (or the global RNG), or one generator per example
    (the first axis), so that an example's noise does not depend on the batch it is in."""
    if not isinstance(generator, list):
        return torch.rand(shape, generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} per-example seeds for a batch of {shape[0]}; seed every example of the batch")
    out = torch.empty(shape, device=device, dtype=dtype)
    for row, rng in zip(out, generator, strict=True):
        row.uniform_(generator=rng)
    return out


def _gumbel_scores(blocks: Tensor, generator: Noise) -> Tensor:
    """x + g with g = −log(−log(u + ε) + ε), u ~ Uniform[0, 1), in the working dtype; one fresh tensor."""
    u = _uniform(blocks.shape, generator, blocks.device, _work_dtype(blocks))
    exponential = u.add_(EPS).log_().neg_().add_(EPS)  # −log(u + ε) + ε
    return torch.sub(blocks, exponential.log_(), out=exponential)


def _logistic_noise(like: Tensor, generator: Noise) -> Tensor:
    """L = log(u / (1 − u)) ~ Logistic(0, 1), u ~ Uniform[0, 1) clamped to [ε, 1 − ε], shaped like ``like``.

    The difference g0 − g1 of two independent Gumbel(0, 1) variables is Logistic(0, 1): one L per pair of
    competitors has the distribution of the two Gumbels of the general form, from half the random numbers.
    The clamp keeps L finite (|L| ≤ 18.5) and, like the ε of the Gumbel form, only touches its 1e-8 tails.
    """
    u = _uniform(like.shape, generator, like.device, _work_dtype(like))
    return u.logit_(EPS)


def _pair_sample(
    blocks: Tensor, axis: int, tau: float, generator: Noise
) -> tuple[Tensor, Tensor, Tensor]:
    """d = x0 − x1 and z = (d + L)/τ (fresh, in the working dtype) and the mask ξ (``_pair_mask`` of z).

    Unit 0 wins iff z ≥ 0, which has probability σ(d) = softmax(x)_0 (ties, of probability 0, go to unit 0
    as with argmax); σ(z) is the Gumbel-softmax sample softmax((x + g)/τ)_0.
    """
    work = _work_dtype(blocks)
    diff = blocks.select(axis, 0).to(work) - blocks.select(axis, 1).to(work)
    scores = _logistic_noise(diff, generator).add_(diff).mul_(1.0 / tau)
    return diff, scores, _pair_mask(blocks, axis, scores)


# -- the sampling functions -----------------------------------------------------------------------
class _PairLWTA(torch.autograd.Function):
    """Two competitors: out = x ⊙ (h, 1 − h), h = [z ≥ 0], z = (d + L)/τ, d = x0 − x1, L ~ Logistic(0, 1).

    Backward of ξ0 = h + s − stopgrad(s), ξ1 = 1 − ξ0 with s = σ(z): for t = (g0·x0 − g1·x1)·s(1 − s)/τ,
    ∂x0 = g0·h + t and ∂x1 = g1·(1 − h) − t. The optional second output is the mean block KL, whose
    gradient adds to t. Saved: x, z, the mask and (for the KL) its derivative in d.
    """

    @staticmethod
    def forward(ctx, blocks, axis, tau, generator, with_kl):
        ctx.set_materialize_grads(False)
        diff, scores, mask = _pair_sample(blocks, axis, tau, generator)
        out = blocks * mask
        kl, kl_slope = _pair_kl(diff, with_grad=True) if with_kl else (None, None)
        ctx.axis, ctx.tau = axis, tau
        ctx.save_for_backward(blocks, scores, mask, kl_slope)
        return out, kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_kl):
        blocks, scores, mask, kl_slope = ctx.saved_tensors
        axis, work = ctx.axis, scores.dtype
        t = None
        if grad_out is not None:
            g0, g1 = grad_out.select(axis, 0).to(work), grad_out.select(axis, 1).to(work)
            x0, x1 = blocks.select(axis, 0).to(work), blocks.select(axis, 1).to(work)
            slope = torch.sigmoid(scores)
            slope.addcmul_(slope, slope, value=-1).mul_(1.0 / ctx.tau)  # ds/dd = s(1 − s)/τ
            t = torch.mul(g0, x0).addcmul_(g1, x1, value=-1).mul_(slope)
        if grad_kl is not None:
            scale = grad_kl / kl_slope.numel()
            t = kl_slope * scale if t is None else t.addcmul_(kl_slope, scale)
        if t is None:
            return None, None, None, None, None
        grad = torch.empty(blocks.shape, dtype=work, device=blocks.device)
        if grad_out is not None:
            torch.addcmul(t, g0, mask.select(axis, 0).to(work), out=grad.select(axis, 0))
            torch.mul(g1, mask.select(axis, 1).to(work), out=grad.select(axis, 1)).sub_(t)
        else:
            grad.select(axis, 0).copy_(t)
            torch.neg(t, out=grad.select(axis, 1))
        return grad.to(blocks.dtype), None, None, None, None


class _BlockLWTA(torch.autograd.Function):
    """U competitors: out = x ⊙ h, h = one-hot argmax(x + g) (Gumbel-max), y = softmax((x + g)/τ).

    Backward of x ⊙ (h + y − stopgrad(y)): ∂x = g_out ⊙ h + (y/τ) ⊙ (a − Σ_U y ⊙ a) with a = g_out ⊙ x.
    The optional second output is the mean block KL. Saved: x, y/τ, h and what the KL gradient needs.
    """

    @staticmethod
    def forward(ctx, blocks, axis, tau, generator, with_kl):
        ctx.set_materialize_grads(False)
        noisy = _gumbel_scores(blocks, generator)
        top = noisy.amax(dim=axis, keepdim=True)
        mask = _winners(noisy, axis, blocks.dtype, top)
        out = blocks * mask
        kl, kl_saved = _block_kl(blocks, axis, top, with_grad=True) if with_kl else (None, ())
        soft = noisy.sub_(top).mul_(1.0 / tau).exp_()
        soft.div_(soft.sum(dim=axis, keepdim=True).mul_(tau))  # y/τ
        ctx.axis, ctx.tau = axis, tau
        ctx.save_for_backward(blocks, soft, mask, *kl_saved)
        return out, kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_kl):
        blocks, soft, mask, *kl_saved = ctx.saved_tensors
        axis, work = ctx.axis, soft.dtype
        grad = None
        if grad_out is not None:
            grad_out = grad_out.to(work)
            grad = torch.mul(grad_out, blocks.to(work)).mul_(soft)  # a ⊙ y/τ
            total = grad.sum(dim=axis, keepdim=True).mul_(ctx.tau)  # Σ_U y ⊙ a
            grad.addcmul_(soft, total, value=-1).addcmul_(grad_out, mask.to(work))
        if grad_kl is not None:
            grad = _block_kl_grad(*kl_saved, grad_kl, into=grad)
        if grad is None:
            return None, None, None, None, None
        return grad.to(blocks.dtype), None, None, None, None


# -- the KL term ---------------------------------------------------------------------------------
# Both forms are exact, without an ε inside the log: Σ q·(log(q + ε) + log U) differs by less than U·ε
# (2e-8 for U = 2, 2.4e-7 for U = 24).
def block_kl(blocks: Tensor, axis: int) -> Tensor:
    """Mean over blocks, positions and batch of KL(softmax(x) ‖ Uniform(U)) along the U axis."""
    return _BlockKL.apply(blocks, axis)


class _BlockKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, axis):
        ctx.axis = axis
        if blocks.shape[axis] == 2:
            work = _work_dtype(blocks)
            kl, slope = _pair_kl(blocks.select(axis, 0).to(work) - blocks.select(axis, 1).to(work), with_grad=True)
            ctx.save_for_backward(blocks, slope)
            return kl
        kl, saved = _block_kl(blocks, axis, with_grad=True)
        ctx.save_for_backward(blocks, *saved)
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kl):
        blocks, *saved = ctx.saved_tensors
        axis = ctx.axis
        if len(saved) == 2:
            return _block_kl_grad(*saved, grad_kl).to(blocks.dtype), None
        (slope,) = saved
        grad = torch.empty(blocks.shape, dtype=slope.dtype, device=slope.device)
        torch.mul(slope, grad_kl / slope.numel(), out=grad.select(axis, 0))
        torch.neg(grad.select(axis, 0), out=grad.select(axis, 1))
        return grad.to(blocks.dtype), None


def _pair_kl(diff: Tensor, with_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """Mean KL(softmax(x0, x1) ‖ Uniform(2)) from d = x0 − x1: log 2 + d·σ(d) − softplus(d).

    Evaluated as log 2 − m·r + log(1 − r) with m = |d| and r = σ(−m) ≤ ½: no overflow and no ε; the logs
    of 1 − r ∈ [½, 1] are summed as logs of products of 64 (each at least 2⁻⁶⁴: no underflow). With
    ``with_grad`` also returns the derivative of the per-block KL, d·σ(d)(1 − σ(d)) = d·r(1 − r); without
    it ``diff`` is overwritten.
    """
    n = diff.numel()
    low = diff.abs().neg_() if with_grad else diff.abs_().neg_()  # −m
    r = torch.sigmoid(low)
    total = torch.dot(low.reshape(-1), r.reshape(-1))  # −Σ m·r
    slope = torch.addcmul(r, r, r, value=-1, out=low).mul_(diff) if with_grad else None
    kl = (total + _sum_log(r.neg_().add_(1))) / n + math.log(2)
    return kl, slope


def _sum_log(values: Tensor, group: int = 64) -> Tensor:
    """Σ log(values) for values in [½, 1], with one log per ``group`` values."""
    flat = values.reshape(-1)
    whole = flat.numel() - flat.numel() % group
    total = flat[:whole].view(-1, group).prod(dim=1).log_().sum()
    return total + flat[whole:].log().sum() if whole < flat.numel() else total


def _block_kl(
    blocks: Tensor, axis: int, shift: Tensor | None = None, with_grad: bool = False
) -> tuple[Tensor, tuple[Tensor, Tensor] | tuple[()]]:
    """Mean over blocks of Σ_U q·log(U·q), q = softmax(x); with ``with_grad`` also what its gradient needs.

    With y = x − shift, e = exp(y), S = Σ_U e and P = Σ_U e·y, a block's Σ q·log q is P/S − log S and its
    derivative in x is (e/S)·(y − P/S). ``shift`` (per block) replaces the block maximum of x: the maximum
    of x + g does, as g ≥ −2.92 keeps every e ≤ 19 and g < 37 keeps the largest above 1e-16.
    """
    work = _work_dtype(blocks)
    if shift is None:
        shift = blocks.amax(dim=axis, keepdim=True)
    y = blocks.to(work) - shift.to(work)
    e = y.exp()
    total = e.sum(dim=axis, keepdim=True)
    mean_y = y.mul_(e).sum(dim=axis, keepdim=True).div_(total)  # P/S; y now holds e·y
    kl = (mean_y.sum() - total.log().sum()) / total.numel() + math.log(blocks.shape[axis])
    if not with_grad:
        return kl, ()
    return kl, (y.addcmul_(e, mean_y, value=-1), total.reciprocal_())  # e·(y − P/S) and 1/S


def _block_kl_grad(
    weighted: Tensor, inverse_total: Tensor, grad_kl: Tensor, into: Tensor | None = None
) -> Tensor:
    """grad_kl · ∂(mean block KL)/∂x = grad_kl · (e/S)·(y − P/S) / blocks, added to ``into`` if given."""
    scale = inverse_total * (grad_kl / inverse_total.numel())
    return weighted * scale if into is None else into.addcmul_(weighted, scale)


# -- model-level helpers -------------------------------------------------------------------------
def lwta_modules(model: nn.Module) -> list[tuple[str, LWTA]]:
    """The model's LWTA modules with their names, in registration order (a shared module once)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LWTA)]


def competition_signature(model: nn.Module) -> str | None:
    """What makes a network competitive, as text: each LWTA module's name, U, τ, axis and fallback
    (``None`` when it has none). The same weights load into a network and its CVN twin, so a weights
    hash alone does not say which of the two produced an output; this does."""
    modules = lwta_modules(model)
    if not modules:
        return None
    return ";".join(f"{name}:U={m.competitors},tau={m.tau!r},dim={m.dim},{m.fallback}" for name, m in modules)


def seed_sampling(model: nn.Module, seed: int | None) -> None:
    """Give every LWTA module its own generator, seeded from (seed, module index); ``None`` undoes it.

    Module seeds are derived by hashing, so they do not depend on Python's hash seed or the process.
    """
    for index, (_, module) in enumerate(lwta_modules(model)):
        module.reseed(None if seed is None else _derive_seed(seed, index))


def seed_examples(model: nn.Module, seeds: list[int] | None) -> None:
    """Per-example noise: example ``i`` of the next batches draws from generators seeded from
    (``seeds[i]``, module index), whatever batch it is in. ``None`` undoes it."""
    for index, (_, module) in enumerate(lwta_modules(model)):
        module.reseed_examples(None if seeds is None else [_derive_seed(s, index) for s in seeds])


def _derive_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"lwta:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def set_deterministic(model: nn.Module, flag: bool) -> None:
    """Argmax winners (``True``) or sampled winners (``False``) in every LWTA module."""
    for _, module in lwta_modules(model):
        module.deterministic = flag


def set_kl_tracking(model: nn.Module, flag: bool | None) -> None:
    """``None``: accumulate KL while training (the default); ``True``: always; ``False``: never."""
    for _, module in lwta_modules(model):
        module.track_kl = flag


def collect_kl(model: nn.Module) -> Tensor:
    """Sum of the KL terms all LWTA modules accumulated since the last collection; resets them.

    Returns a differentiable scalar (a zero tensor when nothing was accumulated).
    """
    total: Tensor | None = None
    for _, module in lwta_modules(model):
        kl = module.pop_kl()
        if kl is not None:
            total = kl if total is None else total + kl
    if total is None:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return total


def reset_kl(model: nn.Module) -> None:
    """Drop the accumulated KL of every LWTA module (e.g. after an evaluation pass)."""
    for _, module in lwta_modules(model):
        module.reset_kl()


def active_fractions(model: nn.Module) -> dict[str, float]:
    """Per LWTA module name: fraction of non-zero outputs since the last reset (modules that recorded nothing are left out)."""
    out = {}
    for name, module in lwta_modules(model):
        fraction = module.active_fraction()
        if fraction is not None:
            out[name] = fraction
    return out


def reset_stats(model: nn.Module) -> None:
    for _, module in lwta_modules(model):
        module.reset_stats()


@contextmanager
def tracking(model: nn.Module, *, stats: bool = True, kl: bool | None = None) -> Iterator[None]:
    """Record active fractions (reset on entry) and, when ``kl`` is given, set KL tracking inside the block.

    ``kl=None`` leaves KL tracking as it is. The flags are restored on exit; the recorded values stay
    readable afterwards.
    """
    modules = [module for _, module in lwta_modules(model)]
    saved = [(module.track_stats, module.track_kl) for module in modules]
    for module in modules:
        if stats:
            module.reset_stats()
            module.track_stats = True
        if kl is not None:
            module.track_kl = kl
    try:
        yield
    finally:
        for module, (track_stats, track_kl) in zip(modules, saved, strict=True):
            module.track_stats, module.track_kl = track_stats, track_kl
