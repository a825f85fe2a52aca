"""Contrastive (CLIP) training of an open_clip model on image–caption pairs, inside the same Ray Train loop.

The images come from any probe-set source whose ``text_column`` holds one caption or a list of captions
per image (as COCO has five); each step draws one caption per image, seeded by the epoch, so a run is
reproducible and resumable like a classifier's. The loss is open_clip's symmetric InfoNCE (``ClipLoss``,
features gathered over every worker); "top-1" is in-batch image→caption retrieval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import nn

from discover_ray.errors import UnknownName
from discover_ray.probe import ProbeError
from discover_ray.training.data import LabelledImages

__all__ = ["CaptionedImages", "build_clip", "contrastive_step", "retrieval_top1"]


class CaptionedImages(LabelledImages):
    """``(image tensor, tokens)`` pairs: the images decoded once, a caption drawn per access."""

    def __init__(self, probe, transform: Callable[[Image.Image], torch.Tensor], tokenizer, seed: int = 0,
                 failure_budget: float = 0.001):
        missing = [im.image_id for im in probe.images if not im.texts]
        if missing:
            raise ProbeError(
                f"{len(missing)} training images of {probe.source!r} have no caption (e.g. {missing[0]}); "
                "set data.train.text_column to the column that holds them"
            )
        self.texts = {im.image_id: im.texts for im in probe.images}
        self.tokenizer, self.seed, self.epoch = tokenizer, seed, 0
        super().__init__(probe, transform, failure_budget=failure_budget, require_labels=False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        captions = self.texts[self.image_ids[index]]
        pick = torch.randint(len(captions), (), generator=torch.Generator().manual_seed(
            self.seed * 1_000_003 + self.epoch * 100_003 + index)).item() if len(captions) > 1 else 0
        return self.transform(Image.fromarray(self.pixels[index])), self.tokenizer([captions[pick]])[0]


def build_clip(name: str, checkpoint: str | None, seed: int) -> tuple[nn.Module, Callable, Callable, Any]:
    """An open_clip model (random init from ``seed``, or ``checkpoint``), its train and eval transforms and tokenizer."""
    from discover_ray.encoders.clip import open_clip_with_our_configs

    open_clip = open_clip_with_our_configs()
    if name not in open_clip.list_models():
        raise UnknownName(f"unknown open_clip model {name!r} for contrastive training; e.g. TinyCLIP-ViT-32, ViT-B-16")
    torch.manual_seed(seed)
    model, train_transform, eval_transform = open_clip.create_model_and_transforms(
        name, pretrained=checkpoint, weights_only=True, output_dict=True)
    return model, train_transform, eval_transform, open_clip.get_tokenizer(name)


def contrastive_step(model: nn.Module, trained: nn.Module, loss_fn, images: torch.Tensor, tokens: torch.Tensor):
    """The InfoNCE loss of one batch and its in-batch image→caption top-1 count."""
    out = trained(images, tokens)
    image_features, text_features, scale = out["image_features"], out["text_features"], out["logit_scale"]
    loss = loss_fn(image_features, text_features, scale)
    return loss, retrieval_top1(image_features, text_features, tokens)


@torch.no_grad()
def retrieval_top1(image_features: torch.Tensor, text_features: torch.Tensor, tokens: torch.Tensor) -> int:
    """Images whose best caption in the batch is their own or an identical one (duplicates are not errors)."""
    best = (image_features.float() @ text_features.float().T).argmax(dim=1)
    return int((tokens[best] == tokens).all(dim=1).sum())
