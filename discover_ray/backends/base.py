"""The three kinds of model backend a description method calls, and the registry that builds them by ``kind``.

- a **captioner** turns images into one caption each (``caption(images) -> list[str]``);
- a **summariser** answers a chat conversation (``chat(messages, temperature=, seed=) -> str``);
- a **generator** draws images of a text prompt (``generate(prompt, seeds) -> list[Image] | None``, one image
  per seed, so an image depends on its own seed only, never on which others are drawn with it; ``None``: the
  backend cannot draw this prompt at all, e.g. a phrase outside the generated world's grammar).

Each kind registers a config model (a ``Strict`` section whose ``kind`` field names it) and a class built
from it with ``register_backend``. Configs validate without importing any heavy library; a backend imports
transformers / diffusers / openai only when it is built, in the process that uses it. ``identity`` is what
names a backend's results in the call cache and the run record: kind, model id, revision and the
parameters that change its output (never a secret).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from PIL import Image
from pydantic import ValidationError

from discover_ray.config_files import Strict
from discover_ray.errors import ConfigError, DiscoverError, UnknownName

__all__ = [
    "ROLES", "BackendConfig", "BackendContext", "BackendError", "BackendIdentity", "Captioner", "Generator", "Role",
    "Summarizer", "backend_kinds", "build_backend", "parse_backend", "register_backend",
]

Role = Literal["captioner", "summarizer", "generator"]
ROLES: tuple[Role, ...] = ("captioner", "summarizer", "generator")


class BackendError(DiscoverError, RuntimeError):
    """A backend call failed (a server down or answering garbage, a model that raised); the unit it was for is
    recorded as failed and the run goes on, within the run's failure budget."""


class BackendConfig(Strict):
    """What every backend section holds besides its own parameters."""

    kind: str
    model: str | None = None
    revision: str | None = None

    def check(self) -> None:
        """Raise, on the driver within seconds and before any work, if the backend cannot be built here (e.g. its
        weights are neither local nor cached and cannot be downloaded). Nothing is loaded."""

    def parameters(self) -> dict[str, Any]:
        """The parameters that change a result (everything but kind, model and revision; no secrets)."""
        return self.model_dump(mode="json", exclude={"kind", "model", "revision"})


@dataclass(frozen=True)
class BackendIdentity:
    """What names a backend's results: in the call cache's keys and in the run record."""

    kind: str
    model: str
    revision: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "revision": self.revision, "params": self.params}


@dataclass(frozen=True)
class BackendContext:
    """Where a backend is built: the device it may use and the run's store root (for files it reads)."""

    device: str = "cpu"
    store_root: str | None = None


class _Backend:
    role: ClassVar[Role]
    kind: ClassVar[str]
    Config: ClassVar[type[BackendConfig]]

    def __init__(self, config: BackendConfig, context: BackendContext):
        self.config, self.context = config, context

    @property
    def identity(self) -> BackendIdentity:
        return BackendIdentity(self.kind, self.config.model or self.kind, self.config.revision, self.config.parameters())


class Captioner(_Backend):
    role = "captioner"

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        raise NotImplementedError


class Summarizer(_Backend):
    role = "summarizer"

    def chat(self, messages: Sequence[dict[str, str]], *, temperature: float, seed: int) -> str:
        raise NotImplementedError


class Generator(_Backend):
    role = "generator"

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image] | None:
        raise NotImplementedError


_REGISTRY: dict[tuple[str, str], type[_Backend]] = {}
_B = TypeVar("_B", bound=type[_Backend])


def register_backend(cls: _B) -> _B:
    """Class decorator: registers a backend class under its (role, kind)."""
    key = (cls.role, cls.kind)
    if key in _REGISTRY and _REGISTRY[key].__qualname__ != cls.__qualname__:
        raise ValueError(f"a {cls.role} backend of kind {cls.kind!r} is already registered")
    _REGISTRY[key] = cls
    return cls


def _load_builtin() -> None:
    from discover_ray.backends import builtin  # noqa: F401  (registers the shipped kinds)


def backend_kinds(role: Role) -> list[str]:
    _load_builtin()
    return sorted(kind for r, kind in _REGISTRY if r == role)


def _backend_class(role: Role, kind: str) -> type[_Backend]:
    _load_builtin()
    try:
        return _REGISTRY[(role, kind)]
    except KeyError:
        raise UnknownName(f"unknown {role} kind {kind!r}; kinds: {', '.join(backend_kinds(role))}") from None


def parse_backend(role: Role, section: dict[str, Any] | BackendConfig) -> BackendConfig:
    """A backend section validated by its kind's config model; a bad one is an error naming the field."""
    if isinstance(section, BackendConfig):
        return section
    if not isinstance(section, dict) or "kind" not in section:
        raise ConfigError(f"backends.{role} needs a kind ({', '.join(backend_kinds(role))})")
    cls = _backend_class(role, str(section["kind"]))
    try:
        return cls.Config(**section)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"backends.{role} ({section['kind']}): {problems} (valid: {', '.join(cls.Config.model_fields)})") from None


def build_backend(role: Role, config: dict[str, Any] | BackendConfig, context: BackendContext | None = None) -> Any:
    """The backend a section describes, loaded (its model read) in this process."""
    parsed = parse_backend(role, config)
    return _backend_class(role, parsed.kind)(parsed, context or BackendContext())


_MEMO: dict[Any, Any] = {}


def memoised(factory: Callable[[], Any], key: Any) -> Any:
    """One instance per process for ``key`` (a model is loaded once per worker, not once per task)."""
    if key not in _MEMO:
        _MEMO[key] = factory()
    return _MEMO[key]
