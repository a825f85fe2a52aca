"""What a training run learns, as task objects the loop calls: a classifier (cross-entropy, plus the ELBO's
KL term for CVNs) or a CLIP (contrastive InfoNCE on image–caption pairs).

A task builds the model and its data, computes one step's loss and evaluates; the loop around it (Ray
Train workers, checkpoints, resume, schedules) is the same for every task. A new task is one class here
and one name in ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from discover_ray.cvn import lwta_modules
from discover_ray.cvn.objective import elbo_loss, predict
from discover_ray.errors import ConfigError
from discover_ray.models import load_model
from discover_ray.training.config import TrainConfig
from discover_ray.training.contrastive import CaptionedImages, build_clip, contrastive_step
from discover_ray.training.data import LabelledImages
from discover_ray.training.recipe import train_transform

__all__ = ["TASKS", "Built", "Classify", "Contrastive", "Step", "TrainTask"]


@dataclass
class Built:
    model: nn.Module
    train: LabelledImages
    val: LabelledImages | None


@dataclass
class Step:
    """One batch: the loss to minimise, its parts (for the metrics) and how many examples were right."""

    loss: torch.Tensor
    ce: float
    kl: float
    correct: int


class TrainTask:
    name: ClassVar[str]

    def build(self, config: TrainConfig, rank: int, world: int) -> Built:
        raise NotImplementedError

    def start_epoch(self, data: LabelledImages, epoch: int) -> None:
        """Called before each epoch (e.g. to draw other captions)."""

    def step(self, model: nn.Module, trained: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
             autocast: Any) -> Step:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, config: TrainConfig, autocast: Any,
                 reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError


class Classify(TrainTask):
    """Cross-entropy (+ ``kl_weight`` · KL of each LWTA layer's block distribution to uniform, for CVNs);
    evaluation averages the logits of ``eval_samples`` stochastic passes."""

    name = "classify"

    def build(self, config: TrainConfig, rank: int, world: int) -> Built:
        loaded = load_model(config.model.spec())
        for _, module in lwta_modules(loaded.model):
            module.tau = config.competition.tau
        data = config.data
        train = LabelledImages(data.train.open(), train_transform(loaded.preprocess, data.augment),
                               failure_budget=data.train.failure_budget)
        val = LabelledImages(data.val.open(), loaded.preprocess, failure_budget=data.val.failure_budget) if data.val else None
        _check_outputs(loaded.model, train)
        return Built(loaded.model, train, val)

    def step(self, model, trained, x, y, config, autocast) -> Step:
        with autocast:
            logits = trained(x)
        objective = elbo_loss(logits, y, model, config.competition.kl_weight)
        return Step(objective.loss, objective.ce.item(), objective.kl.item(), int((logits.argmax(1) == y).sum()))

    @torch.no_grad()
    def evaluate(self, model, loader, device, config, autocast, reduce) -> dict[str, float]:
        """Top-1 and CE of logits averaged over ``eval_samples`` stochastic passes, over every worker's share."""
        model.eval()
        samples = config.competition.eval_samples
        sums = torch.zeros(3, dtype=torch.float64)  # ce·n, correct, n
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with autocast:
                logits = predict(model, x, samples)
            ce = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
            sums += torch.tensor([ce, (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
        sums = reduce(sums)
        return {"val_ce": sums[0].item() / sums[2].item(), "val_top1": sums[1].item() / sums[2].item(),
                "eval_samples": samples if lwta_modules(model) else 1}


class Contrastive(TrainTask):
    """An open_clip model on image–caption pairs: open_clip's symmetric InfoNCE, features gathered over every
    worker; "top-1" is in-batch image→caption retrieval."""

    name = "contrastive"

    def build(self, config: TrainConfig, rank: int, world: int) -> Built:
        from open_clip.loss import ClipLoss

        model, _, preprocess, tokenizer = build_clip(config.model.name, config.model.checkpoint, config.seed)
        data = config.data
        train = CaptionedImages(data.train.open(), train_transform(preprocess, data.augment), tokenizer, config.seed,
                                failure_budget=data.train.failure_budget)
        val = (CaptionedImages(data.val.open(), preprocess, tokenizer, config.seed, failure_budget=data.val.failure_budget)
               if data.val else None)
        self.loss_fn = ClipLoss(gather_with_grad=world > 1, rank=rank, world_size=max(1, world))
        return Built(model, train, val)

    def start_epoch(self, data: LabelledImages, epoch: int) -> None:
        assert isinstance(data, CaptionedImages)
        data.set_epoch(epoch)

    def step(self, model, trained, x, y, config, autocast) -> Step:
        with autocast:
            loss, correct = contrastive_step(model, trained, self.loss_fn, x, y)
        return Step(loss, loss.item(), 0.0, correct)

    @torch.no_grad()
    def evaluate(self, model, loader, device, config, autocast, reduce) -> dict[str, float]:
        """InfoNCE and in-batch image→caption top-1 over the validation images."""
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n
        for x, tokens in loader:
            x, tokens = x.to(device), tokens.to(device)
            with autocast:
                loss, correct = contrastive_step(model, model, self.loss_fn, x, tokens)
            sums += torch.tensor([loss.item() * len(x), correct, len(x)], dtype=torch.float64)
        sums = reduce(sums)
        return {"val_ce": sums[0].item() / sums[2].item(), "val_top1": sums[1].item() / sums[2].item(), "eval_samples": 1}


TASKS: dict[str, type[TrainTask]] = {task.name: task for task in (Classify, Contrastive)}


@torch.no_grad()
def _check_outputs(model: nn.Module, data: LabelledImages) -> None:
    """A classifier with fewer outputs than the data has classes fails here, not as an index error mid-epoch."""
    model.eval()
    outputs = model(data[0][0][None]).shape[-1]
    if outputs < data.num_classes:
        raise ConfigError(
            f"the model has {outputs} outputs but the training data has {data.num_classes} classes; "
            f"set model.kwargs.num_classes: {data.num_classes}"
        )
