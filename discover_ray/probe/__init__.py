"""Probe sets: the images a dissection shows to every model, with stable ids and optional labels.

Three sources: a folder of images (recursive; the label is the parent folder), Parquet with an image-bytes
column (like the CIFAR-10 files), and a Parquet or CSV manifest of image URIs (local paths or any fsspec
URI such as ``s3://``). Images are ordered by ``image_id``, so shards, ``limit`` and seeded ``sample`` are
deterministic. ``probe_id`` hashes every image's id, label and bytes: the same content gives the same
id wherever it lives (reading a remote set once to hash it is the price of that guarantee).

Bad input is bounded before it costs memory (``ImageLimits``): an image file over ``max_bytes`` is not read,
and an image whose header declares more than ``max_pixels`` is not decoded (a 136 KB PNG can declare 144
megapixels). Both are named as failed images, like corrupt ones. A read that fails for a passing reason
(throttling, a reset connection) is retried and, if it keeps failing, raised: it is never a failed image
(``probe.transient``).
"""

from __future__ import annotations

import bisect
import dataclasses
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
from discover_ray.probe.transient import retry_transient

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "DecodeResult", "ImageLimits",
           "ImageTooLarge", "ProbeError", "ProbeImage", "ProbeSet", "decode_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_SHARD_SIZE = 4096
DEFAULT_FAILURE_BUDGET = 0.001
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own Image.MAX_IMAGE_PIXELS default (1 GiB / 4 bytes / 3)
DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses in error messages: reasons must not vary by run
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageTooLarge(ProbeError):
    """A probe image over ``ImageLimits``: named as a failed image (``too large: ...``), like a corrupt one."""


@dataclass(frozen=True)
class ImageLimits:
    """How large one probe image may be; checked before it is read (bytes) and before it is decoded (pixels).

    ``max_pixels`` defaults to Pillow's own limit, about 89.5 megapixels (a 9459 x 9459 image; 268 MB as RGB):
    far above any photo a vision model is shown, and the size at which Pillow starts to warn, so Pillow's own
    check (a warning, then an error at twice that) never fires first for an image this accepts. A larger cap
    also raises Pillow's ``Image.MAX_IMAGE_PIXELS`` (never lowers it). ``max_bytes`` (64 MiB) is far above any
    ordinary encoded photo, and keeps a mislabelled video or archive from being read into memory.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ProbeError(f"image limits must be positive, got max_pixels={self.max_pixels}, "
                             f"max_bytes={self.max_bytes}")


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
    limits: ImageLimits = field(default_factory=ImageLimits)
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
        if ids is not None:
            _check_ids(path, ids, id_column, "id")
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
        raw_uris = table[uri_column].to_pylist()
        _check_ids(path, raw_uris, uri_column, "uri")
        uris = [str(u) for u in raw_uris]
        if id_column and id_column not in table.column_names:
            raise ProbeError(f"manifest {path!r} has no id column {id_column!r}; columns: {table.column_names}")
        if id_column:
            _check_ids(path, table[id_column].to_pylist(), id_column, "id", uris)
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
            self.name, self.kind, self.source, images, self.classes, self.image_column, self.storage_options,
            self.limits,
        )

    def capped(self, limits: ImageLimits) -> ProbeSet:
        """The same images under other ``limits`` (its id is computed anew: it names which images are usable)."""
        return dataclasses.replace(self, limits=limits, _id=None, _row_groups=None)

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
        """The encoded bytes of each image, or the permanent error that prevented reading it (not there, not
        allowed, over ``limits.max_bytes``). A transient error is retried, then raised as ``TransientReadError``:
        it says nothing about the image, so it must neither fail the image nor enter the probe id."""
        if self.kind == "parquet":
            if self._row_groups is None:
                self._row_groups = retry_transient(
                    lambda: _RowGroupReader(self.source, self.image_column, self.storage_options),
                    f"probe set {self.source!r}")
            rows = self._row_groups
            out: list[bytes | Exception] = []
            for im in images:
                assert im.row is not None
                value = retry_transient(lambda row=im.row: rows.value(row), f"row {im.row} of probe set {self.source!r}")
                if isinstance(value, dict):  # struct columns such as {"bytes": ..., "path": ...}
                    value = value.get("bytes")
                if not isinstance(value, bytes):
                    out.append(ProbeError(f"row {im.row} holds no image bytes"))
                elif len(value) > self.limits.max_bytes:
                    out.append(ImageTooLarge(_bytes_reason(len(value), self.limits.max_bytes)))
                else:
                    out.append(value)
            return out
        results: list[bytes | Exception] = []
        for im in images:
            try:
                results.append(retry_transient(
                    lambda uri=im.uri: _read_file(uri, self.storage_options, self.limits.max_bytes),
                    f"probe image {im.image_id!r} ({im.uri})"))
            except (OSError, ValueError) as err:  # permanent: TransientReadError is neither
                results.append(err)
        return results

    @property
    def id(self) -> str:
        """Content hash of the ids, labels and image bytes, in id order (computed once).

        An image over ``limits`` counts as ``too large`` instead of its bytes, so raising a limit that lets it
        in gives another id (the outputs change), while for the default limits and ordinary images the id is
        what it always was. A transient read error raises: it never enters the id."""
        if self._id is None:
            digest = hashlib.sha256()
            for shard in self.shards(512):
                for im, data in zip(shard, self.read_bytes(shard), strict=True):
                    digest.update(f"{im.image_id}\0{im.label}\0{im.label_name}\0".encode())
                    if isinstance(data, bytes) and not _declared_too_large(data, self.limits.max_pixels):
                        digest.update(hashlib.sha256(data).digest())
                    elif isinstance(data, (bytes, ImageTooLarge)):
                        digest.update(b"too large")
                    else:
                        digest.update(b"unreadable")
            self._id = digest.hexdigest()[:16]
        return self._id


@dataclass
class DecodeResult:
    images: list[Any]  # what ``convert`` made of each kept image (RGB PIL images by default)
    kept: list[ProbeImage]
    failed: list[tuple[str, str]]  # (image_id, reason)


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def decode_images(
    probe: ProbeSet,
    images: Sequence[ProbeImage],
    failure_budget: float = DEFAULT_FAILURE_BUDGET,
    total: int | None = None,
    convert: Callable[[Image.Image], Any] = _rgb,
    draft: Callable[[tuple[int, int]], tuple[int, int] | None] | None = None,
) -> DecodeResult:
    """Decode a batch; unreadable, corrupt or too large images (over ``probe.limits``) are skipped and named.

    ``convert`` runs on each image as soon as it is decoded, so a batch holds only its results: give it the
    geometric head of the model's preprocessing (``PixelFormat.apply``) and no image is kept at full
    resolution. ``draft`` maps a JPEG's size to the size to draft-decode it at (``PixelFormat.draft_size``;
    ``None``: whole). More failures than ``failure_budget`` of ``total`` (default: of this batch) is an error
    that names the first failures and how to raise the budget.
    """
    result = DecodeResult([], [], [])
    for im, data in zip(images, probe.read_bytes(images), strict=True):
        if isinstance(data, ImageTooLarge):
            result.failed.append((im.image_id, f"too large: {data}"))
            continue
        if isinstance(data, Exception):
            result.failed.append((im.image_id, f"unreadable: {data}"))
            continue
        try:
            with _open_image(data, probe.limits.max_pixels) as opened:
                target = draft(opened.size) if draft is not None and opened.format in ("JPEG", "MPO") else None
                if target is not None:
                    opened.draft("RGB", target)
                opened.load()
                result.images.append(convert(opened))
            result.kept.append(im)
        except ImageTooLarge as err:
            result.failed.append((im.image_id, f"too large: {err}"))
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


def _read_file(uri: str | None, storage_options: dict[str, Any], max_bytes: int) -> bytes:
    """A file's bytes, refused unread when the store says it is over ``max_bytes`` (and never more than
    ``max_bytes + 1`` read where it cannot say)."""
    assert uri is not None
    with fsspec.open(uri, "rb", **storage_options) as handle:
        size = getattr(handle, "size", None)  # fsspec's buffered files know it from opening (S3: the HEAD)
        if isinstance(size, int) and size > max_bytes:
            raise ImageTooLarge(_bytes_reason(size, max_bytes))
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(_bytes_reason(None, max_bytes))
    return data


def _bytes_reason(size: int | None, max_bytes: int) -> str:
    what = f"the file is {size:,} bytes" if size is not None else "the file is larger than that"
    return (f"{what}, over the cap of {max_bytes:,} bytes (probe.max_image_bytes); raise probe.max_image_bytes "
            "to read it")


def _open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image opened (its header read, nothing decoded); over ``max_pixels`` it is ``ImageTooLarge``.

    The size is checked here, before ``load()``: a few kilobytes of PNG can declare a 12000 x 12000 image, and
    decoding it would take hundreds of megabytes."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # else Pillow's own check would refuse what probe.max_pixels allows
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # over twice Pillow's limit, itself at least max_pixels
        found = _PILLOW_PIXELS.search(str(err))
        raise ImageTooLarge(_pixels_reason(None, int(found[1]) if found else None, max_pixels)) from None
    width, height = opened.size
    if width * height > max_pixels:
        opened.close()
        raise ImageTooLarge(_pixels_reason((width, height), width * height, max_pixels))
    return opened


def _declared_too_large(data: bytes, max_pixels: int) -> bool:
    """Whether an image's header declares more than ``max_pixels`` (a header that cannot be read: no)."""
    try:
        _open_image(data, max_pixels).close()
    except ImageTooLarge:
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        pass
    return False


