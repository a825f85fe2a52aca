"""Simulation scoring (methods.md §3.6): how well a description predicts its unit's activations on test images.

A simulator gives each concept a value s_j(x) in [0, 1] per image (label indicators, or σ(a·(cos + b)) of a
calibrated CLIP / SigLIP). A weighted explanation predicts Σ w_j s_j(x) + b; a single-label description
predicts s_1(x) of its concept. Two scorings:

- correlation: Pearson r of prediction and activation over the test images;
- ablation (for a layer whose pooled activations feed a linear head): replace the unit by its simulated
  value in the logits and compare the change in per-example cross-entropy with replacing it by its mean,
  ``1 − Σ|L_sim − L_orig| / Σ|L_base − L_orig|``. Optim scales the prediction by c·s + d fitted on the
  validation images (Adam, lr 1e-2, 100 steps); Norm matches its validation mean and spread,
  z(s)·std(a)·r + mean(a), all statistics from validation (never test).

A unit that is constant on the images scored is dead: counted apart, never NaN; means and SEMs are over
the live units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SimulationSummary", "ablation_scores", "correlation_scores", "simulate", "summarise"]

_EPS = 1e-12


def simulate(values: Tensor, concepts: Sequence[Sequence[int]], weights: Sequence[Sequence[float]],
             bias: Sequence[float] | None = None) -> Tensor:
    """Predicted activations [N, K]: Σ_j w_j · values[:, concept_j] + b_k per unit (values [N, M])."""
    n, k = values.shape[0], len(concepts)
    out = torch.zeros(n, k, dtype=torch.float64)
    for unit, (index, w) in enumerate(zip(concepts, weights, strict=True)):
        if len(index):
            out[:, unit] = values[:, list(index)].double() @ torch.as_tensor(list(w), dtype=torch.float64)
    if bias is not None:
        out += torch.as_tensor(list(bias), dtype=torch.float64)[None]
    return out


def _constant(x: Tensor) -> Tensor:
    return x.std(dim=0, unbiased=False) <= 1e-8 * (1 + x.abs().mean(dim=0))


def correlation_scores(actual: Tensor, predicted: Tensor) -> tuple[Tensor, Tensor]:
    """Per-unit Pearson r over the rows, and which units are dead (constant activation; r is then 0).

    A constant prediction of a live unit (an empty explanation) scores 0."""
    a, p = actual.double(), predicted.double()
    dead = _constant(a)
    a = a - a.mean(0)
    p = p - p.mean(0)
    denominator = (a.norm(dim=0) * p.norm(dim=0)).clamp_min(_EPS)
    r = (a * p).sum(0) / denominator
    r = torch.where(dead | _constant(predicted.double()), torch.zeros_like(r), r)
    return r, dead


def _losses(logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Per-example cross-entropy of logits [..., N, C] / T against labels [N]."""
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    return -log_p.gather(-1, labels.expand(*log_p.shape[:-1])[..., None]).squeeze(-1)


@dataclass(frozen=True)
class _Split:
    activations: Tensor  # [N, K]
    predicted: Tensor  # [N, K]
    labels: Tensor  # [N]


def _replaced_losses(split: _Split, units: Tensor, values: Tensor, weight: Tensor, bias: Tensor, temperature: float) -> Tensor:
    """Per-example losses [k, N] with unit units[i] replaced by values[:, i] (everything else as recorded)."""
    logits = split.activations @ weight.T + bias  # [N, C]
    delta = (values - split.activations[:, units]).T[:, :, None] * weight.T[units][:, None, :]  # [k, N, C]
    return _losses(logits[None] + delta, split.labels, temperature)


def ablation_scores(val: tuple[Tensor, Tensor, Tensor], test: tuple[Tensor, Tensor, Tensor], weight: Tensor,
                    bias: Tensor, *, mode: str = "optim", temperature: float = 1.1, steps: int = 100, lr: float = 1e-2,
                    chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Ablation scores [K] and dead units. ``val`` / ``test``: (activations [N, K], predicted [N, K], labels [N]);
    ``weight`` [C, K], ``bias`` [C]: the linear head the layer's pooled activations feed."""
    if mode not in ("optim", "norm"):
        raise ValueError(f"ablation mode must be 'optim' or 'norm', not {mode!r}")
    v, t = (_Split(a.double(), p.double(), y.long()) for a, p, y in (val, test))
    weight, bias = weight.double(), bias.double()
    n_units, classes = v.activations.shape[1], weight.shape[0]
    chunk = chunk or max(1, int(2e7 // max(1, max(len(v.labels), len(t.labels)) * classes)))
    scores = torch.zeros(n_units, dtype=torch.float64)
    dead = _constant(v.activations) | _constant(t.activations)
    mean_val = v.activations.mean(0)
    for start in range(0, n_units, chunk):
        units = torch.arange(start, min(start + chunk, n_units))
        scale, shift = _fit_scale(v, units, weight, bias, mode, temperature, steps, lr)
        original = _losses(t.activations @ weight.T + bias, t.labels, temperature)[None]
        base = _replaced_losses(t, units, mean_val[units].expand(len(t.labels), -1), weight, bias, temperature)
        simulated = _replaced_losses(t, units, t.predicted[:, units] * scale + shift, weight, bias, temperature)
        denominator = (base - original).abs().sum(1)
        chunk_dead = denominator <= _EPS
        scores[units] = torch.where(chunk_dead, torch.zeros_like(denominator),
                                    1 - (simulated - original).abs().sum(1) / denominator.clamp_min(_EPS))
        dead[units] |= chunk_dead
    return scores, dead


def _fit_scale(v: _Split, units: Tensor, weight: Tensor, bias: Tensor, mode: str, temperature: float, steps: int,
               lr: float) -> tuple[Tensor, Tensor]:
    """(c, d) per unit so that c·s + d has the unit's scale, from the validation images only."""
    a, p = v.activations[:, units], v.predicted[:, units]
    if mode == "norm":
        r, _ = correlation_scores(a, p)
        p_std = p.std(0, unbiased=False).clamp_min(_EPS)
        c = a.std(0, unbiased=False) * r / p_std
        return c, a.mean(0) - c * p.mean(0)
    c = torch.ones(len(units), dtype=torch.float64, requires_grad=True)
    d = torch.zeros(len(units), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([c, d], lr=lr)
    original = _losses(v.activations @ weight.T + bias, v.labels, temperature)[None].detach()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = (_replaced_losses(v, units, p * c + d, weight, bias, temperature) - original).abs().sum()
        loss.backward()
        optimiser.step()
    return c.detach(), d.detach()


@dataclass(frozen=True)
class SimulationSummary:
    """A layer's score: mean and standard error over live units, and how many units were dead."""

    mean: float | None
    sem: float | None
    units: int
    dead_units: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"correlation_mean": self.mean, "correlation_sem": self.sem, "units": self.units,
                "dead_units": self.dead_units}


def summarise(scores: Tensor, dead: Tensor) -> SimulationSummary:
    live = scores[~dead].double()
    n = len(live)
    mean = float(live.mean()) if n else None
    sem = float(live.std(unbiased=True) / n**0.5) if n > 1 else (0.0 if n == 1 else None)
    return SimulationSummary(mean, sem, int(len(scores)), int(dead.sum()))
