"""Concept sources as plugins: label concepts and CLIP concepts built in; a new kind is one module with one
``@register_source`` class."""

from discover_ray.sources import clip, labels  # noqa: F401  (registers the built-in kinds)
from discover_ray.sources.base import ConceptSourceKind, PreparedSource, SourceConfig, SourceContext
from discover_ray.sources.clip import ClipConcepts
from discover_ray.sources.labels import LabelConcepts
from discover_ray.sources.registry import get_source_kind, parse_source, register_source, source_kinds

__all__ = [
    "ClipConcepts", "ConceptSourceKind", "LabelConcepts", "PreparedSource", "SourceConfig", "SourceContext",
    "get_source_kind", "parse_source", "register_source", "source_kinds",
]
