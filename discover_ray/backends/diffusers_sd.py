"""A Stable Diffusion image generator run with diffusers in the worker's process (the paper's generator:
``CompVis/stable-diffusion-v1-4``, float16, DPM-Solver multistep, 50 steps, 512²).

Each image has its own CPU ``torch.Generator`` seeded with its seed (a list of generators, one per image), so its
starting noise depends on that seed only, whichever seeds share its batch and in whatever order. Measured on CPU
(float32): the same seeds in the same batch composition give bit-identical images, in any order; the same seed
in a batch of another *size* differs by float rounding (about 1e-6, so at most one level of 255 in a pixel),
because the batched kernels round differently. ``batch_size`` is therefore kept out of the identity.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from PIL import Image
from pydantic import Field, field_validator

from discover_ray.backends.base import (
    BackendContext,
    BackendError,
    BackendIdentity,
    Generator,
    register_backend,
)
from discover_ray.backends.hub import HubModelConfig, accelerate_kwargs, dtype_name, load_pretrained, torch_dtype

__all__ = ["DiffusersConfig", "DiffusersGenerator"]


class DiffusersConfig(HubModelConfig):
    """``backends.generator`` with ``kind: diffusers``."""

    what: ClassVar[str] = "generator pipeline"

    kind: Literal["diffusers"] = "diffusers"
    model: str = Field(default="CompVis/stable-diffusion-v1-4", min_length=1)  # a local directory or hub id
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"  # float16 becomes float32 on a CPU
    # dpm_multistep: DPM-Solver++ multistep built from the pipeline's own scheduler config; default: as shipped.
    scheduler: Literal["dpm_multistep", "default"] = "dpm_multistep"
    steps: int = Field(default=50, ge=1)
    size: int = Field(default=512, ge=8)  # height = width, in pixels
    guidance: float = Field(default=7.5, ge=0)
    negative_prompt: str | None = None
    prompt: str = Field("One realistic image of {concept}", description="the text drawn; {concept} is the concept")
    batch_size: int = Field(default=4, ge=1)

    @field_validator("prompt")
    @classmethod
    def _names_the_concept(cls, prompt: str) -> str:
        if "{concept}" not in prompt:
            raise ValueError(f"prompt must contain {{concept}} (where the concept goes), got {prompt!r}")
        return prompt

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, size: int) -> int:
        if size % 8:
            raise ValueError(f"size must be a multiple of 8 (Stable Diffusion's VAE downsamples by 8), not {size}")
        return size


@register_backend
class DiffusersGenerator(Generator):
    """Images from ``StableDiffusionPipeline``, one per seed, ``batch_size`` at a time."""

    kind = "diffusers"
    Config = DiffusersConfig
    config: DiffusersConfig

    def __init__(self, config: DiffusersConfig, context: BackendContext):
        super().__init__(config, context)
        import torch
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        self._torch = torch
        self.dtype = torch_dtype(config.dtype, context.device)
        pipe = load_pretrained(
            StableDiffusionPipeline, config.model, config.revision, "generator pipeline",
            safety_checker=None, requires_safety_checker=False, dtype=self.dtype, **accelerate_kwargs(),
        )
        if config.scheduler == "dpm_multistep":
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        try:
            self.pipeline = pipe.to(context.device)
        except (RuntimeError, AssertionError) as err:
            raise BackendError(
                f"the generator pipeline {config.model} cannot be put on {context.device}: {err}"
            ) from None
        self.pipeline.set_progress_bar_config(disable=True)
        self._lock = threading.Lock()  # a pipeline call mutates its scheduler's state: one call at a time

    @property
    def identity(self) -> BackendIdentity:
        """Kind, model, revision and what changes an image: scheduler, steps, size, guidance, negative prompt and
        the dtype actually used."""
        params = {k: v for k, v in self.config.parameters().items() if k != "batch_size"}
        params["dtype"] = dtype_name(self.dtype)
        return BackendIdentity(self.kind, self.config.model, self.config.revision, params)

    def _draw(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image]:
        torch, n = self._torch, len(seeds)
        options: dict[str, Any] = {
            "num_inference_steps": self.config.steps, "height": self.config.size, "width": self.config.size,
            "guidance_scale": self.config.guidance, "output_type": "pil",
        }
        if self.config.negative_prompt is not None:
            options["negative_prompt"] = [self.config.negative_prompt] * n
        generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        with self._lock, torch.inference_mode():
            return list(self.pipeline(prompt=[prompt] * n, generator=generators, **options).images)

    def generate(self, concept: str, seeds: Sequence[int]) -> list[Image.Image]:
        """One ``size``² RGB image of ``concept`` (put into the ``prompt`` template) per seed, in seed order."""
        prompt = self.config.prompt.replace("{concept}", concept)
        images: list[Image.Image] = []
        size = self.config.batch_size
        for start in range(0, len(seeds), size):
            chunk = list(seeds[start:start + size])
            try:
                drawn = self._draw(prompt, chunk)
            except Exception as err:  # noqa: BLE001 - whatever the pipeline raised, the unit fails, the run goes on
                raise BackendError(
                    f"generator diffusers ({self.config.model}) failed on {prompt!r}, seeds {chunk}: "
                    f"{type(err).__name__}: {err}"
                ) from err
            if len(drawn) != len(chunk):
                raise BackendError(
                    f"generator diffusers ({self.config.model}) drew {len(drawn)} images for {len(chunk)} seeds"
                )
            images.extend(drawn)
        return images
