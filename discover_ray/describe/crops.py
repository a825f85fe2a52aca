"""Describe-and-Dissect's attention crops (methods.md §4.1), with the project's two fixes (§4.4, decision 5).

For a top-activating image and a conv neuron's feature map, DnD thresholds the map (Otsu), takes the bounding
boxes of its external contours and crops the image there, so that the captioner sees what the neuron looks at.
The reference does this on a 375×375 copy of the image; we follow it step by step, except for two fixes:

* The map is min–max normalised to 0..255 (``heatmap_to_uint8``). The reference casts ``map × 255`` to uint8
  without clamping, so post-ReLU values above 1 wrap around and the threshold is meaningless.
* The map is laid over the part of the image the model actually saw (``input_region``), not stretched over the
  whole image: after ImageNet's Resize(256) + CenterCrop(224) the map covers only the central 87.5 %, and
  stretching it moves every box outwards.

Pure numpy / PIL / OpenCV: nothing here imports ray, and torchvision is imported only to recognise the steps of
a preprocessing in ``input_region``.

Library behaviour this relies on (Pillow 13, OpenCV 5):

* ``Image.resize`` without ``resample`` uses BICUBIC (NEAREST for modes "1" and "P"); resizing to the image's
  own size returns an unchanged copy. Images are converted to RGB *before* resizing, so palette images are
  also resampled bicubically.
* Otsu on a map with only two grey levels puts the threshold at the lower one, so every pixel above it is
  foreground; on a constant non-zero map everything is foreground (the full-image rule then rejects it).
* ``cv2.boundingRect`` gives (x, y, w, h) with w, h counting pixels, so ``(x, y, x + w, y + h)`` is a box with
  exclusive ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "Crop",
    "Region",
    "attention_crops",
    "heatmap_to_uint8",
    "input_region",
    "iou",
]

Box = tuple[int, int, int, int]
Fractions = tuple[float, float, float, float]

FULL: Fractions = (0.0, 0.0, 1.0, 1.0)

# Steps by (module, qualified name) that are not torchvision subclasses but do not move pixels either (timm's).
_NON_GEOMETRIC_NAMES = frozenset({("timm.data.transforms", "MaybePILToTensor"), ("timm.data.transforms", "ToNumpy")})


@dataclass(frozen=True)
class Region:
    """The part of the original image that the model input shows, as fractions of its width and height.

    ``x0, y0, x1, y1`` are clipped to [0, 1]. ``view`` is the same rectangle unclipped: when a CenterCrop is
    larger than its input, torchvision pads, so the model input extends past the image (``view`` goes below 0
    or above 1) and the feature map's edge cells lie over padding; ``attention_crops`` uses ``view`` so the
    map keeps its true scale and the padded part falls off the canvas. ``exact`` is False when a step's
    geometry is unknown (a random crop, a flip, a Pad, a Lambda…): the region is then the full image, which is
    only a guess, and callers may want to warn or skip the crops.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    exact: bool = True
    view: Fractions | None = None

    def __post_init__(self) -> None:
        if self.view is None:
            object.__setattr__(self, "view", (self.x0, self.y0, self.x1, self.y1))

    @property
    def box(self) -> Fractions:
        """The clipped fractions as a tuple ``(x0, y0, x1, y1)``."""
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class Crop:
    """One attention crop: its box in the size×size image (x1, y1 exclusive) and the crop resized to size×size."""

    box: Box
    image: Image.Image


