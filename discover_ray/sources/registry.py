"""The registry of concept-source kinds; a config's ``concepts:`` entries are validated by their kind's model."""

from __future__ import annotations

from typing import Any, TypeVar

from discover_ray.errors import ConfigError
from discover_ray.sources.base import ConceptSourceKind, SourceConfig

__all__ = ["get_source_kind", "parse_source", "register_source", "source_kinds"]

_KINDS: dict[str, ConceptSourceKind] = {}
_K = TypeVar("_K", bound=type[ConceptSourceKind])


def register_source(cls: _K) -> _K:
    _KINDS[cls.kind] = cls()
    return cls


def source_kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def get_source_kind(kind: str) -> ConceptSourceKind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown concept source kind {kind!r}; choose from {', '.join(sorted(_KINDS))}") from None


def parse_source(raw: Any) -> SourceConfig:
    """A ``concepts:`` entry as the config model of its ``kind``."""
    if isinstance(raw, SourceConfig):
        return raw
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ConfigError(f"a concept source needs a kind ({', '.join(_KINDS)}), got {raw!r}")
    return get_source_kind(str(raw["kind"])).Config.model_validate(raw)
