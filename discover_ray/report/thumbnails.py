"""Probe images as small PNG files for the report, read back from the probe set a run recorded.

The probe set is opened from the run's resolved config and must still hash to the run's probe id:
thumbnails of other images than those dissected would mislabel every card.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from discover_ray.config import ProbeConfig
from discover_ray.config_files import expand_env
from discover_ray.errors import DiscoverError
from discover_ray.probe import ProbeSet
from discover_ray.runs import RunRecord

__all__ = ["ProbeMismatch", "Thumbnails", "open_run_probe"]

MAX_SIDE = 128  # larger images are shrunk; small ones (CIFAR's 32 px) stay as they are and scale in CSS


class ProbeMismatch(DiscoverError, ValueError):
    """The probe set named in a run's record no longer holds the images that were dissected."""


def open_run_probe(run: RunRecord) -> ProbeSet:
    """The run's probe set, opened from its recorded config (``${VAR}`` expanded here) and checked against
    its recorded id."""
    try:
        config = ProbeConfig.model_validate(expand_env(run.probe.config))
        probe = config.open()
    except (OSError, ValueError) as err:
        raise ProbeMismatch(f"the probe set {run.probe.source!r} of run {run.run_id} cannot be opened: {err}") from err
    if probe.id != run.probe.id:
        raise ProbeMismatch(
            f"the probe set {config.source!r} has changed since run {run.run_id} (id {probe.id}, the run "
            f"recorded {run.probe.id}); restore it or re-run the dissection"
        )
    return probe


class Thumbnails:
    """Writes each requested image once, as ``img/<hash>.png`` under the report folder."""

    def __init__(self, probe: ProbeSet, folder: Path):
        self.probe, self.folder = probe, folder
        self.index = {im.image_id: im for im in probe.images}
        self.written: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def file_name(image_id: str) -> str:
        return hashlib.sha1(image_id.encode()).hexdigest()[:16] + ".png"

    def label(self, image_id: str) -> str | None:
        image = self.index.get(image_id)
        return image.label_name if image else None

    def ensure(self, image_ids: Iterable[str]) -> None:
        """Writes the images not written yet; unreadable ones are remembered, not raised."""
        wanted = [self.index[i] for i in dict.fromkeys(image_ids) if i not in self.written and i not in self.failed]
        for start in range(0, len(wanted), 256):
            chunk = wanted[start : start + 256]
            for image, data in zip(chunk, self.probe.read_bytes(chunk), strict=True):
                if isinstance(data, Exception):
                    self.failed[image.image_id] = str(data)
                    continue
                try:
                    with Image.open(io.BytesIO(data)) as opened:
                        picture = opened.convert("RGB")
                except (OSError, ValueError) as err:
                    self.failed[image.image_id] = str(err)
                    continue
                picture.thumbnail((MAX_SIDE, MAX_SIDE))
                name = self.file_name(image.image_id)
                picture.save(self.folder / name, format="PNG", optimize=False)
                self.written[image.image_id] = name

    def crop(self, image_id: str, box: tuple[int, int, int, int] | list[int], size: int) -> str | None:
        """A crop of a probe image as Describe-and-Dissect captioned it (``box`` in the image resized to
        ``size``²), written once; relative to the report root, or None when the image cannot be read."""
        name = hashlib.sha1(f"{image_id}\0{tuple(box)}\0{size}".encode()).hexdigest()[:16] + ".png"
        if not (self.folder / name).exists():
            image = self.index.get(image_id)
            data = self.probe.read_bytes([image])[0] if image is not None else ValueError("not in the probe set")
            if isinstance(data, Exception):
                return None
            try:
                with Image.open(io.BytesIO(data)) as opened:
                    picture = opened.convert("RGB").resize((size, size)).crop(tuple(box))
            except (OSError, ValueError):
                return None
            picture.thumbnail((MAX_SIDE, MAX_SIDE))
            picture.save(self.folder / name, format="PNG", optimize=False)
        return f"img/{name}"

    def generated(self, ref: str, data: bytes | None) -> str | None:
        """A generated image (PNG bytes from the call cache, named by its cache reference), written once."""
        if not data:
            return None
        name = "gen-" + hashlib.sha1(ref.encode()).hexdigest()[:16] + ".png"
        if not (self.folder / name).exists():
            with Image.open(io.BytesIO(data)) as opened:
                picture = opened.convert("RGB")
            picture.thumbnail((MAX_SIDE, MAX_SIDE))
            picture.save(self.folder / name, format="PNG", optimize=False)
        return f"img/{name}"

    def path(self, image_id: str) -> str | None:
        """Relative to the report root, or None for an image that could not be read."""
        name = self.written.get(image_id)
        return f"img/{name}" if name else None