def _pixels_reason(size: tuple[int, int] | None, pixels: int | None, max_pixels: int) -> str:
    what = f"{size[0]}x{size[1]} = {pixels:,} pixels" if size else f"{pixels:,} pixels" if pixels else "too many pixels"
    return (f"the image is {what}, over the cap of {max_pixels:,} (probe.max_pixels; it may be a decompression "
            "bomb); raise probe.max_pixels to decode it")


def _read_table(path: str, storage_options: dict[str, Any], exclude: str | None = None, columns=None) -> pa.Table:
    """A CSV, or the wanted columns of a Parquet file (read from the file itself: other columns,
    such as the image bytes, are never loaded)."""
    try:
        with fsspec.open(path, "rb", **storage_options) as handle:
            if path.lower().endswith(".csv"):
                # quoted values may hold newlines (ids, captions)
                return pa_csv.read_csv(io.BytesIO(handle.read()),
                                       parse_options=pa_csv.ParseOptions(newlines_in_values=True))
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


def _check_ids(path: str, values: list[Any], column: str, what: str, uris: list[str] | None = None) -> None:
    """Every image needs a usable id (or uri): not missing, not empty, not only whitespace."""
    for row, value in enumerate(values):
        if value is None or not str(value).strip():
            state = "no" if value is None else f"a blank ({value!r})"
            where = f" (uri {uris[row]!r})" if uris else ""
            fix = "fill it in or drop the row" if what == "uri" else "give every image a unique, non-blank id or drop the row"
            if uris:
                fix += ", or leave id_column unset to use each uri as its id"
            raise ProbeError(f"probe set {path!r}: row {row}{where} has {state} {what} in column {column!r}; {fix}")


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
