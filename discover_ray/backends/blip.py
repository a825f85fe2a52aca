"""A BLIP image captioner run with transformers in the worker's process (the paper's captioner: BLIP base,
``Salesforce/blip-image-captioning-base``).

Decoding is greedy (no sampling, one beam), so a caption depends on its image only: not on a seed, nor on the
other images of its batch (``batch_size`` is a memory setting and stays out of the identity). The model is a
local directory or a hub id, loaded once when the backend is built (``backends.hub``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from PIL import Image
from pydantic import Field

from discover_ray.backends.base import (
    BackendContext,
    BackendError,
    BackendIdentity,
    Captioner,
    register_backend,
)
from discover_ray.backends.hub import HubModelConfig, dtype_name, load_pretrained, torch_dtype

__all__ = ["BlipCaptioner", "BlipConfig"]


class BlipConfig(HubModelConfig):
    """``backends.captioner`` with ``kind: blip``."""

    what: ClassVar[str] = "captioner model"

    kind: Literal["blip"] = "blip"
    model: str = Field(default="Salesforce/blip-image-captioning-base", min_length=1)  # a local directory or hub id
    revision: str | None = None
    max_new_tokens: int = Field(default=32, ge=1)
    min_length: int = Field(default=5, ge=0)  # transformers' min_length: counts the start token (and the prompt)
    batch_size: int = Field(default=10, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Conditional captioning: the caption continues this text (and starts with it); None: unconditional.
    prompt: str | None = None


@register_backend
class BlipCaptioner(Captioner):
    """Captions from ``BlipForConditionalGeneration.generate``, greedy, ``batch_size`` images at a time."""

    kind = "blip"
    Config = BlipConfig
    config: BlipConfig

    def __init__(self, config: BlipConfig, context: BackendContext):
        super().__init__(config, context)
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self._torch = torch
        self.device = torch.device(context.device)
        self.dtype = torch_dtype(config.dtype, context.device)
        self.processor = load_pretrained(BlipProcessor, config.model, config.revision, "captioner processor")
        model = load_pretrained(BlipForConditionalGeneration, config.model, config.revision, "captioner model",
                                dtype=self.dtype)
        try:
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as err:
            raise BackendError(f"the captioner model {config.model} cannot be put on {context.device}: {err}") from None
        self._lock = threading.Lock()  # generate is not thread-safe

    @property
    def identity(self) -> BackendIdentity:
        """Kind, model, revision and what changes a caption: decoding, prompt and the dtype actually used."""
        params = {k: v for k, v in self.config.parameters().items() if k != "batch_size"}
        params["dtype"] = dtype_name(self.dtype)
        return BackendIdentity(self.kind, self.config.model, self.config.revision, params)

    def _inputs(self, images: list[Image.Image]) -> dict[str, Any]:
        text = [self.config.prompt] * len(images) if self.config.prompt is not None else None
        encoded = self.processor(images=images, text=text, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        inputs["pixel_values"] = encoded["pixel_values"].to(self.device, self.dtype)
        return inputs

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, in order (images of any mode are captioned as RGB)."""
        captions: list[str] = []
        size = self.config.batch_size
        for start in range(0, len(images), size):
            batch = [image.convert("RGB") for image in images[start:start + size]]
            try:
                with self._lock, self._torch.inference_mode():
                    ids = self.model.generate(
                        **self._inputs(batch), do_sample=False, num_beams=1,
                        max_new_tokens=self.config.max_new_tokens, min_length=self.config.min_length,
                    )
                texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            except Exception as err:  # noqa: BLE001 - whatever the model raised, the unit fails, the run goes on
                raise BackendError(
                    f"captioner blip ({self.config.model}) failed on images {start}–{start + len(batch) - 1}: "
                    f"{type(err).__name__}: {err}"
                ) from err
            if len(texts) != len(batch):
                raise BackendError(
                    f"captioner blip ({self.config.model}) gave {len(texts)} captions for {len(batch)} images"
                )
            captions.extend(text.strip() for text in texts)
        return captions
