"""Target models: timm names, built-in CIFAR ResNets, or any ``module:function`` builder, plus checkpoints.

Checkpoints are local paths or fsspec URIs (``s3://…``), read as safetensors or with
``torch.load(weights_only=True)``; nothing in them is executed. ``checkpoint_id`` is the sha256 of the
file. A checkpoint that does not fit the model fails naming the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
from torch import Tensor, nn
from torchvision import transforms

from discover_ray.cvn.registry import create_cvn, parse_cvn_name
from discover_ray.encoders.hub import hub_cached, hub_reachable
from discover_ray.ids import file_sha256
from discover_ray.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD, DEPTHS, cifar_resnet

__all__ = ["ModelSpec", "LoadedModel", "CheckpointMismatch", "load_model", "load_state_dict", "builtin_models"]


class CheckpointMismatch(ValueError):
    """The checkpoint's tensors do not fit the model's parameters."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build and which weights to put in it.

    ``name`` is a built-in (``cifar_resnet20`` … ``cifar_resnet110``), a timm model name, or either with a
    ``_cvn<U>`` suffix for its competitive twin (every ReLU/GELU turned into LWTA with U competitors,
    e.g. ``cifar_resnet20_cvn2``, ``deit_tiny_cvn16``); ``builder`` (``package.module:function``) replaces
    them. ``checkpoint`` is a local path or URI of weights; ``pretrained`` asks timm for its own weights
    instead (a competitive twin gets its base's weights, which fit it: LWTA has no parameters).
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


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model, load its checkpoint (if any), and derive its preprocessing."""
    model = _build(spec)
    checkpoint_id = None
    if spec.checkpoint:
        state = load_state_dict(spec.checkpoint)
        _apply(model, state, spec.checkpoint)
        checkpoint_id = file_sha256(spec.checkpoint)
    model.eval()
    return LoadedModel(model, _preprocess(spec, model), checkpoint_id)


def load_state_dict(uri: str) -> dict[str, Tensor]:
    """Tensors of a checkpoint: safetensors, or a torch file read with ``weights_only=True``.

    Common wrappers are unwrapped (``{"state_dict": …}``, ``{"model": …}``) and a ``module.`` prefix
    (DataParallel) is stripped.
    """
    try:
        with fsspec.open(uri, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {uri!r} not found") from None
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        state: Any = load_safetensors(data)
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler refuses anything but tensors and plain containers
            reason = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), None)
            raise ValueError(
                f"checkpoint {uri!r} cannot be read safely ({reason or type(err).__name__}); "
                "save a state_dict (torch.save(model.state_dict(), path)) or safetensors"
            ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {uri!r} holds no state_dict of tensors")
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


def _build(spec: ModelSpec) -> nn.Module:
    if spec.builder:
        module_name, _, function_name = spec.builder.partition(":")
        if not function_name:
            raise ValueError(f"builder {spec.builder!r} must look like 'package.module:function'")
        try:
            builder = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot find builder {spec.builder!r}: {err}") from None
        return builder(**dict(spec.kwargs))
    parsed = parse_cvn_name(spec.name)
    base = parsed[0] if parsed else spec.name
    if base in DEPTHS:
        return create_cvn(spec.name, **dict(spec.kwargs)) if parsed else cifar_resnet(spec.name, **dict(spec.kwargs))
    import timm  # imported when needed: it adds seconds to every worker that only needs a built-in model
    if not timm.is_model(base):
        close = timm.list_models(f"*{base.split('.')[0][:6]}*")[:8]
        raise ValueError(
            f"unknown model {spec.name!r}: not built in ({', '.join(DEPTHS)}) nor a timm model, each optionally "
            f"with a _cvn<U> suffix for its competitive twin (e.g. cifar_resnet20_cvn2); similar: {close}"
        )
    if spec.pretrained and not hub_reachable() and not _timm_weights_cached(base):
        raise RuntimeError(
            f"cannot download pretrained timm weights for {base!r}: the model hub is unreachable and the weights "
            "are not cached. Give a local or s3:// checkpoint instead (checkpoint=...), or copy the Hugging Face cache here."
        )
    if parsed:
        return create_cvn(spec.name, pretrained=spec.pretrained, **dict(spec.kwargs))
    return timm.create_model(spec.name, pretrained=spec.pretrained, **dict(spec.kwargs))


def _timm_weights_cached(name: str) -> bool:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not hub:
        return False
    repo = "/".join(hub.split("/")[:2])
    return hub_cached(repo, ("model.safetensors", "pytorch_model.bin"))


def _preprocess(spec: ModelSpec, model: nn.Module) -> Callable[[Any], Tensor]:
    """The config file's values first, then the model's own data config (timm), then CIFAR defaults."""
    parsed = parse_cvn_name(spec.name)
    if (parsed[0] if parsed else spec.name) in DEPTHS and not spec.builder:
        size, mean, std = spec.image_size or 32, spec.mean or CIFAR_MEAN, spec.std or CIFAR_STD
        return transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )
    import timm

    config = timm.data.resolve_model_data_config(model)
    if spec.image_size:
        config["input_size"] = (3, spec.image_size, spec.image_size)
    if spec.mean:
        config["mean"] = spec.mean
    if spec.std:
        config["std"] = spec.std
    return timm.data.create_transform(**config)
