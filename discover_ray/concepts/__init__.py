"""Concept sets: the text vocabulary neurons are described with.

A concept set is an ordered tuple of unique, non-blank strings with a content id. Files are read once,
cleaned (strip, drop blanks, drop repeats keeping the first) and the same list is used to encode and to
decode, so an index always maps back to the text it was computed from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import fsspec

from discover_ray.concepts._builtin import BUILTIN, CIFAR10_SUPERCLASS_MEMBERS, CIFAR100_SUPERCLASS_MEMBERS
from discover_ray.errors import ConfigError, InputNotFound, UnknownName
from discover_ray.ids import content_id

__all__ = [
    "CleaningReport",
    "ConceptSet",
    "builtin",
    "builtin_names",
    "clean_concepts",
    "load_concepts",
    "superclass_members",
]


@dataclass(frozen=True)
class CleaningReport:
    """What cleaning removed: blank lines and repeated concepts, by 1-based line number."""

    blank_lines: tuple[int, ...] = ()
    duplicates: tuple[tuple[int, str], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.blank_lines or self.duplicates)

    def summary(self) -> str:
        if not self.changed:
            return "no blank or duplicate lines"
        parts = []
        if self.blank_lines:
            parts.append(f"dropped {len(self.blank_lines)} blank line(s)")
        if self.duplicates:
            shown = ", ".join(f"{text!r} (line {line})" for line, text in self.duplicates[:5])
            more = f" and {len(self.duplicates) - 5} more" if len(self.duplicates) > 5 else ""
            parts.append(f"dropped {len(self.duplicates)} duplicate(s): {shown}{more}")
        return "; ".join(parts)


@dataclass(frozen=True)
class ConceptSet:
    """An ordered, de-duplicated concept vocabulary; ``id`` is a hash of its content."""

    name: str
    concepts: tuple[str, ...]
    report: CleaningReport = field(default=CleaningReport(), compare=False)

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ValueError(f"concept set {self.name!r} is empty")
        if len(set(self.concepts)) != len(self.concepts):
            raise ValueError(f"concept set {self.name!r} has duplicates; build it with clean_concepts()")

    @property
    def id(self) -> str:
        return content_id("\n".join(self.concepts))

    def __len__(self) -> int:
        return len(self.concepts)

    def __getitem__(self, index: int) -> str:
        return self.concepts[index]

    def index_of(self, names: list[str] | tuple[str, ...]) -> list[int]:
        """Positions of ``names``; raises naming every missing one."""
        lookup = {c: i for i, c in enumerate(self.concepts)}
        missing = [n for n in names if n not in lookup]
        if missing:
            raise UnknownName(f"concept set {self.name!r} lacks {len(missing)} concept(s): {missing[:10]}")
        return [lookup[n] for n in names]


def clean_concepts(lines: list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], CleaningReport]:
    """Strip each line, drop blanks, keep the first of repeated concepts; report what was dropped."""
    seen: set[str] = set()
    kept: list[str] = []
    blanks: list[int] = []
    duplicates: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            blanks.append(number)
        elif text in seen:
            duplicates.append((number, text))
        else:
            seen.add(text)
            kept.append(text)
    return tuple(kept), CleaningReport(tuple(blanks), tuple(duplicates))


def load_concepts(source: str, name: str | None = None) -> ConceptSet:
    """A concept set from a built-in name (see ``builtin_names``) or a text file (local path or fsspec URI)."""
    if source in BUILTIN:
        return builtin(source)
    try:
        with fsspec.open(source, "r", encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise InputNotFound(
            f"concept file {source!r} not found; give a text file with one concept per line "
            f"or a built-in set: {', '.join(BUILTIN)}"
        ) from None
    concepts, report = clean_concepts(text.splitlines())  # splitlines: \n, \r\n and bare \r alike
    if not concepts:
        raise ConfigError(f"concept file {source!r} holds no concepts (only blank lines)")
    stem = source.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return ConceptSet(name or stem, concepts, report)


def builtin(name: str) -> ConceptSet:
    if name not in BUILTIN:
        raise UnknownName(f"no built-in concept set {name!r}; choose one of {', '.join(BUILTIN)}")
    return ConceptSet(name, BUILTIN[name])


def builtin_names() -> tuple[str, ...]:
    return tuple(BUILTIN)


SUPERCLASS_TABLES = {"cifar100_superclasses": CIFAR100_SUPERCLASS_MEMBERS,
                     "cifar10_superclasses": CIFAR10_SUPERCLASS_MEMBERS}


def superclass_members(name: str = "cifar100_superclasses") -> dict[str, tuple[str, ...]]:
    """Superclass → member class names, for label-derived concepts (the LE(Label) style)."""
    if name not in SUPERCLASS_TABLES:
        raise UnknownName(f"no superclass table for {name!r}; built in: {', '.join(SUPERCLASS_TABLES)}")
    return dict(SUPERCLASS_TABLES[name])
