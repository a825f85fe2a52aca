"""A tiny generated world of coloured shapes whose concepts are known: probe images with ground truth.

Each image shows one shape of one colour on a noisy background; its class is "<colour> <shape>". The
generator is seeded, so the same seed gives the same pixels everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ShapeImages:
    images: Tensor  # [N, 3, size, size], float in [0, 1]
    labels: Tensor  # [N] class index into ``classes``
    colours: Tensor  # [N] index into COLOURS
    shapes: Tensor  # [N] index into SHAPES

    @property
    def classes(self) -> tuple[str, ...]:
        return class_names()


def class_names() -> tuple[str, ...]:
    return tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)


def generate(n: int, seed: int = 0, size: int = 32) -> ShapeImages:
    """``n`` images, classes balanced round-robin, positions, sizes and noise drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    n_classes = len(COLOURS) * len(SHAPES)
    labels = np.arange(n) % n_classes
    pixels = np.empty((n, size, size, 3), dtype=np.uint8)
    colour_values = list(COLOURS.values())
    for i, label in enumerate(labels):
        colour, shape = divmod(int(label), len(SHAPES))
        background = rng.integers(60, 200, size=3)
        canvas = np.clip(background + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(canvas)
        radius = rng.uniform(0.22, 0.38) * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        fill = tuple(int(v) for v in np.clip(np.array(colour_values[colour]) + rng.normal(0, 15, 3), 0, 255))
        draw = ImageDraw.Draw(image)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if SHAPES[shape] == "circle":
            draw.ellipse(box, fill=fill)
        elif SHAPES[shape] == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
        pixels[i] = np.asarray(image)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    labels_t = torch.from_numpy(labels)
    return ShapeImages(images, labels_t, labels_t // len(SHAPES), labels_t % len(SHAPES))


def label_concepts(data: ShapeImages) -> tuple[tuple[str, ...], Tensor]:
    """Concept names and P[N, M] from the known truth: one-hot class, colour and shape (LE(Label) style)."""
    names = class_names() + tuple(COLOURS) + SHAPES
    n_classes = len(class_names())
    scores = torch.zeros(len(data.labels), len(names))
    rows = torch.arange(len(data.labels))
    scores[rows, data.labels] = 1
    scores[rows, n_classes + data.colours] = 1
    scores[rows, n_classes + len(COLOURS) + data.shapes] = 1
    return names, scores
