"""A model builder for fault-tolerance tests: its worker crashes once, in the middle of epoch 1."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from discover_ray.demo import tiny_cnn


def tiny_cnn_crashing_once(n_classes: int, competitors: int, flag: str, crash_at: int) -> nn.Module:
    """``tiny_cnn``, whose ``crash_at``-th forward pass raises, unless ``flag`` exists (then it is created)."""
    model = tiny_cnn(n_classes, competitors)
    calls = {"n": 0}

    def count(_module: nn.Module, _inputs: object) -> None:
        calls["n"] += 1
        if calls["n"] == crash_at and not Path(flag).exists():
            Path(flag).touch()
            raise RuntimeError("injected worker failure")

    model.register_forward_pre_hook(count)
    return model
