"""Config files: YAML in, ``${VAR}`` expanded, validated by pydantic; and the form that may be stored.

Strings may name environment variables as ``${NAME}`` or ``${NAME:-default}`` (expanded by a plain
pattern, never evaluated). What a run stores (its record, its report, a submitted job's config) is the
*stored form*: the validated config with every value that came from a ``${VAR}`` put back as written,
and every URL without user-info, query or fragment, so that no secret an environment variable or a URL
carries is ever written down.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from discover_ray.errors import ConfigError

__all__ = ["Strict", "absolute", "expand_env", "has_variables", "sanitize", "sanitize_url", "stored_form", "validate"]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Strict(BaseModel):
    """A config section: unknown keys are errors that name them; values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _template: Any = PrivateAttr(default=None)  # the section as written, before ${VAR} expansion

    def stored(self) -> dict[str, Any]:
        """The stored form of this config (see the module docstring)."""
        return stored_form(self.model_dump(mode="json"), self._template)


_Config = TypeVar("_Config", bound=Strict)


def absolute(path: str | None) -> str | None:
    """Local paths become absolute; URIs (``s3://…``) stay as they are."""
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def has_variables(value: str) -> bool:
    return bool(_VARIABLE.search(value))


def expand_env(value: Any) -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"the config uses ${{{name}}} but the environment variable {name} is not set")

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value


def sanitize_url(value: str) -> str:
    """``scheme://user:secret@host/path?token=…#x`` → ``scheme://host/path``; other strings unchanged."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def sanitize(value: Any) -> Any:
    """Every URL in a tree of dicts, lists and strings without credentials, query or fragment."""
    if isinstance(value, str):
        return sanitize_url(value)
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    return value


def stored_form(resolved: Any, template: Any) -> Any:
    """``resolved`` (a config dump) with each value that was written with a ``${VAR}`` put back as written."""
    if isinstance(template, str) and has_variables(template):
        return sanitize(template)
    if isinstance(resolved, dict):
        given = template if isinstance(template, dict) else {}
        return {k: stored_form(v, given.get(k)) for k, v in resolved.items()}
    if isinstance(resolved, list):
        given = template if isinstance(template, list) and len(template) == len(resolved) else [None] * len(resolved)
        return [stored_form(v, t) for v, t in zip(resolved, given, strict=True)]
    return sanitize(resolved)


def read_source(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The parsed YAML mapping of a file (or a copy of a given dict) and how to name it in errors."""
    if isinstance(source, dict):
        return dict(source), "config"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file {str(source)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(source)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of keys to values")
    return raw, str(source)


def validate(model: type[_Config], source: str | Path | dict[str, Any], what: str, **overrides: Any) -> _Config:
    """Read YAML (or take a parsed dict), apply top-level ``overrides``, expand ``${VAR}``, and validate;
    the result remembers the config as written, for its stored form."""
    raw, where = read_source(source)
    template = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        config = model.model_validate(expand_env(template))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {_message(e)}" for e in err.errors())
        raise ConfigError(f"{where} is not a valid {what} config: {problems}") from None
    config._template = template
    return config


def _message(error: dict[str, Any]) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
