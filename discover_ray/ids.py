"""Content ids: short, stable hashes that name inputs by what they contain, not where they live."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

import fsspec

ID_LENGTH = 16


def content_id(text: str | bytes) -> str:
    """First 16 hex digits of the sha256 of ``text`` (UTF-8)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:ID_LENGTH]


def file_sha256(uri: str, chunk: int = 1 << 20) -> str:
    """Full sha256 of a local or fsspec file, read in chunks."""
    digest = hashlib.sha256()
    try:
        with fsspec.open(uri, "rb") as handle:
            stream: BinaryIO = handle
            while block := stream.read(chunk):
                digest.update(block)
    except FileNotFoundError:
        from discover_ray.errors import InputNotFound

        raise InputNotFound(f"{uri!r} not found") from None
    return digest.hexdigest()
