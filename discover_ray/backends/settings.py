"""The ``backends:`` config section and what travels to the workers that call the backends.

``captioner``, ``summarizer`` and ``generator`` are sections chosen by ``kind`` (validated by the kind's own
model, so a misspelt field is an error at config load); ``replay: true`` answers every call from the cache
and fails on a miss instead of calling; ``calls`` is the run's budget of backend calls (cache misses),
shared out among the DESCRIBE tasks by their share of the units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator

from discover_ray.backends.base import BackendConfig, BackendContext, Role, build_backend, memoised, parse_backend
from discover_ray.backends.cache import CallCache
from discover_ray.backends.cached import CachedCaptioner, CachedGenerator, CachedSummarizer
from discover_ray.backends.limits import CallBudget
from discover_ray.config_files import Strict
from discover_ray.errors import ConfigError

__all__ = ["BackendSet", "BackendsConfig", "CachedBackends", "parse_section"]


def parse_section(role: Role, value: Any) -> Any:
    """A config validator's view of a backend section: None and parsed sections as they are, a dict parsed by its
    kind (a bad one a ``ValueError``, which pydantic reports at the field)."""
    if value is None or isinstance(value, BackendConfig):
        return value
    try:
        return parse_backend(role, value)
    except ConfigError as err:
        raise ValueError(str(err)) from None


class BackendsConfig(Strict):
    captioner: SerializeAsAny[BackendConfig] | None = None
    summarizer: SerializeAsAny[BackendConfig] | None = Field(None, description="kind none: the captions are the candidates")
    generator: SerializeAsAny[BackendConfig] | None = None
    replay: bool = Field(False, description="answer every call from the cache; a missing entry is an error")
    calls: int | None = Field(None, ge=0, description="the run's budget of backend calls (cache misses)")

    @field_validator("captioner", "summarizer", "generator", mode="before")
    @classmethod
    def _section(cls, value: Any, info: ValidationInfo) -> Any:
        return parse_section(info.field_name, value)  # type: ignore[arg-type]

    def require(self, role: Role, who: str) -> BackendConfig:
        section = getattr(self, role)
        if section is None:
            raise ConfigError(f"{who} needs backends.{role} (e.g. {_EXAMPLES[role]})")
        return section


_EXAMPLES = {"captioner": "{kind: blip} or {kind: clip_retrieval, model: ..., captions: FILE}",
             "summarizer": "{kind: none}, {kind: openai, model: ..., base_url: ...} or {kind: transformers, model: DIR}",
             "generator": "{kind: diffusers} or {kind: world}"}


@dataclass
class CachedBackends:
    captioner: CachedCaptioner | None
    summarizer: CachedSummarizer | None  # None: no summariser (kind none), the captions are the candidates
    generator: CachedGenerator | None
    cache: CallCache

    def identities(self) -> dict[str, Any]:
        return {role: getattr(self, role).identity.as_dict() for role in ("captioner", "summarizer", "generator")
                if getattr(self, role) is not None}


@dataclass(frozen=True)
class BackendSet:
    """The backends a stage's tasks call, as configs (the models load where the tasks run, once per process)."""

    captioner: BackendConfig | None
    summarizer: BackendConfig | None
    generator: BackendConfig | None
    store_root: str
    replay: bool = False

    def build(self, budget: CallBudget | None = None, device: str | None = None) -> CachedBackends:
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        context = BackendContext(device=device, store_root=self.store_root)
        cache = CallCache(self.store_root, replay=self.replay)

        def load(role: Role, config: BackendConfig | None) -> Any:
            if config is None or (role == "summarizer" and config.kind == "none"):
                return None
            return memoised(lambda: build_backend(role, config, context), ("backend", role, config.model_dump_json(), device))

        wrap = {"captioner": CachedCaptioner, "summarizer": CachedSummarizer, "generator": CachedGenerator}
        built = {role: load(role, getattr(self, role)) for role in wrap}
        return CachedBackends(*(wrap[r](built[r], cache, budget) if built[r] is not None else None for r in wrap),
                              cache=cache)
