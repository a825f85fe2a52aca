"""The pieces of a training recipe: optimiser, per-epoch learning-rate schedule, training augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision import transforms as T

from discover_ray.errors import ConfigError
from discover_ray.training.config import OptimizerSection, ScheduleSection

__all__ = ["build_optimizer", "build_scheduler", "learning_rate", "train_transform"]


def build_optimizer(model: nn.Module, section: OptimizerSection) -> torch.optim.Optimizer:
    """SGD with momentum on every parameter (the ResNet recipe), or AdamW without decay on biases,
    norms and the timm parameters a model names in ``no_weight_decay()`` (the DeiT recipe)."""
    if section.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay)
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (plain if parameter.ndim <= 1 or name in skip else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": section.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=section.lr)


def learning_rate(epoch: int, base: float, epochs: int, schedule: ScheduleSection) -> float:
    """The learning rate of ``epoch`` (0-based): warm-up, then step, cosine or constant."""
    if epoch < schedule.warmup_epochs:
        return schedule.warmup_lr + (base - schedule.warmup_lr) * epoch / schedule.warmup_epochs
    if schedule.name == "step":
        return base * schedule.gamma ** (epoch // schedule.step_epochs)
    if schedule.name == "cosine":
        span = max(1, epochs - schedule.warmup_epochs)
        progress = (epoch - schedule.warmup_epochs) / span
        return schedule.min_lr + 0.5 * (base - schedule.min_lr) * (1 + math.cos(math.pi * progress))
    return base


def build_scheduler(
    optimizer: torch.optim.Optimizer, base: float, epochs: int, schedule: ScheduleSection
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch; its state is saved with every checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: learning_rate(e, base, epochs, schedule) / base)


def train_transform(eval_transform: Callable[[Any], torch.Tensor], augment: str) -> Callable[[Any], torch.Tensor]:
    """The model's evaluation preprocessing with its geometric head replaced by training augmentation.

    ``crop_flip``: pad-and-random-crop plus horizontal flip (the CIFAR recipe); ``resized_crop_flip``:
    random-resized crop plus flip (the ImageNet recipes); ``none``: the evaluation transform.
    """
    if augment == "none":
        return eval_transform
    size, normalize = _size_and_normalize(eval_transform)
    if augment == "crop_flip":
        head: list[Any] = [T.Resize(size), T.CenterCrop(size), T.RandomCrop(size, padding=max(1, size // 8))]
    else:
        head = [T.RandomResizedCrop(size)]
    return T.Compose([*head, T.RandomHorizontalFlip(), T.ToTensor(), *normalize])


def _size_and_normalize(transform: Callable[[Any], torch.Tensor]) -> tuple[int, list[T.Normalize]]:
    steps = list(getattr(transform, "transforms", []))
    normalize = [s for s in steps if isinstance(s, T.Normalize)]
    crops = [s for s in steps if isinstance(s, T.CenterCrop)]
    if not crops:
        raise ConfigError("cannot derive a training augmentation from a preprocessing without a CenterCrop; set data.augment: none")
    size = crops[-1].size
    return int(size[0] if isinstance(size, (tuple, list)) else size), normalize
