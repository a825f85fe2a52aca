"""A model's preprocessing split in two: a per-image geometric head and a batch tail on uint8 pixels.

Most image transforms are ``Compose([resize/crop..., ToTensor, Normalize...])``. The head (PIL in, PIL
out) is what costs: decoding and resizing. Its output, a uint8 RGB image of the model's input size, is
small and exact, so it can be decoded once, cached (the DECODE stage) and shared by every checkpoint
that uses the same preprocessing. The tail, x / 255 then (x − mean) / std, runs on the stacked batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from discover_ray.ids import content_id

__all__ = ["PixelFormat", "split_preprocess"]

_UNSTABLE_REPR = re.compile(r" at 0x[0-9a-f]+|Lambda\(")  # a repr that does not say what the step does


@dataclass(frozen=True)
class PixelFormat:
    """``head`` maps a PIL image to the model's input geometry; ``normalize`` holds (mean, std) pairs."""

    head: tuple[Callable[[Any], Any], ...]
    normalize: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]

    @property
    def id(self) -> str | None:
        """A content id of the head (from its steps' reprs); ``None`` when a repr hides what a step does
        (a lambda, a default object repr), so pixels of that head are never cached under a shared id."""
        described = [repr(step) for step in self.head]
        if any(_UNSTABLE_REPR.search(text) for text in described):
            return None
        return content_id("pixels\0" + "\0".join(described))

    def to_uint8(self, images: Sequence[Image.Image]) -> np.ndarray | None:
        """The head's output as one (n, H, W, 3) uint8 array; ``None`` if an output is not an RGB image or
        the sizes differ (then only the full per-image transform applies)."""
        heads = []
        for image in images:
            for step in self.head:
                image = step(image)
            heads.append(image)
        if not heads:
            return np.zeros((0, 1, 1, 3), np.uint8)
        if not all(isinstance(h, Image.Image) and h.mode == "RGB" and h.size == heads[0].size for h in heads):
            return None
        return np.stack([np.asarray(h) for h in heads])

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """(n, H, W, 3) uint8 → (n, 3, H, W) float32: x / 255, then each (x − mean) / std, in that order
        (the arithmetic of ToTensor and Normalize, so the result equals the per-image transform's)."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32).div_(255)
        for mean, std in self.normalize:
            x.sub_(torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1))
            x.div_(torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1))
        return x.contiguous()


def split_preprocess(transform: Callable[[Any], Any]) -> PixelFormat | None:
    """A ``Compose`` whose steps end in ToTensor (torchvision, or timm's MaybeToTensor) and Normalize
    steps, as its ``PixelFormat``; ``None`` for any other transform."""
    from torchvision import transforms as T

    steps = list(transform.transforms) if isinstance(transform, T.Compose) else []
    cut = next((i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor")), None)
    if cut is None or not all(isinstance(t, T.Normalize) for t in steps[cut + 1 :]):
        return None
    normalize = tuple((tuple(map(float, t.mean)), tuple(map(float, t.std))) for t in steps[cut + 1 :])
    return PixelFormat(tuple(steps[:cut]), normalize)
