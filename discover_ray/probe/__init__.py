"""Probe sets: the images a dissection shows to every model, with stable ids and optional labels.

Three sources: a folder of images (recursive; the label is the parent folder), Parquet with an image-bytes
column (like the CIFAR-10 files), and a Parquet or CSV manifest of image URIs (local paths or any fsspec
URI such as ``s3://``). Images are ordered by ``image_id``, so shards, ``limit`` and seeded ``sample`` are
deterministic. ``probe_id`` hashes every image's id, label and bytes: the same content gives the same
id wherever it lives (reading a remote set once to hash it is the price of that guarantee).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import posixpath
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from PIL import Image

from discover_ray.errors import ProbeError

__all__ = ["IMAGE_EXTENSIONS", "DecodeResult", "ProbeError", "ProbeImage", "ProbeSet", "decode_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_SHARD_SIZE = 4096
DEFAULT_FAILURE_BUDGET = 0.001
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses in error messages: reasons must not vary by run


@dataclass(frozen=True)
class ProbeImage:
    image_id: str
    uri: str | None = None  # file of a folder or manifest source
    row: int | None = None  # row of a Parquet-with-bytes source
    label: int | None = None
    label_name: str | None = None
    texts: tuple[str, ...] | None = None  # captions, for contrastive training (one or several per image)


@dataclass
class ProbeSet:
    """An ordered list of probe images and where to read their bytes."""

    name: str
    kind: str
    source: str
    images: list[ProbeImage]
    classes: tuple[str, ...] | None = None
    image_column: str = "image"
    storage_options: dict[str, Any] = field(default_factory=dict)
    _id: str | None = field(default=None, repr=False)
    _row_groups: _RowGroupReader | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to Ray workers without the open-file cache (each worker reads its own row groups)."""
        return {**self.__dict__, "_row_groups": None}

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, root: str, labels: bool = True, **storage_options: Any) -> ProbeSet:
        fs, base = fsspec.core.url_to_fs(root, **storage_options)
        if not fs.isdir(base):
            raise ProbeError(f"probe folder {root!r} does not exist or is not a folder")
        files = sorted(p for p in fs.find(base) if p.lower().endswith(IMAGE_EXTENSIONS))
        prefix = "" if "://" not in root else root.split("://", 1)[0] + "://"
        relative = [posixpath.relpath(p, base) for p in files]
        names = [posixpath.basename(posixpath.dirname(r)) or None for r in relative] if labels else [None] * len(files)
        classes = tuple(sorted({n for n in names if n})) or None
        index = {c: i for i, c in enumerate(classes or ())}
        images = [
            ProbeImage(rel, prefix + path, label=index.get(name) if name else None, label_name=name)
            for rel, path, name in zip(relative, files, names, strict=True)
        ]
        return cls._checked(posixpath.basename(base.rstrip("/")), "folder", root, images, classes, storage_options)

    @classmethod
    def from_parquet(
        cls,
        path: str,
        image_column: str = "image",
        id_column: str = "image_id",
        label_column: str | None = "label",
        label_name_column: str | None = "label_name",
        text_column: str | None = None,
        **storage_options: Any,
    ) -> ProbeSet:
        table = _read_table(path, storage_options, exclude=image_column)
        if image_column not in _schema_names(path, storage_options):
            raise ProbeError(f"{path!r} has no image-bytes column {image_column!r}; name it with image_column=")
        stem = posixpath.basename(path).rsplit(".", 1)[0]
        ids = table[id_column].to_pylist() if id_column in table.column_names else None
        images = [
            ProbeImage(
                str(ids[row]) if ids else f"{stem}/{row:08d}",
                row=row,
                label=_column(table, label_column, row),
                label_name=_column(table, label_name_column, row),
                texts=_texts(table, text_column, row),
            )
            for row in range(table.num_rows)
        ]
        classes = _classes(images)
        return cls._checked(stem, "parquet", path, images, classes, storage_options, image_column=image_column)

    @classmethod
    def from_manifest(
        cls,
        path: str,
        uri_column: str = "uri",
        id_column: str | None = None,
        label_column: str | None = None,
        label_name_column: str | None = None,
        text_column: str | None = None,
        **storage_options: Any,
    ) -> ProbeSet:
        table = _read_table(path, storage_options)
        if uri_column not in table.column_names:
            raise ProbeError(f"manifest {path!r} has no column {uri_column!r}; columns: {table.column_names}")
        uris = [str(u) for u in table[uri_column].to_pylist()]
        ids = [str(i) for i in table[id_column].to_pylist()] if id_column else uris
        images = [
            ProbeImage(
                ids[row],
                uris[row],
                row=row,
                label=_column(table, label_column, row),
                label_name=_column(table, label_name_column, row),
                texts=_texts(table, text_column, row),
            )
            for row in range(table.num_rows)
        ]
        stem = posixpath.basename(path).rsplit(".", 1)[0]
        return cls._checked(stem, "manifest", path, images, _classes(images), storage_options)

    @classmethod
    def _checked(cls, name, kind, source, images, classes, storage_options, **extra) -> ProbeSet:
        if not images:
            raise ProbeError(f"probe set {source!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        images = sorted(images, key=lambda im: im.image_id)
        for before, after in zip(images, images[1:], strict=False):
            if before.image_id == after.image_id:
                raise ProbeError(f"probe set {source!r} has the image id {before.image_id!r} twice; ids must be unique")
        return cls(name, kind, source, images, classes, storage_options=dict(storage_options), **extra)

    # -- selecting -----------------------------------------------------------------------------------
    def limit(self, n: int) -> ProbeSet:
        """The first ``n`` images in id order."""
        return self._with(self.images[:n])

    def sample(self, n: int, seed: int = 0) -> ProbeSet:
        """``n`` images drawn with ``seed`` (the same seed gives the same images), kept in id order."""
        if n > len(self.images):
            raise ProbeError(f"cannot sample {n} of {len(self.images)} probe images")
        chosen = sorted(random.Random(seed).sample(range(len(self.images)), n))
        return self._with([self.images[i] for i in chosen])

    def _with(self, images: list[ProbeImage]) -> ProbeSet:
        if not images:
            raise ProbeError(f"selecting from probe set {self.source!r} left no images")
        return ProbeSet(
            self.name, self.kind, self.source, images, self.classes, self.image_column, self.storage_options
        )

    def shards(self, size: int = DEFAULT_SHARD_SIZE) -> list[list[ProbeImage]]:
        """Fixed, contiguous shards in id order: shard ``i`` is the same images on every run."""
        return [self.images[i : i + size] for i in range(0, len(self.images), size)]

    def __len__(self) -> int:
        return len(self.images)

    def column(self, name: str) -> list[Any]:
        """The values of another column of a Parquet or manifest source (attributes, a split), one per image in
        ``images`` order."""
        if self.kind == "folder":
            raise ProbeError(f"probe folder {self.source!r} has no columns; a column {name!r} needs a Parquet or CSV probe set")
        names = _schema_names(self.source, self.storage_options) if not self.source.lower().endswith(".csv") else \
            _read_table(self.source, self.storage_options).column_names
        if name not in names:
            raise ProbeError(f"probe set {self.source!r} has no column {name!r}; columns: {[n for n in names if n != self.image_column]}")
        values = _read_table(self.source, self.storage_options, columns=[name])[name].to_pylist()
        return [values[im.row] for im in self.images if im.row is not None]

    # -- reading -------------------------------------------------------------------------------------
    def read_bytes(self, images: Sequence[ProbeImage]) -> list[bytes | Exception]:
        """The encoded bytes of each image, or the exception that prevented reading it."""
        if self.kind == "parquet":
            if self._row_groups is None:
                self._row_groups = _RowGroupReader(self.source, self.image_column, self.storage_options)
            out: list[bytes | Exception] = []
            for im in images:
                assert im.row is not None
                value = self._row_groups.value(im.row)
                if isinstance(value, dict):  # struct columns such as {"bytes": ..., "path": ...}
                    value = value.get("bytes")
                out.append(value if isinstance(value, bytes) else ProbeError(f"row {im.row} holds no image bytes"))
            return out
        results: list[bytes | Exception] = []
        for im in images:
            try:
                with fsspec.open(im.uri, "rb", **self.storage_options) as handle:
                    results.append(handle.read())
            except (OSError, ValueError) as err:
                results.append(err)
        return results

    @property
    def id(self) -> str:
        """Content hash of the ids, labels and image bytes, in id order (computed once)."""
        if self._id is None:
            digest = hashlib.sha256()
            for shard in self.shards(512):
                for im, data in zip(shard, self.read_bytes(shard), strict=True):
                    digest.update(f"{im.image_id}\0{im.label}\0{im.label_name}\0".encode())
                    digest.update(hashlib.sha256(data).digest() if isinstance(data, bytes) else b"unreadable")
            self._id = digest.hexdigest()[:16]
        return self._id


@dataclass
class DecodeResult:
    images: list[Image.Image]
    kept: list[ProbeImage]
    failed: list[tuple[str, str]]  # (image_id, reason)


def decode_images(
    probe: ProbeSet,
    images: Sequence[ProbeImage],
    failure_budget: float = DEFAULT_FAILURE_BUDGET,
    total: int | None = None,
    convert: Callable[[Image.Image], Image.Image] = lambda im: im.convert("RGB"),
) -> DecodeResult:
    """Decode a batch; unreadable or corrupt images are skipped and named.

    More failures than ``failure_budget`` of ``total`` (default: of this batch) is an error that names
    the first failures and how to raise the budget.
    """
    result = DecodeResult([], [], [])
    for im, data in zip(images, probe.read_bytes(images), strict=True):
        if isinstance(data, Exception):
            result.failed.append((im.image_id, f"unreadable: {data}"))
            continue
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                result.images.append(convert(opened))
            result.kept.append(im)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            result.failed.append((im.image_id, f"corrupt: {_ADDRESS.sub('', str(err))}"))
    allowed = failure_budget * (total or len(images))
    if len(result.failed) > allowed:
        shown = "; ".join(f"{i} ({why})" for i, why in result.failed[:5])
        raise ProbeError(
            f"{len(result.failed)} of {total or len(images)} probe images could not be decoded, over the budget of "
            f"{failure_budget:.2%}: {shown}. Fix or remove them, or raise the failure budget."
        )
    return result


def _read_table(path: str, storage_options: dict[str, Any], exclude: str | None = None, columns=None) -> pa.Table:
    """A CSV, or the wanted columns of a Parquet file (read from the file itself: other columns,
    such as the image bytes, are never loaded)."""
    try:
        with fsspec.open(path, "rb", **storage_options) as handle:
            if path.lower().endswith(".csv"):
                return pa_csv.read_csv(io.BytesIO(handle.read()))
            parquet = pq.ParquetFile(handle)
            wanted = columns or [c for c in parquet.schema_arrow.names if c != exclude]
            return parquet.read(columns=wanted)
    except FileNotFoundError:
        raise ProbeError(f"probe source {path!r} not found") from None


class _RowGroupReader:
    """Values of one column by row number, read a row group at a time (the last two kept).

    Shards are contiguous in id order, which in most files is close to row order, so a shard touches
    few row groups and a worker never loads the whole column of a large file.
    """

    def __init__(self, path: str, column: str, storage_options: dict[str, Any]):
        self.path, self.column, self.storage_options = path, column, storage_options
        with fsspec.open(path, "rb", **storage_options) as handle:
            metadata = pq.ParquetFile(handle).metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.cache: dict[int, pa.ChunkedArray] = {}

    def value(self, row: int) -> Any:
        group = bisect.bisect_right(self.starts, row) - 1
        if group not in self.cache:
            if len(self.cache) >= 2:
                self.cache.pop(next(iter(self.cache)))
            with fsspec.open(self.path, "rb", **self.storage_options) as handle:
                self.cache[group] = pq.ParquetFile(handle).read_row_group(group, columns=[self.column])[self.column]
        return self.cache[group][row - self.starts[group]].as_py()


def _schema_names(path: str, storage_options: dict[str, Any]) -> list[str]:
    with fsspec.open(path, "rb", **storage_options) as handle:
        return pq.read_schema(handle).names


def _column(table: pa.Table, name: str | None, row: int) -> Any:
    if not name or name not in table.column_names:
        return None
    return table[name][row].as_py()


def _texts(table: pa.Table, name: str | None, row: int) -> tuple[str, ...] | None:
    """A caption column holds one string or a list of strings per image."""
    if name is None:
        return None
    if name not in table.column_names:
        raise ProbeError(f"no caption column {name!r}; columns: {table.column_names}")
    value = table[name][row].as_py()
    if value is None:
        return None
    return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)


def _classes(images: list[ProbeImage]) -> tuple[str, ...] | None:
    named = {im.label: im.label_name for im in images if im.label is not None}
    if not named:
        return None
    return tuple(named.get(i) or str(i) for i in range(max(named) + 1))


def preprocess_batch(images: Sequence[Image.Image], transform: Callable[[Image.Image], Any]) -> Any:
    """``torch.stack([transform(im) for im in images])``, faster for the usual transforms.

    A ``Compose`` ending in ToTensor and Normalize runs its geometric head per image and its tail once on
    the stacked uint8 batch (``PixelFormat``): the same arithmetic, without a float tensor and a
    normalisation per image.
    """
    import torch

    from discover_ray.probe.pixels import split_preprocess

    split = split_preprocess(transform)
    pixels = split.to_uint8(images) if split is not None and images else None
    if pixels is not None:
        return split.to_tensor(pixels)
    return torch.stack([transform(image) for image in images])
