"""Training throughput of each competitive (CVN) network vs its original architecture (prints JSON).

One training step = forward, loss, backward and optimizer step on random images and labels, the model in
train mode: the original minimises cross-entropy, its twin the ELBO (cross-entropy + kl_weight · the KL the
LWTA layers accumulated, ``discover_ray.cvn.objective.elbo_loss``). Both models of a pair are built with
the same arguments, run in this process with the same thread count, and are timed interleaved
(original, twin, original, twin, …) ``--repeat`` times after a warm-up; the best of each is reported,
with every run listed. The overhead is 1 − twin / original throughput (of the best runs; also given for
the median runs, as timings on a shared machine vary).

    python tests/benchmarks/bench_cvn.py                          # all pairs
    python tests/benchmarks/bench_cvn.py --models cifar_resnet20 --repeat 5
    python tests/benchmarks/bench_cvn.py --device cuda --full-size      # a GPU: bf16 autocast, 224 px, batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from discover_ray.cvn.objective import elbo_loss  # noqa: E402
from discover_ray.models import ModelSpec, load_model  # noqa: E402

KL_WEIGHT = 1e-3


@dataclass(frozen=True)
class Pair:
    original: str
    cvn: str
    batch: int
    image_size: int
    optimizer: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    classes: int = 10


PAIRS = {
    "cifar_resnet20": Pair("cifar_resnet20", "cifar_resnet20_cvn2", batch=128, image_size=32, optimizer="sgd"),
    "resnet18": Pair("resnet18", "resnet18_cvn4", batch=32, image_size=64, optimizer="sgd",
                     kwargs={"num_classes": 10}),
    "deit_tiny": Pair("deit_tiny_patch16_224", "deit_tiny_cvn16", batch=64, image_size=64, optimizer="adamw",
                      kwargs={"img_size": 64, "num_classes": 10}),
}


class Trainer:
    """A model, its optimizer and a fixed random batch; ``steps(n)`` returns seconds per step."""

    def __init__(self, name: str, pair: Pair, seed: int, device: torch.device, compile_model: bool = False):
        torch.manual_seed(seed)
        self.name, self.device = name, device
        self.cvn = name == pair.cvn
        self.model = load_model(ModelSpec(name=name, kwargs=pair.kwargs)).model.to(device).train()
        self.forward = torch.compile(self.model) if compile_model else self.model
        params = self.model.parameters()
        if pair.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
        self.images = torch.randn(pair.batch, 3, pair.image_size, pair.image_size, device=device)
        self.labels = torch.randint(0, pair.classes, (pair.batch,), device=device)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.forward(self.images)
        if self.cvn:
            loss = elbo_loss(logits, self.labels, self.model, kl_weight=KL_WEIGHT).loss
        else:
            loss = F.cross_entropy(logits, self.labels)
        loss.backward()
        self.optimizer.step()

    def steps(self, n: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(n):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / n


def bench_pair(pair: Pair, repeat: int, steps: int, warmup: int, device: torch.device, compile_model: bool) -> dict[str, Any]:
    trainers = [Trainer(name, pair, 0, device, compile_model) for name in (pair.original, pair.cvn)]
    for trainer in trainers:
        trainer.steps(warmup)
    runs: dict[str, list[float]] = {trainer.name: [] for trainer in trainers}
    for _ in range(repeat):
        for trainer in trainers:
            runs[trainer.name].append(trainer.steps(steps))
    best = {name: min(seconds) for name, seconds in runs.items()}
    median = {name: statistics.median(seconds) for name, seconds in runs.items()}
    original, cvn = (pair.batch / best[name] for name in (pair.original, pair.cvn))
    return {
        "original": pair.original, "cvn": pair.cvn, "batch": pair.batch, "image_size": pair.image_size,
        "kwargs": pair.kwargs, "optimizer": pair.optimizer,
        "original_images_per_s": round(original, 1), "cvn_images_per_s": round(cvn, 1),
        "overhead": round(1 - cvn / original, 3),
        "median_overhead": round(1 - median[pair.original] / median[pair.cvn], 3),
        "seconds_per_step": {name: [round(s, 4) for s in seconds] for name, seconds in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS),
                        help=f"comma-separated pairs, named by their original: {', '.join(PAIRS)}")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timings of each model (best kept)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timing")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    parser.add_argument("--full-size", action="store_true", help="224 px inputs and batch 256 (ResNet-18, DeiT-Tiny)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models of each pair")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PAIRS]
    if unknown:
        parser.error(f"unknown pair(s) {', '.join(unknown)}; choose from {', '.join(PAIRS)}")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    pairs = [PAIRS[name] for name in chosen]
    if args.full_size:
        pairs = [replace(p, batch=256, image_size=224 if p.image_size > 32 else 32,
                         kwargs={k: v for k, v in p.kwargs.items() if k != "img_size"}) for p in pairs]
    results = [bench_pair(pair, args.repeat, args.steps, args.warmup, device, args.compile) for pair in pairs]
    print(json.dumps({
        "benchmark": "cvn_training", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "compiled": args.compile, "threads": threads, "repeat": args.repeat, "steps": args.steps,
        "kl_weight": KL_WEIGHT, "torch": torch.__version__, "pairs": results,
    }, indent=2))


if __name__ == "__main__":
    main()
