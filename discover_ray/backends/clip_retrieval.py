"""Captioning by retrieval: an open_clip model gives each image the caption of a fixed bank it matches best.

The DnD paper's fixed-concept-set ablation (A.4.2), and how FALCON captions; offline it is the captioner that
reads real meaning (the generated world's tiny CLIP over the world's caption bank). The bank is a text file
with one caption per line (or a built-in concept set), cleaned like a concept set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from PIL import Image
from pydantic import Field, field_validator

from discover_ray.backends.base import BackendConfig, BackendError, BackendIdentity, Captioner, register_backend
from discover_ray.backends.cache import content_hash
from discover_ray.config_files import absolute

__all__ = ["ClipRetrievalCaptioner", "ClipRetrievalConfig"]


class ClipRetrievalConfig(BackendConfig):
    kind: Literal["clip_retrieval"] = "clip_retrieval"
    model: str = Field(description="an open_clip architecture (ViT-B-16), hf-hub: id or local-dir: path")
    pretrained: str | None = Field(None, description="an open_clip tag, a local or s3:// checkpoint, or none (random init)")
    seed: int = 0
    captions: str = Field(description="the caption bank: a text file, one caption per line, or a built-in concept set")
    batch_size: int = Field(64, ge=1)

    def check(self) -> None:
        from discover_ray.concepts import load_concepts
        from discover_ray.encoders.clip import ClipSpec, check_clip

        check_clip(ClipSpec(self.model, self.pretrained, self.seed))
        load_concepts(self.captions)  # a missing or empty bank: named now

    @field_validator("pretrained", "captions")
    @classmethod
    def _resolve(cls, value: str | None) -> str | None:
        return absolute(value) if value is not None else None


@register_backend
class ClipRetrievalCaptioner(Captioner):
    kind = "clip_retrieval"
    Config = ClipRetrievalConfig
    config: ClipRetrievalConfig

    def __init__(self, config: ClipRetrievalConfig, context):  # type: ignore[no-untyped-def]
        from discover_ray.concepts import load_concepts
        from discover_ray.encoders.clip import ClipEncoder, ClipSpec

        super().__init__(config, context)
        self.spec = ClipSpec(config.model, config.pretrained, config.seed)
        self.bank = load_concepts(config.captions).concepts
        self.encoder = ClipEncoder(self.spec, context.device)
        self.bank_emb = self.encoder.encode_text(list(self.bank), batch_size=256)

    @property
    def identity(self) -> BackendIdentity:
        # the encoder's content id names its weights; the bank is named by its content
        return BackendIdentity("clip_retrieval", self.config.model, self.spec.id,
                               {"bank": content_hash("\n".join(self.bank))})

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        out: list[str] = []
        try:
            for start in range(0, len(images), self.config.batch_size):
                batch = torch.stack([self.encoder.preprocess(im.convert("RGB")) for im in images[start:start + self.config.batch_size]])
                best = (self.encoder.encode_images(batch) @ self.bank_emb.T).argmax(dim=1)
                out.extend(self.bank[int(i)] for i in best)
        except Exception as err:  # a model failure is the unit's failure, not the run's
            raise BackendError(f"clip_retrieval captioner {self.spec.describe()}: {err}") from err
        return out
