"""Calibration of σ(a·(cos + b)): the exact optimum, the reference grid and its tie rule, input errors,
calibration targets and the published constants (methods.md §3.1, §3.8)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from discover_ray.errors import ExplainInputError
from discover_ray.explain.calibrate import (
    GRID_A,
    GRID_B,
    PUBLISHED,
    Calibration,
    calibrate,
    calibration_loss,
    calibration_targets,
    kept_superclasses,
    published_calibration,
)


def planted(n: int, m: int, a: float, b: float, seed: int = 0, spread: float = 0.08) -> tuple[torch.Tensor, ...]:
    """cos around SigLIP-like values and targets drawn from the true model σ(a·(cos + b))."""
    g = torch.Generator().manual_seed(seed)
    cos = (0.05 + spread * torch.randn(n, m, generator=g)).clamp(-1, 1)
    targets = (torch.rand(n, m, generator=g) < torch.sigmoid(a * (cos + b))).float()
    return cos, targets


def brute_force_loss(cos: torch.Tensor, targets: torch.Tensor, a: float, b: float) -> float:
    x, t = cos.double(), targets.double()
    p = torch.sigmoid(a * (x + b))
    return float(-(t * torch.log(p) + (1 - t) * torch.log1p(-p)).mean())


@pytest.fixture(scope="module")
def planted_large():
    return planted(1500, 400, a=60.0, b=-0.12)


@pytest.fixture(scope="module")
def fits(planted_large):
    cos, targets = planted_large
    return calibrate(cos, targets), calibrate(cos, targets, method="grid")


def test_exact_recovers_the_planted_constants(planted_large, fits):
    cos, targets = planted_large
    fit = fits[0]
    assert fit.method == "exact"
    assert fit.a == pytest.approx(60.0, rel=0.03)
    assert fit.b == pytest.approx(-0.12, abs=0.002)
    assert fit.loss == pytest.approx(calibration_loss(cos, targets, fit.a, fit.b), rel=1e-12)


def test_exact_is_the_optimum_below_the_grid_and_any_nearby_point(planted_large, fits):
    cos, targets = planted_large
    exact, grid = fits
    assert grid.method == "grid" and (grid.a, grid.b) == (60.0, -0.12)
    assert exact.loss <= grid.loss
    for da, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-5), (0, -1e-5), (0.5, 0.002), (-0.5, -0.002), (0.2, -1e-4)]:
        a = exact.a * (1 + da)
        assert exact.loss <= calibration_loss(cos, targets, a, exact.b + db)
    # the gradient of the mean loss in (a, β = a·b) vanishes at the optimum
    a = torch.tensor(exact.a, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(exact.a * exact.b, dtype=torch.float64, requires_grad=True)
    z = a * cos.double() + beta
    loss = (torch.nn.functional.softplus(z, threshold=1000) - targets.double() * z).mean()
    loss.backward()
    assert abs(float(a.grad)) < 1e-9 and abs(float(beta.grad)) < 1e-9


def test_neither_method_depends_on_chunking_or_dtype():
    cos, targets = planted(300, 200, a=40.0, b=-0.1, seed=2)
    whole = calibrate(cos, targets, chunk=cos.shape[0])
    rows = calibrate(cos.double(), targets.bool(), chunk=37)
    assert rows.a == pytest.approx(whole.a, rel=1e-8) and rows.b == pytest.approx(whole.b, rel=1e-8)
    grid, grid_rows = calibrate(cos, targets, method="grid"), calibrate(cos.half(), targets.long(), method="grid",
                                                                          chunk=37)
    assert (grid_rows.a, grid_rows.b) == (grid.a, grid.b)


def test_exact_fits_a_negative_slope():
    cos, targets = planted(600, 50, a=-30.0, b=-0.05, seed=3)
    fit = calibrate(cos, targets)
    assert fit.a == pytest.approx(-30.0, rel=0.1)
    assert fit.b == pytest.approx(-0.05, abs=0.01)


def test_grid_returns_a_grid_point_and_matches_a_brute_force_double_loop():
    cos, targets = planted(12, 9, a=20.0, b=-0.2, seed=1, spread=0.2)
    fit = calibrate(cos, targets, method="grid")
    best, best_loss = None, math.inf
    for a in GRID_A:  # the reference's loop: a outer, b inner, strict < keeps the first least point
        for b in GRID_B:
            loss = brute_force_loss(cos, targets, a, b)
            if loss < best_loss:
                best, best_loss = (a, b), loss
    assert fit.method == "grid" and fit.a in GRID_A and fit.b in GRID_B
    assert (fit.a, fit.b) == best
    assert fit.loss == pytest.approx(best_loss, rel=1e-12)


def test_grid_ties_go_to_the_first_point_in_loop_order():
    # cos constant at 0.25 and half the targets 1: every point with a·(0.25 + b) = 0 reaches the least
    # loss log 2 (all a at b = -0.25, and a = 0 at every b). The first in loop order is a = 0.1, b = -0.25.
    cos = torch.full((4, 3), 0.25)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 0]])
    fit = calibrate(cos, targets, method="grid")
    assert (fit.a, fit.b) == (0.1, -0.25)
    assert fit.loss == pytest.approx(math.log(2), rel=1e-14)


def test_grid_tables_are_the_references():
    assert len(GRID_A) == 81 and GRID_A[:6] == (0.1, 0.25, 0.5, 0.75, 1.0, 0.0) and GRID_A[-1] == 150.0
    assert len(GRID_B) == 201 and GRID_B[0] == -1.0 and GRID_B[100] == 0.0 and GRID_B[-1] == 1.0
    assert GRID_B[91] == -0.09


@pytest.mark.parametrize(
    ("cos", "targets", "message"),
    [
        (torch.zeros(3, 4), torch.zeros(3, 5), "shape"),
        (torch.zeros(3), torch.zeros(3), "2-d"),
        (torch.zeros(0, 4), torch.zeros(0, 4), "empty"),
        (torch.tensor([[0.1, float("nan")], [0.2, 0.3]]), torch.tensor([[0.0, 1], [1, 0]]), "NaN"),
        (torch.tensor([[0.1, 0.2], [0.2, 0.3]]), torch.tensor([[0.0, 0.5], [1, 0]]), "0 or 1"),
        (torch.tensor([[0.1, 3.0], [0.2, 0.3]]), torch.tensor([[0.0, 1], [1, 0]]), "[-1, 1]"),
        (torch.tensor([[0.1, 0.2], [0.2, 0.3]]), torch.zeros(2, 2), "all 0"),
        (torch.tensor([[0.1, 0.2], [0.2, 0.3]]), torch.ones(2, 2), "all 1"),
    ],
)
@pytest.mark.parametrize("method", ["exact", "grid"])
def test_bad_input_is_an_explain_input_error(cos, targets, message, method):
    with pytest.raises(ExplainInputError, match=re.escape(message)):
        calibrate(cos, targets, method=method)


def test_exact_refuses_problems_without_a_finite_optimum():
    separated = torch.tensor([[0.1, 0.2], [0.3, 0.4]]), torch.tensor([[0.0, 0], [1, 1]])
    with pytest.raises(ExplainInputError, match="separates"):
        calibrate(*separated)
    assert calibrate(*separated, method="grid").a in GRID_A  # the grid has an answer
    with pytest.raises(ExplainInputError, match="constant"):
        calibrate(torch.full((2, 2), 0.3), torch.tensor([[0.0, 1], [1, 0]]))
    with pytest.raises(ExplainInputError, match="method"):
        calibrate(torch.zeros(2, 2), torch.zeros(2, 2), method="newton")
    with pytest.raises(ExplainInputError, match="chunk"):
        calibrate(torch.zeros(2, 2), torch.zeros(2, 2), chunk=0)


def test_calibration_is_a_frozen_record():
    fit = Calibration(a=60.0, b=-0.09, loss=0.02, method="grid")
    assert fit.as_dict() == {"a": 60.0, "b": -0.09, "loss": 0.02, "method": "grid"}
    assert float(fit.apply(torch.tensor(0.09))) == 0.5
    with pytest.raises(AttributeError):
        fit.a = 1.0  # type: ignore[misc]


def test_calibration_targets_one_hot_then_kept_superclasses():
    superclasses = {"big": [0, 1, 2, 3], "pair": [1, 2], "odd": [3], "dup": [0, 0, 1, 1]}
    targets = calibration_targets([2, 0, 3, 3], 4, superclasses, max_classes=3)
    assert kept_superclasses(superclasses, max_classes=3) == ["pair", "odd", "dup"]  # distinct classes counted
    assert targets.shape == (4, 4 + 3) and targets.dtype == torch.float32
    expected = torch.tensor([
        [0, 0, 1, 0, 1, 0, 0],
        [1, 0, 0, 0, 0, 0, 1],
        [0, 0, 0, 1, 0, 1, 0],
        [0, 0, 0, 1, 0, 1, 0],
    ], dtype=torch.float32)
    assert torch.equal(targets, expected)
    assert calibration_targets(torch.tensor([1, 0]), 3, None).shape == (2, 3)


def test_calibration_targets_exclude_superclasses_above_300_classes():
    # ImageNet-like: 400 superclasses of which nine cover more than 300 classes → 1000 + 391 columns
    sizes = [1000, 997, 958, 949, 410, 398, 337, 522, 358] + [2 + i % 250 for i in range(391)]
    superclasses = {f"s{i}": list(range(size)) for i, size in enumerate(sizes)}
    targets = calibration_targets(list(range(0, 1000, 7)), 1000, superclasses)
    assert targets.shape == (len(range(0, 1000, 7)), 1000 + 391)
    assert set(kept_superclasses(superclasses)) == {f"s{i}" for i in range(9, 400)}
    assert kept_superclasses(superclasses, max_classes=300) == kept_superclasses(superclasses)
    assert "s6" in kept_superclasses(superclasses, max_classes=337)  # ≤ is kept


@pytest.mark.parametrize(
    ("labels", "n_classes", "superclasses", "message"),
    [
        ([0, 5], 4, None, "outside"),
        ([], 4, None, "non-empty"),
        ([0.5, 1.0], 4, None, "integer"),
        ([0, 1], 0, None, "n_classes"),
        ([0, 1], 3, {"s": [1, 7]}, "superclass 's'"),
    ],
)
def test_calibration_targets_bad_input(labels, n_classes, superclasses, message):
    with pytest.raises(ExplainInputError, match=message):
        calibration_targets(labels, n_classes, superclasses)


def test_published_calibration_lookups():
    assert published_calibration("ViT-L-16-SigLIP-384", "webli") == (60.0, -0.09)
    assert published_calibration("ViT-SO400M-14-SigLIP-384", "webli") == (58.0, -0.13)
    assert published_calibration("ViT-L-14-336", "openai") == (58.0, -0.25)
    assert published_calibration("ViT-L-14-336") == (58.0, -0.25)  # the model alone names one entry
    assert published_calibration("ViT-L-14-336", "laion2b") is None
    assert published_calibration("ViT-B-32", None) is None
    assert len(PUBLISHED) == 3
