"""The generated world as an image generator: it draws any phrase of its grammar, so every image certainly
shows the concept (a ground truth no text-to-image model gives); a phrase outside the grammar gets no images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from PIL import Image
from pydantic import Field

from discover_ray.backends.base import BackendConfig, BackendIdentity, Generator, register_backend

__all__ = ["WorldGenerator", "WorldGeneratorConfig"]


class WorldGeneratorConfig(BackendConfig):
    kind: Literal["world"] = "world"
    size: int = Field(32, ge=8, description="image side in pixels (the world's own images are 32 px)")


@register_backend
class WorldGenerator(Generator):
    kind = "world"
    Config = WorldGeneratorConfig
    config: WorldGeneratorConfig

    @property
    def identity(self) -> BackendIdentity:
        return BackendIdentity("world", "discover_ray.world", None, {"size": self.config.size})

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image] | None:
        from discover_ray import world

        out = []
        for seed in seeds:
            drawn = world.draw_phrase(prompt, 1, seed=int(seed), size=self.config.size)
            if drawn is None:
                return None
            pixels = (drawn.images[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            out.append(Image.fromarray(pixels, "RGB"))
        return out
