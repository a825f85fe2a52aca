"""Structured test data with a known answer: every neuron fires on the images that contain its concept."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Planted:
    activations: Tensor  # [N, K]
    image_emb: Tensor  # [N, d], L2-normalised
    concept_emb: Tensor  # [M, d], L2-normalised
    planted: Tensor  # [K]: the concept each neuron was built to detect

    @property
    def scores(self) -> Tensor:
        return self.image_emb @ self.concept_emb.T


def planted_problem(
    n_images: int = 3000, n_concepts: int = 200, n_neurons: int = 120, dim: int = 64, per_image: int = 3, seed: int = 0
) -> Planted:
    g = torch.Generator().manual_seed(seed)
    concept_emb = torch.nn.functional.normalize(torch.randn(n_concepts, dim, generator=g), dim=1)
    present = torch.zeros(n_images, n_concepts)
    choice = torch.rand(n_images, n_concepts, generator=g).argsort(dim=1)[:, :per_image]
    present.scatter_(1, choice, 1.0)
    noise = 0.3 * torch.randn(n_images, dim, generator=g)
    image_emb = torch.nn.functional.normalize(present @ concept_emb + noise, dim=1)
    planted = torch.randperm(n_concepts, generator=g)[:n_neurons]
    gain = 1 + 0.5 * torch.rand(n_images, n_neurons, generator=g)
    drive = present[:, planted] * gain + 0.1 * torch.randn(n_images, n_neurons, generator=g)
    return Planted(torch.relu(drive), image_emb, concept_emb, planted)