def input_region(steps: Sequence[Any] | Callable[..., Any], width: int, height: int) -> Region:
    """Where in a ``width``×``height`` image the model input comes from, following the geometric steps.

    ``steps`` is a list of transforms or a ``Compose`` (v1 or v2; nested ones are walked). Understood:
    ``Resize`` with an int or one-element size (shorter side, aspect kept with torchvision's int truncation and
    ``max_size``), a (h, w) size (stretch: the whole image), v2's ``size=None`` with ``max_size``, and
    ``CenterCrop`` (int or (h, w); torchvision's rounding of the offset and its padding when the crop is
    larger). Steps that only change values or types (ToTensor, Normalize, ConvertImageDtype, Grayscale, RGB,
    ToImage, ToDtype, timm's MaybeToTensor…) are skipped. Anything else — including subclasses of Resize or
    CenterCrop, which may behave differently — gives the full image with ``exact=False``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    w, h = int(width), int(height)
    vx0, vy0, vx1, vy1 = FULL
    kinds = _transform_kinds()
    for step in _flatten(steps, kinds["compose"]):
        if _moves_no_pixels(step, kinds["non_geometric"]):
            continue
        if type(step) in kinds["resize"]:
            w, h = _resized_size(w, h, step.size, getattr(step, "max_size", None))
        elif type(step) in kinds["center_crop"]:
            crop_h, crop_w = _pair(step.size)
            left, top = _center_crop_offset(w, crop_w), _center_crop_offset(h, crop_h)
            sx, sy = (vx1 - vx0) / w, (vy1 - vy0) / h
            vx0, vx1 = vx0 + left * sx, vx0 + (left + crop_w) * sx
            vy0, vy1 = vy0 + top * sy, vy0 + (top + crop_h) * sy
            w, h = crop_w, crop_h
        else:
            return Region(*FULL, exact=False)
    view = (vx0, vy0, vx1, vy1)
    x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in view)
    return Region(x0, y0, x1, y1, exact=True, view=view)


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray | None:
    """Min–max normalise a [h, w] map to uint8 0..255 (rounded); None when nothing stands out.

    The reference's raw ``uint8(map × 255)`` wraps values above 1 (methods.md §4.1); normalising per map keeps
    the ordering of the activations, which is all Otsu needs. NaN and ±inf entries are set to the finite
    minimum first (they carry no usable ordering). A constant map, or one with no finite value, gives None:
    there is no region to crop.
    """
    values = np.array(heatmap, dtype=np.float64)  # a copy: the caller's array is never touched
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {values.shape}")
    finite = np.isfinite(values)
    if not finite.any():
        return None
    low = values[finite].min()
    values[~finite] = low
    high = values.max()
    if not high > low:
        return None
    scaled = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``(x0, y0, x1, y1)`` with exclusive ends; 0 when both are empty."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = _area(a) + _area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def attention_crops(
    image: Image.Image,
    heatmap: np.ndarray,
    region: Region | Sequence[float] = FULL,
    *,
    size: int = 375,
    max_crops: int = 4,
    iou_max: float = 0.5,
    full_iou_max: float = 0.8,
) -> list[Crop]:
    """DnD's attention crops of ``image`` where the neuron's ``heatmap`` [h, w] is hot (methods.md §4.1).

    The image is resized to size×size; the normalised map is resized (bicubic, PIL's default) to the pixels of
    ``region`` in that image and pasted there on a black canvas, so the map sits over what the model saw (a
    ``Region`` contributes its unclipped ``view``; a plain tuple may also extend past [0, 1]). Otsu's threshold,
    external contours and their bounding boxes give the candidates, taken largest first (ties by top, then
    left). A box is kept iff its IoU with every kept box is ≤ ``iou_max`` and its IoU with the whole image is
    < ``full_iou_max`` (a crop of almost everything adds nothing); at most ``max_crops`` are kept. Each crop is
    cut from the size×size image and resized back to size×size. A flat map gives no crops. The inputs are
    never modified.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if max_crops < 0:
        raise ValueError(f"max_crops must be ≥ 0, got {max_crops}")
    view = _region_view(region)
    grey = heatmap_to_uint8(heatmap)
    if grey is None or max_crops == 0:
        return []

    picture = (image if image.mode == "RGB" else image.convert("RGB")).resize((size, size))
    left, top, right, bottom = (math.floor(v * size + 0.5) for v in view)
    placed = Image.fromarray(grey).resize((max(1, right - left), max(1, bottom - top)))
    canvas_image = Image.new("L", (size, size), 0)
    canvas_image.paste(placed, (left, top))  # PIL clips whatever falls outside the canvas
    canvas = np.asarray(canvas_image, dtype=np.uint8)

    _, binary = cv2.threshold(canvas, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if w > 0 and h > 0:
            boxes.append((int(x), int(y), int(x + w), int(y + h)))
    boxes.sort(key=lambda b: (-_area(b), b[1], b[0]))

    whole = (0, 0, size, size)
    kept: list[Box] = []
    for box in boxes:
        if iou(box, whole) >= full_iou_max or any(iou(box, other) > iou_max for other in kept):
            continue
        kept.append(box)
        if len(kept) == max_crops:
            break
    return [Crop(box, picture.crop(box).resize((size, size))) for box in kept]


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _region_view(region: Region | Sequence[float]) -> Fractions:
    """The rectangle the map is laid over, validated: a Region's unclipped view, or the tuple as given."""
    if isinstance(region, Region):
        assert region.view is not None  # set in __post_init__
        values = region.view
    else:
        values = tuple(float(v) for v in region)  # type: ignore[assignment]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"region must be four finite fractions (x0, y0, x1, y1), got {region!r}")
    x0, y0, x1, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"region must have x1 > x0 and y1 > y0, got {region!r}")
    return (x0, y0, x1, y1)


def _transform_kinds() -> dict[str, tuple[type, ...]]:
    """The torchvision classes ``input_region`` understands (v1 and v2), imported only when needed."""
    from torchvision import transforms as v1
    from torchvision.transforms import v2

    return {
        "compose": (v1.Compose, v2.Compose),
        "resize": (v1.Resize, v2.Resize),
        "center_crop": (v1.CenterCrop, v2.CenterCrop),
        "non_geometric": (
            v1.ToTensor, v1.PILToTensor, v1.ToPILImage, v1.Normalize, v1.ConvertImageDtype, v1.Grayscale,
            v2.ToTensor, v2.PILToTensor, v2.ToPILImage, v2.Normalize, v2.ConvertImageDtype, v2.Grayscale,
            v2.ToImage, v2.ToDtype, v2.ToPureTensor, v2.RGB, v2.Identity,
        ),
    }


def _moves_no_pixels(step: Any, non_geometric: tuple[type, ...]) -> bool:
    """Whether a step only changes values or types (subclasses included: timm's MaybeToTensor is a ToTensor)."""
    return isinstance(step, non_geometric) or (type(step).__module__, type(step).__qualname__) in _NON_GEOMETRIC_NAMES


def _flatten(steps: Any, compose: tuple[type, ...]) -> Iterable[Any]:
    """The steps in order, walking into Compose objects and nested lists."""
    if isinstance(steps, compose):
        steps = steps.transforms
    if isinstance(steps, (list, tuple)):
        for step in steps:
            yield from _flatten(step, compose)
    else:
        yield steps


def _pair(size: Any) -> tuple[int, int]:
    """A torchvision size (int, [n] or (h, w)) as (h, w)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    values = [int(v) for v in size]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _resized_size(w: int, h: int, size: Any, max_size: int | None) -> tuple[int, int]:
    """torchvision's ``_compute_resized_output_size``, returned as (w, h)."""
    if size is None:  # v2: only the longer side is bounded
        if max_size is None:
            raise ValueError("Resize(size=None) needs max_size")
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = int(max_size * short / long), int(max_size)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    if isinstance(size, (int, np.integer)) or len(size) == 1:
        requested = int(size) if isinstance(size, (int, np.integer)) else int(size[0])
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = requested, int(requested * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), int(max_size)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    return int(size[1]), int(size[0])


def _center_crop_offset(length: int, crop: int) -> int:
    """Where torchvision's CenterCrop starts along one axis, in input pixels (negative when it pads)."""
    if crop > length:  # padded by (crop - length) // 2 before, the rest after: the crop is the padded axis
        return -((crop - length) // 2)
    return int(round((length - crop) / 2.0))
