"""Competitive twins by name, in one place: ``<base>_cvn<U>`` is ``<base>`` with every ReLU/GELU turned into
LWTA(U), whatever family builds ``<base>``.

``<base>`` is a built-in CIFAR ResNet, ``deit_tiny`` / ``deit_small`` (short for timm's
``deit_*_patch16_224``) or any timm model name; the DISCOVER paper's variants are also made known to timm
(``register_timm_variants``), so ``timm.create_model("deit_tiny_cvn16")`` works after it.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from discover_ray.cvn import to_cvn
from discover_ray.errors import ConfigError

__all__ = ["DEFAULT_TAU", "SHORT_BASES", "TIMM_VARIANTS", "create_cvn", "parse_cvn_name", "register_timm_variants"]

DEFAULT_TAU = 0.67
SHORT_BASES = {"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224"}
#: the paper's published variants (DISCOVER §2.2), made known to timm by register_timm_variants()
TIMM_VARIANTS = (
    *(f"deit_tiny_cvn{u}" for u in (2, 8, 16, 24)),
    *(f"deit_small_cvn{u}" for u in (2, 12, 16)),
    *(f"resnet18_cvn{u}" for u in (2, 4, 8)),
)
_NAME = re.compile(r"^(?P<base>.+)_cvn(?P<u>[1-9][0-9]*)$")
_registered = False


def parse_cvn_name(name: str) -> tuple[str, int] | None:
    """``(base, U)`` for a ``<base>_cvn<U>`` name (short DeiT bases expanded to timm names), else ``None``.

    Only the form is checked; whether the base exists is decided when the model is built.
    """
    match = _NAME.match(name)
    if match is None:
        return None
    base = match["base"]
    return SHORT_BASES.get(base, base), int(match["u"])


def competitive(model: nn.Module, competitors: int | None, kwargs: dict[str, Any]) -> nn.Module:
    """``model`` turned into its competitive twin when a name asked for one (``tau`` from the kwargs)."""
    if competitors is None:
        return model
    return to_cvn(model, competitors, tau=float(kwargs.get("tau", DEFAULT_TAU)))


def create_cvn(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``<base>_cvn<U>``: the base model (with its pretrained weights if asked), then converted.

    ``kwargs`` go to the base's builder (timm: ``img_size``, ``depth``, ``num_classes`` …), except ``tau``.
    """
    from discover_ray.models import ModelSpec, build_model

    if parse_cvn_name(name) is None:
        raise ConfigError(f"{name!r} is not a competitive model name: expected '<base>_cvn<U>', e.g. 'deit_tiny_cvn16'")
    return build_model(ModelSpec(name=name, pretrained=pretrained, kwargs=kwargs))


def register_timm_variants() -> None:
    """Make ``TIMM_VARIANTS`` creatable with ``timm.create_model``; calling it again does nothing."""
    global _registered
    if _registered:
        return
    from timm.models import is_model, register_model

    for variant in TIMM_VARIANTS:
        if is_model(variant):  # registered before (this module reloaded): re-registering would only warn
            continue
        entry = _timm_entrypoint(variant)
        globals()[variant] = entry  # timm lists entrypoints in this module's __all__; keep them importable
        register_model(entry)
    _registered = True


def _timm_entrypoint(variant: str):
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_cvn(variant, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = variant
    entry.__module__ = __name__
    entry.__doc__ = f"{variant}: timm's {parse_cvn_name(variant)[0]} with every activation turned into LWTA."  # type: ignore[index]
    return entry
