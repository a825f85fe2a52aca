"""Image-Products' image embeddings: the image tower of one of the run's CLIP concept sources, loaded once per
process, embedding PIL images with the encoder's own preprocessing (rows L2-normalised)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from discover_ray.backends.base import memoised
from discover_ray.encoders.clip import ClipEncoder, ClipSpec

__all__ = ["clip_scorer"]


def clip_scorer(spec: ClipSpec, batch_size: int = 64):  # type: ignore[no-untyped-def]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder: ClipEncoder = memoised(lambda: ClipEncoder(spec, device), ("scorer", spec, device))

    def embed(images: Sequence[Image.Image]) -> np.ndarray:
        parts = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([encoder.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
            parts.append(encoder.encode_images(batch))
        return torch.cat(parts).numpy() if parts else np.zeros((0, 1), np.float32)

    return embed
