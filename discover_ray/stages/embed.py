"""EMBED: CLIP image embeddings of the probe set (an actor pool) and of a concept set's texts (one task)."""

from __future__ import annotations

import numpy as np
import ray
import torch

from discover_ray.encoders.clip import ClipEncoder, ClipSpec
from discover_ray.stages.inference import carried


class ImageEmbedder:
    """A Ray Data actor: loads the CLIP image tower once, embeds each decoded chunk (rows L2-normalised)."""

    def __init__(self, spec: ClipSpec, threads: int):
        torch.set_num_threads(threads)
        self.encoder = ClipEncoder(spec, "cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = np.asarray(batch["pixels"][0])
        out = carried(batch)
        if len(pixels):
            out["embedding"] = self.encoder.encode_images(torch.from_numpy(np.array(pixels, copy=True))).numpy()[None]
        return out


@ray.remote
def embed_texts(spec: ClipSpec, texts: list[str], batch_size: int) -> np.ndarray:
    """Concept-text embeddings [M, d], L2-normalised; on a GPU when the task was given one."""
    encoder = ClipEncoder(spec, "cuda" if torch.cuda.is_available() else "cpu")
    return encoder.encode_text(texts, batch_size=batch_size).numpy()


def clip_preprocess(spec: ClipSpec):
    """The encoder's own image transform (tag-specific mean/std included), built on the driver."""
    return ClipEncoder(spec).preprocess
