"""Labelled training images from any probe-set source, decoded once and held in memory as uint8.

Decoding once up front means every epoch reads the same pixels at memory speed and a corrupt file is
found before the first step, not in epoch 40. It suits sets that fit a worker's memory (CIFAR, subsets
of ImageNet); the decoded size is checked against ``max_bytes`` so a set that does not fit fails at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from discover_ray.probe import ProbeError, ProbeSet, decode_images

__all__ = ["LabelledImages"]

DEFAULT_MAX_BYTES = 16 * 2**30


class LabelledImages(torch.utils.data.Dataset):
    """``(image tensor, label)`` pairs; ``transform`` runs per access (so augmentation differs per epoch)."""

    def __init__(
        self,
        probe: ProbeSet,
        transform: Callable[[Image.Image], torch.Tensor],
        failure_budget: float = 0.001,
        max_bytes: int = DEFAULT_MAX_BYTES,
        chunk: int = 1024,
        require_labels: bool = True,
    ):
        unlabelled = [im.image_id for im in probe.images if im.label is None]
        if unlabelled and require_labels:
            raise ProbeError(
                f"{len(unlabelled)} training images of {probe.source!r} have no label (e.g. {unlabelled[0]}); "
                "give a label column or class folders"
            )
        self.transform = transform
        self.classes = probe.classes
        self.pixels: list[np.ndarray] = []
        self.labels: list[int] = []
        self.image_ids: list[str] = []
        self.failed: list[tuple[str, str]] = []
        held = 0
        for start in range(0, len(probe), chunk):
            decoded = decode_images(probe, probe.images[start : start + chunk], failure_budget=1.0)
            self.failed += decoded.failed
            for image, meta in zip(decoded.images, decoded.kept, strict=True):
                array = np.asarray(image, dtype=np.uint8)
                held += array.nbytes
                if held > max_bytes:
                    raise ProbeError(
                        f"the decoded training images of {probe.source!r} pass {max_bytes / 2**30:.0f} GiB; "
                        "train on a sample (data.train.sample) or give the workers more memory"
                    )
                self.pixels.append(array)
                self.image_ids.append(meta.image_id)
                self.labels.append(meta.label if meta.label is not None else -1)
        if len(self.failed) > failure_budget * len(probe):
            shown = "; ".join(f"{i} ({why})" for i, why in self.failed[:3])
            raise ProbeError(
                f"{len(self.failed)} of {len(probe)} training images could not be decoded: {shown}; "
                "fix or remove them, or raise the failure budget"
            )
        if not self.pixels:
            raise ProbeError(f"no training images could be read from {probe.source!r}")

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.pixels[index])), self.labels[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else max(self.labels) + 1

    def info(self) -> dict[str, Any]:
        return {"images": len(self), "failed": len(self.failed), "classes": self.num_classes}
