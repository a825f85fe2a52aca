"""Generated probe images for the multi-node scenarios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discover_ray import world


@pytest.fixture(scope="session")
def probe_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 generated shape images as PNGs, one folder per class: 4 shards of 16."""
    root = tmp_path_factory.mktemp("world64") / "probe"
    data = world.generate(64, seed=5)
    classes = world.class_names()
    pixels = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, data.labels.tolist(), strict=True)):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root

