"""The registry of model families: each says which model names it builds, builds them, and derives their
preprocessing. ``load_model`` asks the families in registration order; the first that claims a spec wins.

A new family (say, torchvision's models) is one module with one ``@register_family`` class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from discover_ray.errors import UnknownName

__all__ = ["ModelFamily", "families", "family_for", "register_family"]


class ModelFamily:
    """Builds the (non-competitive) base models of one family."""

    name: ClassVar[str]
    #: whether a spec's name selects the model (then ``<name>_cvn<U>`` is its competitive twin)
    names_models: ClassVar[bool] = True

    def claims(self, spec: Any, base: str) -> bool:
        """Whether this family builds ``base`` (the spec's name without a ``_cvn<U>`` suffix)."""
        raise NotImplementedError

    def build(self, spec: Any, base: str, kwargs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def preprocess(self, spec: Any, base: str, model: nn.Module) -> Callable[[Any], Tensor]:
        raise NotImplementedError

    def describe(self) -> str:
        """What the family builds, for error messages."""
        return self.name


_FAMILIES: list[ModelFamily] = []
_F = TypeVar("_F", bound=type[ModelFamily])


def register_family(cls: _F) -> _F:
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != cls.name] + [cls()]
    return cls


def families() -> tuple[ModelFamily, ...]:
    return tuple(_FAMILIES)


def family_for(spec: Any, base: str) -> ModelFamily:
    for family in _FAMILIES:
        if family.claims(spec, base):
            return family
    raise UnknownName(
        f"unknown model {spec.name!r}: not a name of any model family ({'; '.join(f.describe() for f in _FAMILIES)}), "
        "each optionally with a _cvn<U> suffix for its competitive twin (e.g. cifar_resnet20_cvn2)"
        + _similar(spec.name)
    )


def _similar(name: str) -> str:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        return ""
    close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
    return f"; similar timm names: {close}" if close else ""
