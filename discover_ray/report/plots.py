"""The report's figures, drawn with matplotlib's Agg backend (no display needed) as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["score_histogram", "sparsity_chart"]

_PNG = {"format": "png", "dpi": 110, "metadata": {"Software": None}}  # no version stamp: same inputs, same bytes


def sparsity_chart(
    path: Path, names: Sequence[str], means: Sequence[float], stds: Sequence[float], expected: Sequence[float | None]
) -> None:
    """Mean ± std of the per-example active fraction per layer; 1/U marked for LWTA layers."""
    height = 1.2 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(7.5, height))
    y = np.arange(len(names))
    ax.barh(y, means, xerr=stds, color="#4c78a8", ecolor="#333333", capsize=3)
    for i, value in enumerate(expected):
        if value is not None:
            ax.plot([value, value], [i - 0.4, i + 0.4], color="#e45756", linewidth=2)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("active fraction per example (mean ± std); red: 1/U of an LWTA layer")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, **_PNG)
    plt.close(fig)


def score_histogram(path: Path, title: str, scores: np.ndarray, method: str) -> None:
    """Distribution of the top-1 concept scores of a layer's units."""
    fig, ax = plt.subplots(figsize=(4.8, 2.8))
    finite = scores[np.isfinite(scores)]
    ax.hist(finite, bins=min(40, max(5, finite.size // 4 or 5)), color="#72b7b2", edgecolor="#2f4f4f")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"top-1 {method} score")
    ax.set_ylabel("units")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, **_PNG)
    plt.close(fig)
