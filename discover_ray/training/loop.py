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
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from discover_ray.cvn import active_fractions, tracking
from discover_ray.training.config import TrainConfig
from discover_ray.training.recipe import build_optimizer, build_scheduler
from discover_ray.training.tasks import TASKS

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
    task = TASKS[config.task]()
    built = task.build(config, rank, world)
    model, train_set, val_set = built.model, built.train, built.val
    per_worker = max(1, config.batch_size // max(1, world))
    train_sampler = DistributedSampler(train_set, num_replicas=max(1, world), rank=rank, shuffle=True,
                                       seed=config.seed, drop_last=True)
    train_loader = DataLoader(train_set, batch_size=per_worker, sampler=train_sampler,
                              drop_last=len(train_set) >= per_worker * world, num_workers=config.data.loader_workers)
    val_loader = None
    if val_set is not None:
        val_sampler = DistributedSampler(val_set, num_replicas=max(1, world), rank=rank, shuffle=False)
        val_loader = DataLoader(val_set, batch_size=per_worker, sampler=val_sampler, num_workers=config.data.loader_workers)

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
        task.start_epoch(train_set, epoch)
        trained.train()
        sums = torch.zeros(5, dtype=torch.float64)  # loss·n, ce·n, kl·n, correct, n
        began = time.perf_counter()
        with tracking(model):
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                step = task.step(model, trained, x, y, config, autocast)
                optimizer.zero_grad(set_to_none=True)
                step.loss.backward()
                optimizer.step()
                n = len(y)
                sums += torch.tensor([step.loss.item() * n, step.ce * n, step.kl * n, step.correct, n], dtype=torch.float64)
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
        if val_loader is not None:
            metrics.update(task.evaluate(model, val_loader, device, config, autocast, lambda t: _all_reduce(t, world)))
        history.append(metrics)
        if rank == 0:
            print(epoch_line(metrics), flush=True)
        with tempfile.TemporaryDirectory() as folder:
            report_checkpoint = None
            if rank == 0:
                _save(Path(folder), model, optimizer, scheduler, epoch, history, config)
                report_checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({k: v for k, v in metrics.items() if k != "active_fraction"} | {
                "active_fraction_mean": _mean(fractions)}, checkpoint=report_checkpoint,
                checkpoint_dir_name=checkpoint_name(epoch))


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


def epoch_line(metrics: dict[str, Any]) -> str:
    parts = [f"epoch {metrics['epoch']}", f"loss {metrics['loss']:.4f}", f"ce {metrics['ce']:.4f}",
             f"kl {metrics['kl']:.4f}", f"train top-1 {metrics['train_top1']:.2%}"]
    if "val_top1" in metrics:
        parts.append(f"val top-1 {metrics['val_top1']:.2%} ({metrics['eval_samples']} passes)")
    parts.append(f"active {_mean(metrics['active_fraction']):.4f}")
    parts.append(f"{metrics['images_per_s']:.0f} img/s")
    return " | ".join(parts)
