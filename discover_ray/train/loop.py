"""The per-worker training loop run by Ray Train's ``TorchTrainer``.

Every epoch ends in a checkpoint (``model.safetensors`` that ``discover dissect`` loads as it is,
``training_state.pt`` with optimiser, scheduler and epoch, ``metrics.json`` with the history) reported
through ``ray.train.report``; a restarted worker or a re-run with the same name resumes from the newest.
Randomness (shuffling, augmentation, Gumbel noise) is seeded from (seed, epoch, rank), so a resumed
run continues exactly as an uninterrupted one would have.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from discover_ray.cvn import active_fractions, lwta_modules, tracking
from discover_ray.cvn.objective import elbo_loss, predict
from discover_ray.models import load_model
from discover_ray.train.config import TrainConfig
from discover_ray.train.contrastive import CaptionedImages, build_clip, contrastive_step
from discover_ray.train.data import LabelledImages
from discover_ray.train.recipe import build_optimizer, build_scheduler, train_transform

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def train_loop(raw_config: dict[str, Any]) -> None:
    config = TrainConfig.model_validate(raw_config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config.scaling.use_gpu else torch.device("cpu")
    if device.type == "cpu":  # Ray sets OMP_NUM_THREADS=1 in workers; use the CPUs this worker reserved
        torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))

    torch.manual_seed(config.seed)  # the same initial weights on every worker
    contrastive = config.task == "contrastive"
    if contrastive:
        model, _, preprocess, tokenizer = build_clip(config.model.name, config.model.checkpoint, config.seed)
        train_set: LabelledImages = CaptionedImages(
            config.data.train.open(), train_transform(preprocess, config.data.augment), tokenizer, config.seed,
            failure_budget=config.data.train.failure_budget)
        val_set = (
            CaptionedImages(config.data.val.open(), preprocess, tokenizer, config.seed,
                            failure_budget=config.data.val.failure_budget) if config.data.val else None
        )
        loss_fn = ClipLoss(gather_with_grad=world > 1, rank=rank, world_size=max(1, world))
    else:
        loaded = load_model(config.model.spec())
        model = loaded.model
        for _, module in lwta_modules(model):
            module.tau = config.competition.tau
        train_set = LabelledImages(config.data.train.open(), train_transform(loaded.preprocess, config.data.augment),
                                   failure_budget=config.data.train.failure_budget)
        val_set = (
            LabelledImages(config.data.val.open(), loaded.preprocess, failure_budget=config.data.val.failure_budget)
            if config.data.val else None
        )
    per_worker = max(1, config.batch_size // max(1, world))
    train_sampler = DistributedSampler(train_set, num_replicas=max(1, world), rank=rank, shuffle=True,
                                       seed=config.seed, drop_last=True)
    train_loader = DataLoader(train_set, batch_size=per_worker, sampler=train_sampler, drop_last=len(train_set) >= per_worker * world,
                              num_workers=config.data.loader_workers)
    val_loader = None
    if val_set is not None:
        val_sampler = DistributedSampler(val_set, num_replicas=max(1, world), rank=rank, shuffle=False)
        val_loader = DataLoader(val_set, batch_size=per_worker, sampler=val_sampler, num_workers=config.data.loader_workers)

    if not contrastive:
        _check_outputs(model, train_set)
    model.to(device)
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = build_scheduler(optimizer, config.optimizer.lr, config.epochs, config.schedule)
    history: list[dict[str, Any]] = []
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(load_file(str(Path(folder) / MODEL_FILE), device=str(device)))
            state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["epoch"]) + 1
            history = json.loads((Path(folder) / METRICS_FILE).read_text())["history"]
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.bf16 else nullcontext()
    )

    for epoch in range(start, config.epochs):
        torch.manual_seed(config.seed * 1_000_003 + epoch * 1_009 + rank)
        lr = optimizer.param_groups[0]["lr"]
        train_sampler.set_epoch(epoch)
        if isinstance(train_set, CaptionedImages):
            train_set.set_epoch(epoch)
        trained.train()
        sums = torch.zeros(5, dtype=torch.float64)  # loss·n, ce·n, kl·n, correct, n
        began = time.perf_counter()
        with tracking(model):
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if contrastive:
                    with autocast:
                        loss, correct = contrastive_step(model, trained, loss_fn, x, y)
                    parts = (loss.item(), 0.0)
                else:
                    with autocast:
                        logits = trained(x)
                    objective = elbo_loss(logits, y, model, config.competition.kl_weight)
                    loss, parts = objective.loss, (objective.ce.item(), objective.kl.item())
                    correct = int((logits.argmax(1) == y).sum())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = len(y)
                sums += torch.tensor([loss.item() * n, parts[0] * n, parts[1] * n, correct, n], dtype=torch.float64)
            fractions = active_fractions(model)
        seconds = time.perf_counter() - began
        scheduler.step()
        sums = _all_reduce(sums, world)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "loss": sums[0].item() / sums[4].item(),
            "ce": sums[1].item() / sums[4].item(),
            "kl": sums[2].item() / sums[4].item(),
            "train_top1": sums[3].item() / sums[4].item(),
            "images_per_s": sums[4].item() / seconds,
            "active_fraction": fractions,
        }
        if val_loader is not None and contrastive:
            metrics.update(_evaluate_contrastive(model, loss_fn, val_loader, device, world, autocast))
        elif val_loader is not None:
            metrics.update(_evaluate(model, val_loader, device, config.competition.eval_samples, world, autocast))
        history.append(metrics)
        if rank == 0:
            print(_line(metrics), flush=True)
        with tempfile.TemporaryDirectory() as folder:
            report_checkpoint = None
            if rank == 0:
                _save(Path(folder), model, optimizer, scheduler, epoch, history, config)
                report_checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({k: v for k, v in metrics.items() if k != "active_fraction"} | {
                "active_fraction_mean": _mean(fractions)}, checkpoint=report_checkpoint,
                checkpoint_dir_name=checkpoint_name(epoch))


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device, samples: int, world: int, autocast) -> dict[str, float]:
    """Top-1 and CE of logits averaged over ``samples`` stochastic passes, over every worker's share."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # ce·n, correct, n
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast:
            logits = predict(model, x, samples)
        ce = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        sums += torch.tensor([ce, (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    sums = _all_reduce(sums, world)
    return {"val_ce": sums[0].item() / sums[2].item(), "val_top1": sums[1].item() / sums[2].item(),
            "eval_samples": samples if lwta_modules(model) else 1}


@torch.no_grad()
def _evaluate_contrastive(model: nn.Module, loss_fn, loader: DataLoader, device: torch.device, world: int, autocast) -> dict[str, float]:
    """InfoNCE and in-batch image→caption top-1 over the validation images."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n
    for x, tokens in loader:
        x, tokens = x.to(device), tokens.to(device)
        with autocast:
            loss, correct = contrastive_step(model, model, loss_fn, x, tokens)
        sums += torch.tensor([loss.item() * len(x), correct, len(x)], dtype=torch.float64)
    sums = _all_reduce(sums, world)
    return {"val_ce": sums[0].item() / sums[2].item(), "val_top1": sums[1].item() / sums[2].item(), "eval_samples": 1}


@torch.no_grad()
def _check_outputs(model: nn.Module, data: LabelledImages) -> None:
    """A classifier with fewer outputs than the data has classes fails here, not as an index error mid-epoch."""
    model.eval()
    outputs = model(data[0][0][None]).shape[-1]
    if outputs < data.num_classes:
        raise ValueError(
            f"the model has {outputs} outputs but the training data has {data.num_classes} classes; "
            f"set model.kwargs.num_classes: {data.num_classes}"
        )


def _all_reduce(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1 and dist.is_initialized():
        values = values.to(torch.float64)
        dist.all_reduce(values)
    return values


def _save(folder: Path, model: nn.Module, optimizer, scheduler, epoch: int, history: list, config: TrainConfig) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes a metadata map in hash order, which differs between processes, and
    # the file's sha256 is the checkpoint id that names its dissections; one key keeps the bytes reproducible.
    save_file(state, str(folder / MODEL_FILE), metadata={"discover": json.dumps({"epoch": epoch, "model": config.model.name})})
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch}, folder / STATE_FILE)
    (folder / METRICS_FILE).write_text(json.dumps({
        "name": config.run_name, "model": config.model.name, "epoch": epoch, "epochs": config.epochs,
        "competition": config.competition.model_dump(), "history": history,
        "config": config.model_dump(mode="json"),
    }, indent=2))


def _mean(fractions: dict[str, float]) -> float:
    return sum(fractions.values()) / len(fractions) if fractions else 1.0


def _line(metrics: dict[str, Any]) -> str:
    parts = [f"epoch {metrics['epoch']}", f"loss {metrics['loss']:.4f}", f"ce {metrics['ce']:.4f}",
             f"kl {metrics['kl']:.4f}", f"train top-1 {metrics['train_top1']:.2%}"]
    if "val_top1" in metrics:
        parts.append(f"val top-1 {metrics['val_top1']:.2%} ({metrics['eval_samples']} passes)")
    parts.append(f"active {_mean(metrics['active_fraction']):.4f}")
    parts.append(f"{metrics['images_per_s']:.0f} img/s")
    return " | ".join(parts)
