"""The target model at one layer, for methods that show it new images (crops, generated images, verification).

``LayerProbe`` runs the model (its own preprocessing, eval mode, inference) on PIL images and returns the
layer's pooled activations — pooled exactly as RECORD pools them — and, for the heatmaps of attention crops,
its spatial maps: a conv layer's [k, h, w] maps, or a ViT layer's patch tokens laid out on their grid.
``TargetRef`` is what travels to a worker: the model's config and seed, rebuilt there once per process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from discover_ray.describe.crops import input_region
from discover_ray.record import resolve_layers, summarise

__all__ = ["LayerProbe", "TargetRef"]


class LayerProbe:
    """Pooled activations and spatial maps of one layer of ``model`` on PIL images (thread-safe)."""

    def __init__(self, model: nn.Module, layer: str, preprocess: Any, conv_pool: str = "mean", token_pool: str = "cls",
                 batch_size: int = 64, device: str = "cpu"):
        self.model, self.layer, self.preprocess = model.eval().to(device), layer, preprocess
        self.conv_pool, self.token_pool, self.batch_size, self.device = conv_pool, token_pool, batch_size, device
        self.module = resolve_layers(model, [layer])[layer]
        steps = getattr(preprocess, "transforms", [preprocess])
        self._regions: dict[tuple[int, int], Any] = {}
        self._steps = steps
        self._lock = threading.Lock()

    def region_of(self, width: int, height: int) -> Any:
        if (width, height) not in self._regions:
            self._regions[(width, height)] = input_region(self._steps, width, height)
        return self._regions[(width, height)]

    @torch.inference_mode()
    def _outputs(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """The layer's raw outputs, batch by batch; torch's RNG is seeded (and restored) so that a stochastic
        (LWTA) layer gives the same outputs for the same images every time."""
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inputs: object, output: Any) -> None:
            captured.append((output[0] if isinstance(output, (tuple, list)) else output).detach().float().cpu())

        with self._lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            handle = self.module.register_forward_hook(hook)
            try:
                for start in range(0, len(images), self.batch_size):
                    batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start:start + self.batch_size]])
                    self.model(batch.to(self.device))
            finally:
                handle.remove()
        return captured

    def activations(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[n, K] pooled as RECORD pools (conv maps by ``conv_pool``, tokens by ``token_pool``)."""
        if not images:
            return np.zeros((0, 0), np.float32)
        parts = [summarise(out, self.conv_pool, self.token_pool) for out in self._outputs(images)]  # type: ignore[arg-type]
        return torch.cat(parts).numpy()

    def heatmaps(self, images: Sequence[Image.Image], units: Sequence[int]) -> np.ndarray | None:
        """[n, len(units), h, w] spatial maps of ``units``; None for a layer without a spatial layout."""
        if not images:
            return None
        outs = self._outputs(images)
        out = torch.cat(outs)
        if out.ndim == 4:
            return out[:, list(units)].numpy()
        if out.ndim == 3:  # (B, T, D): patch tokens after the class token, on a square grid
            tokens = out.shape[1] - 1
            side = int(round(tokens ** 0.5))
            if side * side != tokens or side < 2:
                return None
            grid = out[:, 1:, :].reshape(out.shape[0], side, side, out.shape[2]).permute(0, 3, 1, 2)
            return grid[:, list(units)].numpy()
        return None


@dataclass(frozen=True)
class TargetRef:
    """A target model as a worker rebuilds it: its config, the run's seed, the layer and RECORD's pooling."""

    model: Any  # config.ModelConfig
    seed: int
    layer: str
    conv_pool: str = "mean"
    token_pool: str = "cls"

    def probe(self, device: str | None = None) -> LayerProbe:
        """The layer probe, built once per process for this model and layer."""
        from discover_ray.backends.base import memoised
        from discover_ray.models import load_model

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        key = ("target", self.model.model_dump_json(), self.seed, self.layer, self.conv_pool, self.token_pool, device)

        def build() -> LayerProbe:
            with torch.random.fork_rng(devices=[]):  # as the driver built it: random-init weights seeded by the run
                torch.manual_seed(self.seed)
                loaded = load_model(self.model.spec())
            return LayerProbe(loaded.model, self.layer, loaded.preprocess, self.conv_pool, self.token_pool, device=device)

        return memoised(build, key)
