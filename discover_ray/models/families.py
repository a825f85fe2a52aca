"""The built-in model families: ``module:function`` builders, the CIFAR ResNets, and every timm model."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from discover_ray.encoders.hub import hub_cached, hub_reachable
from discover_ray.errors import ConfigError, UnknownName, WeightsUnavailableError
from discover_ray.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD, DEPTHS, cifar_resnet
from discover_ray.models.registry import ModelFamily, register_family

__all__ = ["Builders", "CifarResNets", "TimmModels"]


def _timm_transform(spec: Any, model: nn.Module) -> Callable[[Any], Tensor]:
    """timm's data config of ``model`` (its defaults for models timm does not know), overridden by the spec."""
    import timm

    config = timm.data.resolve_model_data_config(model)
    if spec.image_size:
        config["input_size"] = (3, spec.image_size, spec.image_size)
    if spec.mean:
        config["mean"] = spec.mean
    if spec.std:
        config["std"] = spec.std
    return timm.data.create_transform(**config)


@register_family
class Builders(ModelFamily):
    """``builder: package.module:function``: any function that returns a module, called with ``kwargs``."""

    name = "builder"
    names_models = False  # the function decides what is built; the spec's name is only what it is called

    def claims(self, spec: Any, base: str) -> bool:
        return bool(spec.builder)

    def build(self, spec: Any, base: str, kwargs: dict[str, Any]) -> nn.Module:
        module_name, _, function_name = spec.builder.partition(":")
        if not function_name:
            raise ConfigError(f"builder {spec.builder!r} must look like 'package.module:function'")
        try:
            builder = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as err:
            raise UnknownName(f"cannot find builder {spec.builder!r}: {err}") from None
        return builder(**kwargs)

    def preprocess(self, spec: Any, base: str, model: nn.Module) -> Callable[[Any], Tensor]:
        return _timm_transform(spec, model)

    def describe(self) -> str:
        return "builder: module:function"


@register_family
class CifarResNets(ModelFamily):
    """The CIFAR ResNets (20, 32, 44, 56, 110) that the shared CIFAR-10 checkpoints load into."""

    name = "cifar_resnet"

    def claims(self, spec: Any, base: str) -> bool:
        return base in DEPTHS

    def build(self, spec: Any, base: str, kwargs: dict[str, Any]) -> nn.Module:
        if spec.pretrained:
            raise ConfigError(
                f"built-in {base} has no pretrained weights to download; give its checkpoint instead "
                "(the CIFAR checkpoints load unchanged into its competitive twin too)"
            )
        return cifar_resnet(base, **kwargs)

    def preprocess(self, spec: Any, base: str, model: nn.Module) -> Callable[[Any], Tensor]:
        size, mean, std = spec.image_size or 32, spec.mean or CIFAR_MEAN, spec.std or CIFAR_STD
        from torchvision import transforms  # on first use: importing torchvision takes a second

        return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                   transforms.Normalize(mean, std)])

    def describe(self) -> str:
        return "built in: " + ", ".join(DEPTHS)


@register_family
class TimmModels(ModelFamily):
    """Every timm model name (``resnet50``, ``deit_tiny_patch16_224``, ``vit_base_patch16_224.augreg_in21k``)."""

    name = "timm"

    def claims(self, spec: Any, base: str) -> bool:
        import timm  # imported when needed: it adds seconds to every worker that only needs a built-in model

        return timm.is_model(base)

    def build(self, spec: Any, base: str, kwargs: dict[str, Any]) -> nn.Module:
        import timm

        if spec.pretrained and not hub_reachable() and not _timm_weights_cached(base):
            raise WeightsUnavailableError(
                f"cannot download pretrained timm weights for {base!r}: the model hub is unreachable and the weights "
                "are not cached. Give a local or s3:// checkpoint instead (checkpoint=...), or copy the Hugging Face "
                "cache here."
            )
        return timm.create_model(base, pretrained=spec.pretrained, **kwargs)

    def preprocess(self, spec: Any, base: str, model: nn.Module) -> Callable[[Any], Tensor]:
        return _timm_transform(spec, model)

    def describe(self) -> str:
        return "any timm model name"


def _timm_weights_cached(name: str) -> bool:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not hub:
        return False
    repo = "/".join(hub.split("/")[:2])
    return hub_cached(repo, ("model.safetensors", "pytorch_model.bin"))
