"""A model's preprocessing split in two: a per-image geometric head and a batch tail on uint8 pixels.

Most image transforms are ``Compose([resize/crop..., ToTensor, Normalize...])``. The head (PIL in, PIL
out) is what costs: decoding and resizing. Its output, a uint8 RGB image of the model's input size, is
small and exact, so it can be decoded once, cached (the DECODE stage) and shared by every checkpoint
that uses the same preprocessing. The tail, x / 255 then (x − mean) / std, runs on the stacked batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from discover_ray.ids import content_id

__all__ = ["DRAFT_MARGIN", "PixelFormat", "split_preprocess"]

DRAFT_MARGIN = 2  # JPEG draft decoding keeps at least this many times the pixels the Resize needs
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

    def apply(self, image: Any) -> Any:
        """The head on one image: what decoding keeps of it (run as each image is decoded, so a chunk never
        holds images at full resolution)."""
        for step in self.head:
            image = step(image)
        return image

    def draft_size(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """For a JPEG of ``size`` (w, h): the size to ask ``Image.draft`` for, or ``None`` to decode it whole.

        Only a head that starts with a ``Resize`` says how many pixels it needs. JPEG draft decoding scales by
        1/2, 1/4 or 1/8 in the DCT, which changes pixel values a little; so it is asked only for images at least
        ``2 * DRAFT_MARGIN`` times larger than the Resize needs, and keeps ``DRAFT_MARGIN`` times what it needs:
        the Resize's own antialiased filter still does at least half of the reduction. For a ``Resize(256)``
        only images of 1024 pixels or more on the short side are drafted; smaller ones decode exactly as before.
        """
        needed = _resized(self.head[0], size) if self.head else None
        if needed is None:
            return None
        target = (needed[0] * DRAFT_MARGIN, needed[1] * DRAFT_MARGIN)
        if min(size[0] // target[0], size[1] // target[1]) < 2:
            return None
        return target

    def stack(self, heads: Sequence[Any]) -> np.ndarray | None:
        """Head outputs as one (n, H, W, 3) uint8 array; ``None`` if an output is not an RGB image or the sizes
        differ (then the transform's tail runs on each image)."""
        if not heads:
            return np.zeros((0, 1, 1, 3), np.uint8)
        if not all(isinstance(h, Image.Image) and h.mode == "RGB" and h.size == heads[0].size for h in heads):
            return None
        return np.stack([np.asarray(h) for h in heads])

    def to_uint8(self, images: Sequence[Image.Image]) -> np.ndarray | None:
        """The head on each image, stacked (see ``stack``)."""
        return self.stack([self.apply(image) for image in images])

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """(n, H, W, 3) uint8 → (n, 3, H, W) float32: x / 255, then each (x − mean) / std, in that order
        (the arithmetic of ToTensor and Normalize, so the result equals the per-image transform's)."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32).div_(255)
        for mean, std in self.normalize:
            x.sub_(torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1))
            x.div_(torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1))
        return x.contiguous()


def _resized(step: Any, size: tuple[int, int]) -> tuple[int, int] | None:
    """The (w, h) a torchvision ``Resize`` gives an image of ``size``, at least (``max_size`` can only shrink
    it); ``None`` for any other step."""
    from torchvision import transforms as T

    if not isinstance(step, T.Resize):
        return None
    wanted = step.size
    if isinstance(wanted, int) or len(wanted) == 1:
        short = wanted if isinstance(wanted, int) else wanted[0]
        w, h = size
        scale = short / max(min(w, h), 1)
        return max(math.ceil(w * scale), 1), max(math.ceil(h * scale), 1)
    return int(wanted[1]), int(wanted[0])


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
