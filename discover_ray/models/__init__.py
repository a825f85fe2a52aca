"""Target models: a registry of families (``module:function`` builders, the built-in CIFAR ResNets, every
timm model), competitive twins by name (``<base>_cvn<U>``), and weights from checkpoints.

Checkpoints are local paths or fsspec URIs (``s3://…``), read as safetensors or with
``torch.load(weights_only=True)``; nothing in them is executed. ``checkpoint_id`` is the sha256 of the
file. A checkpoint that does not fit the model fails naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
from torch import Tensor, nn

from discover_ray.errors import CheckpointMismatch, InputNotFound
from discover_ray.ids import file_sha256
from discover_ray.models import families as _families  # noqa: F401  (registers the built-in families)
from discover_ray.models.cifar_resnet import DEPTHS
from discover_ray.models.competitive import (
    TIMM_VARIANTS,
    competitive,
    create_cvn,
    parse_cvn_name,
    register_timm_variants,
)
from discover_ray.models.registry import ModelFamily, families, family_for, register_family

__all__ = [
    "TIMM_VARIANTS", "CheckpointMismatch", "LoadedModel", "ModelFamily", "ModelSpec", "build_model", "builtin_models",
    "create_cvn", "families", "load_model", "load_state_dict", "parse_cvn_name", "register_family",
    "register_timm_variants",
]


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build and which weights to put in it.

    ``name`` is a name of a model family (a built-in ``cifar_resnet20`` … ``cifar_resnet110``, a timm model
    name), or one with a ``_cvn<U>`` suffix for its competitive twin (every ReLU/GELU turned into LWTA
    with U competitors, e.g. ``cifar_resnet20_cvn2``, ``deit_tiny_cvn16``); ``builder``
    (``package.module:function``) builds instead. ``checkpoint`` is a local path or URI of weights;
    ``pretrained`` asks timm for its own weights instead (a competitive twin gets its base's weights,
    which fit it: LWTA has no parameters).
    """

    name: str
    checkpoint: str | None = None
    builder: str | None = None
    pretrained: bool = False
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class LoadedModel:
    model: nn.Module
    preprocess: Callable[[Any], Tensor]
    checkpoint_id: str | None


def builtin_models() -> tuple[str, ...]:
    """The built-in CIFAR ResNets, then the pattern of their competitive twins."""
    return (*DEPTHS, "cifar_resnet<depth>_cvn<U>")


def _resolve(spec: ModelSpec) -> tuple[ModelFamily, str, int | None, dict[str, Any]]:
    parsed = parse_cvn_name(spec.name)
    base, competitors = parsed if parsed else (spec.name, None)
    family = family_for(spec, base)
    if not family.names_models:
        base, competitors = spec.name, None
    kwargs = dict(spec.kwargs)
    if competitors is not None:
        kwargs.pop("tau", None)  # the competition's temperature, not the base's
    return family, base, competitors, kwargs


def build_model(spec: ModelSpec) -> nn.Module:
    """The model of ``spec`` with its family's initial (or pretrained) weights, competitive if its name says so."""
    family, base, competitors, kwargs = _resolve(spec)
    return competitive(family.build(spec, base, kwargs), competitors, dict(spec.kwargs))


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model, load its checkpoint (if any), and derive its preprocessing."""
    family, base, _, _ = _resolve(spec)
    model = build_model(spec)
    checkpoint_id = None
    if spec.checkpoint:
        state = load_state_dict(spec.checkpoint)
        _apply(model, state, spec.checkpoint)
        checkpoint_id = file_sha256(spec.checkpoint)
    model.eval()
    return LoadedModel(model, family.preprocess(spec, base, model), checkpoint_id)


def load_state_dict(uri: str) -> dict[str, Tensor]:
    """Tensors of a checkpoint: safetensors, or a torch file read with ``weights_only=True``.

    Common wrappers are unwrapped (``{"state_dict": …}``, ``{"model": …}``) and a ``module.`` prefix
    (DataParallel) is stripped.
    """
    try:
        with fsspec.open(uri, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InputNotFound(f"checkpoint {uri!r} not found") from None
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        state: Any = load_safetensors(data)
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler refuses anything but tensors and plain containers
            reason = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), None)
            raise CheckpointMismatch(
                f"checkpoint {uri!r} cannot be read safely ({reason or type(err).__name__}); "
                "save a state_dict (torch.save(model.state_dict(), path)) or safetensors"
            ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointMismatch(f"checkpoint {uri!r} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _apply(model: nn.Module, state: dict[str, Tensor], uri: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes ({'; '.join(shapes[:3])})")
        raise CheckpointMismatch(f"checkpoint {uri!r} does not fit the model: " + ", ".join(parts))
    model.load_state_dict(state, strict=False)
