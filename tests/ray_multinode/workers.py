"""What the multi-node scenarios run in Ray workers (test-only): the demo's tiny CNN whose forward pass
sleeps, so that a node can be removed while RECORD still has chunks to do (the delay is read from
``DELAY_ENV`` at each call and is set only in the workers, by the environment of the worker nodes, so the
driver's in-process reference run is fast and both compute the same bytes), a task that kills its worker
on one task, and one that reports the fault-injection variable its worker was given."""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import torch
from torch import nn

from discover_ray.demo import tiny_cnn as _tiny_cnn

DELAY_ENV = "DISCOVER_TEST_FORWARD_DELAY_S"


class _Slow(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get(DELAY_ENV) or 0))
        return super().forward(x)


def tiny_cnn(n_classes: int) -> nn.Module:
    """``discover_ray.demo:tiny_cnn`` with the same layers and weights, slowed in workers."""
    return _Slow(OrderedDict(_tiny_cnn(n_classes).named_children()))


def exit_on_one(payload: object, task: int) -> int:
    """A task stage's compute function whose task ``1`` kills the worker process running it, every time."""
    if task == 1:
        os._exit(1)
    return task * 2


def fault_setting(payload: object, task: int) -> tuple[int, str | None]:
    """A task stage's compute function: the task and the ``DISCOVER_FAULT`` its worker sees."""
    return task, os.environ.get("DISCOVER_FAULT")
