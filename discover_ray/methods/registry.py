"""The registry of labelling methods: ``@register_method`` adds one; configs and the pipeline look them up.

Methods of other packages register themselves when imported, or through the ``discover_ray.methods``
entry-point group (``[project.entry-points."discover_ray.methods"] my_method = "my_pkg.my_method"``),
which is loaded the first time a method is looked up.
"""

from __future__ import annotations

import importlib.metadata
from typing import TypeVar

from discover_ray.errors import UnknownName
from discover_ray.methods.base import NEEDS, Method
from discover_ray.schema import VERSIONS

__all__ = ["get_method", "method_names", "register_method"]

_METHODS: dict[str, Method] = {}
_entry_points_loaded = False
_M = TypeVar("_M", bound=type[Method])


def register_method(cls: _M) -> _M:
    """Class decorator: registers an instance of ``cls`` under ``cls.name``."""
    unknown = set(cls.needs) - NEEDS
    if unknown:
        raise ValueError(f"method {cls.name!r} needs {sorted(unknown)}, which the pipeline does not provide ({sorted(NEEDS)})")
    if cls.writes not in VERSIONS:
        raise ValueError(f"method {cls.name!r} writes {cls.writes!r}, not a table of discover_ray.schema ({sorted(VERSIONS)})")
    if cls.name in _METHODS and type(_METHODS[cls.name]).__qualname__ != cls.__qualname__:
        raise ValueError(f"a method named {cls.name!r} is already registered ({type(_METHODS[cls.name]).__module__})")
    _METHODS[cls.name] = cls()
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group="discover_ray.methods"):
        entry.load()


def method_names() -> tuple[str, ...]:
    _load_entry_points()
    return tuple(_METHODS)


def get_method(name: str) -> Method:
    _load_entry_points()
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownName(f"unknown method {name!r}; registered methods: {', '.join(_METHODS)}") from None
