"""open_clip image and text encoders: pretrained tags, hf-hub ids, local or s3:// checkpoints, or random init.

Weights are never fetched more than once per attempt: when the hub is unreachable and the weights are
not already cached, loading fails at once with a message that names the model and how to give local
weights, instead of retrying for a minute.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
from torch import Tensor

from discover_ray.encoders.hub import hub_cached, hub_reachable
from discover_ray.errors import ConfigError, InputNotFound, UnknownName, WeightsUnavailableError
from discover_ray.ids import content_id, file_sha256

CONFIG_DIR = Path(__file__).parent / "model_configs"


@functools.cache
def open_clip_with_our_configs() -> Any:
    """open_clip, imported on first use (a second of start-up for every worker that only unpickles a config),
    with our small architectures registered (e.g. TinyCLIP-ViT-32 for tests and demos)."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to build.

    ``model`` is an open_clip architecture (``ViT-B-16``), ``hf-hub:org/repo`` or ``local-dir:/path``.
    ``pretrained`` is an open_clip tag (``openai``), a local path or an ``s3://`` / fsspec URI of a
    checkpoint, or ``None`` for random initialisation (seeded by ``seed``).
    """

    model: str
    pretrained: str | None = None
    seed: int = 0

    def describe(self) -> str:
        return f"{self.model}/{self.pretrained or 'random-init'}"

    @property
    def id(self) -> str:
        """Content id of the encoder: architecture plus the weights' tag, file hash, or init seed."""
        if self.pretrained is None:
            weights = f"random-init:{self.seed}"
        elif self.model.startswith(("hf-hub:", "local-dir:")) or open_clip_with_our_configs().is_pretrained_cfg(
            self.model, self.pretrained
        ):
            weights = f"tag:{self.pretrained}"
        else:
            weights = "sha256:" + file_sha256(self.pretrained)
        return content_id(f"open_clip\0{self.model}\0{weights}")


def check_clip(spec: ClipSpec) -> None:
    """Fail within seconds, before any work starts, if ``spec`` cannot be built here (unknown model,
    unknown tag, missing file, or weights that would need a download the network does not allow)."""
    _check_name(spec)
    if spec.pretrained is None and not spec.model.startswith(("hf-hub:", "local-dir:")):
        return
    with _weights_file(spec, fetch=False):
        pass


class ClipEncoder:
    """Embeds images and texts into one L2-normalised space."""

    def __init__(self, spec: ClipSpec, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.model, self.preprocess = _create(spec, self.device)
        self.model.eval()
        self.tokenizer = open_clip_with_our_configs().get_tokenizer(spec.model)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            parts.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=1))
        return torch.cat(parts).cpu()

    @torch.inference_mode()
    def encode_images(self, images: Tensor) -> Tensor:
        """``images``: a batch already passed through ``self.preprocess``."""
        features = self.model.encode_image(images.to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=1).cpu()


def _check_name(spec: ClipSpec) -> None:
    known = open_clip_with_our_configs().list_models()
    if not spec.model.startswith(("hf-hub:", "local-dir:")) and spec.model not in known:
        close = [m for m in known if spec.model.lower().split("-")[0] in m.lower()][:8]
        raise UnknownName(f"unknown open_clip model {spec.model!r}; similar: {close or known[:8]}")


def _create(spec: ClipSpec, device: torch.device) -> tuple[torch.nn.Module, object]:
    _check_name(spec)
    schema = spec.model.startswith(("hf-hub:", "local-dir:"))
    if spec.pretrained is None and not schema:
        with _seeded(spec.seed), _quiet_random_init():
            model, _, preprocess = open_clip_with_our_configs().create_model_and_transforms(spec.model, pretrained=None, device=device)
        return model, preprocess
    with _weights_file(spec) as pretrained:
        try:
            model, _, preprocess = open_clip_with_our_configs().create_model_and_transforms(
                spec.model, pretrained=pretrained, device=device, weights_only=True
            )
        except RuntimeError as err:
            if "Failed to download" in str(err) or "offline" in str(err).lower():
                raise WeightsUnavailableError(_offline_message(spec)) from None
            raise
    return model, preprocess


@contextlib.contextmanager
def _weights_file(spec: ClipSpec, fetch: bool = True) -> Iterator[str | None]:
    """Resolve ``spec.pretrained`` to what open_clip takes: a tag, a local file, or None (schema ids).

    With ``fetch=False`` remote checkpoints are only checked for existence, not copied."""
    pretrained = spec.pretrained
    if spec.model.startswith("local-dir:"):
        yield None
        return
    if spec.model.startswith("hf-hub:") or (pretrained and open_clip_with_our_configs().is_pretrained_cfg(spec.model, pretrained)):
        if not hub_reachable() and not _cached(spec):
            raise WeightsUnavailableError(_offline_message(spec))
        yield None if spec.model.startswith("hf-hub:") else pretrained
        return
    assert pretrained is not None
    if "://" in pretrained and not pretrained.startswith("file://"):
        if not fetch:
            fs, path = fsspec.core.url_to_fs(pretrained)
            if not fs.exists(path):
                raise InputNotFound(f"open_clip checkpoint {pretrained!r} not found")
            yield pretrained
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, os.path.basename(pretrained.rstrip("/")) or "weights.pt")
            fsspec.filesystem(fsspec.utils.get_protocol(pretrained)).get(pretrained, local)
            yield local
        return
    path = pretrained.removeprefix("file://")
    if not os.path.exists(path):
        tags = open_clip_with_our_configs().list_pretrained_tags_by_model(spec.model)
        raise ConfigError(
            f"{pretrained!r} is neither an open_clip tag of {spec.model} ({', '.join(tags) or 'none'}) "
            "nor an existing checkpoint file"
        )
    yield path


def _cached(spec: ClipSpec) -> bool:
    """Whether the weights of a tag or hf-hub id are already in the local Hugging Face cache."""
    if spec.model.startswith("hf-hub:"):
        repo, filenames = (
            spec.model.removeprefix("hf-hub:"),
            ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        )
    else:
        cfg = open_clip_with_our_configs().get_pretrained_cfg(spec.model, spec.pretrained or "")
        hub = cfg.get("hf_hub", "")
        if not hub:
            return False
        repo = "/".join(hub.rstrip("/").split("/")[:2])
        filenames = (cfg.get("hf_hub_filename") or "open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    return hub_cached(repo, filenames)


def _offline_message(spec: ClipSpec) -> str:
    return (
        f"cannot load open_clip weights {spec.describe()}: the model hub is unreachable from this machine and the "
        "weights are not in the local cache. Download them where there is network, e.g. "
        f"`python -c \"import open_clip; open_clip_with_our_configs().create_model('{spec.model}', pretrained='{spec.pretrained}')\"`, "
        "then copy the cache (~/.cache/huggingface) here, or give a local or s3:// checkpoint file as `pretrained`."
    )


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip warns that no weights were loaded; random initialisation is what was asked for."""
    notice = _RandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Random initialisation that depends only on ``seed``, without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
