"""The no-summarisation ablation (DnD paper A.4.6): the captions themselves are the candidate concepts.

It is a summariser kind so that a config says which one it uses; the method never calls it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from discover_ray.backends.base import BackendConfig, BackendIdentity, Summarizer, register_backend

__all__ = ["NoSummary", "NoSummaryConfig"]


class NoSummaryConfig(BackendConfig):
    kind: Literal["none"] = "none"


@register_backend
class NoSummary(Summarizer):
    kind = "none"
    Config = NoSummaryConfig

    @property
    def identity(self) -> BackendIdentity:
        return BackendIdentity("none", "none")

    def chat(self, messages: Sequence[dict[str, str]], *, temperature: float, seed: int) -> str:
        raise TypeError("the 'none' summariser is never called: its captions are the candidates")
