"""RECORD: the target model with hooks on the chosen layers, one forward pass per chunk records them all."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from discover_ray.cvn import lwta_modules, seed_examples, set_deterministic
from discover_ray.models import ModelSpec, load_model
from discover_ray.record import ConvPool, TokenPool, record_activations
from discover_ray.stages.inference import carried


def image_seed(seed: int, image_id: str) -> int:
    """The LWTA sampling seed of one probe image in a run (architecture: seeded per image)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()[:8], "little") & (2**63 - 1)


def seeded_load(spec: ModelSpec, seed: int):
    """Build and load the model with torch's RNG seeded, so random-init models are the same everywhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_model(spec)


class ActivationRecorder:
    """A Ray Data actor: loads its model once in ``__init__``, records pooled activations per chunk."""

    def __init__(
        self, spec: ModelSpec, layers: list[str], conv_pool: ConvPool, token_pool: TokenPool, seed: int, threads: int,
        competition: str = "sample",
    ):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = seeded_load(spec, seed).model.to(self.device)
        self.layers, self.conv_pool, self.token_pool, self.seed = list(layers), conv_pool, token_pool, seed
        self.competing = bool(lwta_modules(self.model))
        set_deterministic(self.model, competition == "argmax")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = np.asarray(batch["pixels"][0])
        out = carried(batch)
        if len(pixels) == 0:
            return out
        # batches may be read-only object-store views: copy before handing them to torch
        x = torch.from_numpy(np.array(pixels, copy=True)).to(self.device, non_blocking=True)
        if self.competing:  # an image's LWTA noise depends on (seed, image_id) alone: not on its batch or actor
            ids = str(batch["image_ids"][0]).split("\n")
            seed_examples(self.model, [image_seed(self.seed, image_id) for image_id in ids])
        acts = record_activations(self.model, self.layers, [x], self.conv_pool, self.token_pool)
        for i, layer in enumerate(self.layers):
            out[f"layer{i}"] = acts[layer].numpy()[None]
        return out
