"""The offline demo: train a tiny CNN on generated shapes, record its activations, describe its neurons.

Everything runs in-process on CPU in well under a minute and is deterministic for a given seed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from discover_ray import world
from discover_ray.cvn import to_cvn
from discover_ray.evaluate import NeuronIdentification, neuron_identification
from discover_ray.record import record_activations
from discover_ray.similarity import similarity_matrix, top_concepts


def tiny_cnn(n_classes: int, competitors: int = 1) -> nn.Sequential:
    """Three conv–BN–ReLU–pool stages and a linear classifier; ~98 % on the generated shapes.

    ``competitors`` > 1 gives its competitive twin: every ReLU an LWTA block of that many channels.
    """
    stages: list[tuple[str, nn.Module]] = []
    width_in = 3
    for i, width in enumerate((16, 32, 32), start=1):
        stages += [
            (f"conv{i}", nn.Conv2d(width_in, width, 3, padding=1)),
            (f"bn{i}", nn.BatchNorm2d(width)),
            (f"relu{i}", nn.ReLU()),
            (f"pool{i}", nn.MaxPool2d(2)),
        ]
        width_in = width
    stages += [("flatten", nn.Flatten()), ("fc", nn.Linear(32 * 4 * 4, n_classes))]
    model = nn.Sequential(OrderedDict(stages))
    return to_cvn(model, competitors) if competitors > 1 else model


@dataclass
class LayerLabels:
    layer: str
    concepts: list[list[str]]  # per unit, best first
    scores: torch.Tensor  # [K, k]


@dataclass
class DemoResult:
    train_accuracy: float
    probe_accuracy: float
    layers: list[LayerLabels]
    identification: NeuronIdentification


def run_demo(
    seed: int = 0, n_train: int = 1800, n_probe: int = 900, epochs: int = 6, method: str = "soft_wpmi"
) -> DemoResult:
    torch.manual_seed(seed)
    train = world.generate(n_train, seed=seed)
    probe = world.generate(n_probe, seed=seed + 1)
    model = tiny_cnn(len(world.class_names()))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n_train, generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    acts = record_activations(model, ["relu2", "relu3", "fc"], probe.images.split(128))
    names, scores = world.label_concepts(probe)
    results = []
    for layer, a in acts.items():
        values, index = top_concepts(method, a, concept_scores=scores, k=3)
        results.append(LayerLabels(layer, [[names[i] for i in row] for row in index.tolist()], values))
    final = similarity_matrix(method, acts["fc"], scores)
    identification = neuron_identification(final, list(range(len(world.class_names()))))
    model.eval()
    with torch.no_grad():
        train_acc = float((model(train.images).argmax(1) == train.labels).float().mean())
        probe_acc = float((model(probe.images).argmax(1) == probe.labels).float().mean())
    return DemoResult(train_acc, probe_acc, results, identification)
