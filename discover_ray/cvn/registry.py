"""Model names for competitive twins: ``<base>_cvn<U>`` is ``<base>`` with every ReLU/GELU turned into LWTA(U).

``<base>`` is a built-in CIFAR ResNet, ``deit_tiny`` / ``deit_small`` (short for timm's
``deit_*_patch16_224``) or any timm model name. timm is imported only when a timm base is built, because
importing it costs seconds in workers that never need it.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from discover_ray.cvn.convert import to_cvn

__all__ = ["SHORT_BASES", "TIMM_VARIANTS", "parse_cvn_name", "create_cvn", "register_timm_variants"]

SHORT_BASES = {"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224"}
# the paper's published variants (DISCOVER §2.2), made known to timm by register_timm_variants()
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


def create_cvn(name: str, pretrained: bool = False, *, tau: float = 0.67, **kwargs: Any) -> nn.Module:
    """Build ``<base>_cvn<U>``: the base model (with its pretrained weights if asked), then converted.

    ``kwargs`` go to the base's builder (timm: ``img_size``, ``depth``, ``num_classes`` …).
    """
    from discover_ray.models.cifar_resnet import DEPTHS, cifar_resnet  # not at import: models imports this module

    parsed = parse_cvn_name(name)
    if parsed is None:
        raise ValueError(f"{name!r} is not a competitive model name: expected '<base>_cvn<U>', e.g. 'deit_tiny_cvn16'")
    base, competitors = parsed
    if base in DEPTHS:
        if pretrained:
            raise ValueError(
                f"built-in {base} has no pretrained weights to download; give its checkpoint instead "
                "(the CIFAR checkpoints load unchanged into the competitive twin)"
            )
        model = cifar_resnet(base, **kwargs)
    else:
        import timm

        if not timm.is_model(base):
            raise ValueError(
                f"unknown model {name!r}: its base {base!r} is neither built in ({', '.join(DEPTHS)}) nor a timm model"
            )
        model = timm.create_model(base, pretrained=pretrained, **kwargs)
    return to_cvn(model, competitors, tau=tau)


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
