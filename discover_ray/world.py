"""A generated world whose concepts are known: coloured, patterned shapes with a caption per image.

Every image shows one shape on a noisy background and is fully described by five concept families:

=========== ===========================================
family      values
=========== ===========================================
colour      red, green, blue
shape       circle, square, triangle
pattern     plain, striped, dotted
size        small, large
background  dark, light
=========== ===========================================

The classification task is colour × shape (9 classes, "red circle", …); the caption names every family
("a small red striped circle on a dark background"), so the same images train a CLIP contrastively.
The generator is seeded: the same seed gives the same pixels everywhere. ``write_parquet`` stores a
world as a probe set / training set (PNG bytes, label, caption, one column per family).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = [
    "BACKGROUNDS", "COLOURS", "FAMILIES", "PATTERNS", "SHAPES", "SIZES", "WorldImages", "caption_bank", "caption_variants",
    "captions",
    "class_names", "concept_name", "concept_vocabulary", "draw_phrase", "family_concepts", "generate", "label_concepts",
    "parse_phrase",
    "truth_matrix", "write_parquet", "write_world", "zero_shot_accuracy",
]

COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("dark", "light")
FAMILIES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS), "shape": SHAPES, "pattern": PATTERNS, "size": SIZES, "background": BACKGROUNDS,
}


@dataclass(frozen=True)
class WorldImages:
    images: Tensor  # [N, 3, size, size], float in [0, 1]
    labels: Tensor  # [N] class index into ``class_names()`` (colour × shape)
    colours: Tensor  # [N] index into COLOURS
    shapes: Tensor  # [N] index into SHAPES
    patterns: Tensor  # [N] index into PATTERNS
    sizes: Tensor  # [N] index into SIZES
    backgrounds: Tensor  # [N] index into BACKGROUNDS

    @property
    def classes(self) -> tuple[str, ...]:
        return class_names()

    def family(self, name: str) -> Tensor:
        """The per-image value index of one concept family."""
        return {"colour": self.colours, "shape": self.shapes, "pattern": self.patterns, "size": self.sizes,
                "background": self.backgrounds}[name]

    def __len__(self) -> int:
        return len(self.labels)


ShapeImages = WorldImages  # the name of the first, colour × shape only, version of this world


def class_names() -> tuple[str, ...]:
    return tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)


def generate(n: int, seed: int = 0, size: int = 32) -> WorldImages:
    """``n`` images, classes balanced round-robin; every other family, position and noise drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(class_names())
    patterns = rng.integers(0, len(PATTERNS), n)
    sizes = rng.integers(0, len(SIZES), n)
    backgrounds = rng.integers(0, len(BACKGROUNDS), n)
    return _render(labels, patterns, sizes, backgrounds, rng, size)


#: words of the world's grammar that name no concept
_FUNCTION_WORDS = frozenset({"a", "an", "the", "on", "in", "with", "of", "and", "background", "shape", "image", "photo"})


def parse_phrase(phrase: str) -> dict[str, str] | None:
    """The family values a phrase of the world's grammar names ("a small red circle on a dark background" →
    size, colour, shape, background), or None when a word is outside the grammar or two values of one family
    contradict each other."""
    values: dict[str, str] = {}
    lookup = {value: family for family, vs in FAMILIES.items() for value in vs}
    words = phrase.lower().replace(",", " ").split()
    if not words:
        return None
    for word in words:
        if word in _FUNCTION_WORDS:
            continue
        stem = word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word
        family = lookup.get(stem)
        if family is None or values.get(family, stem) != stem:
            return None
        values[family] = stem
    return values or None


def draw_phrase(phrase: str, n: int, seed: int = 0, size: int = 32) -> WorldImages | None:
    """``n`` images that certainly show what ``phrase`` names (the families it fixes), every other family drawn
    from ``seed``; None for a phrase outside the world's grammar (a generator backend records it as such)."""
    values = parse_phrase(phrase)
    if values is None:
        return None
    rng = np.random.default_rng(seed)

    def family(name: str, options: tuple[str, ...]) -> np.ndarray:
        drawn = rng.integers(0, len(options), n)
        return np.full(n, options.index(values[name])) if name in values else drawn

    colours, shapes = family("colour", tuple(COLOURS)), family("shape", SHAPES)
    patterns, sizes = family("pattern", PATTERNS), family("size", SIZES)
    backgrounds = family("background", BACKGROUNDS)
    return _render(colours * len(SHAPES) + shapes, patterns, sizes, backgrounds, rng, size)


def _render(labels: np.ndarray, patterns: np.ndarray, sizes: np.ndarray, backgrounds: np.ndarray,
            rng: np.random.Generator, size: int) -> WorldImages:
    """Draws each image from its family values, positions and noise from ``rng``."""
    n = len(labels)
    pixels = np.empty((n, size, size, 3), dtype=np.uint8)
    colour_values = list(COLOURS.values())
    for i, label in enumerate(labels):
        colour, shape = divmod(int(label), len(SHAPES))
        low, high = ((25, 95) if BACKGROUNDS[backgrounds[i]] == "dark" else (165, 235))
        base = rng.integers(low, high, size=3)
        canvas = np.clip(base + rng.normal(0, 10, size=(size, size, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(canvas)
        scale = rng.uniform(0.17, 0.25) if SIZES[sizes[i]] == "small" else rng.uniform(0.32, 0.42)
        radius = scale * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        fill = np.clip(np.array(colour_values[colour]) + rng.normal(0, 15, 3), 0, 255)
        mask = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask), SHAPES[shape], cx, cy, radius)
        image.paste(tuple(int(v) for v in fill), mask=mask)
        if PATTERNS[patterns[i]] != "plain":
            marks = Image.new("L", (size, size), 0)
            _draw_pattern(ImageDraw.Draw(marks), PATTERNS[patterns[i]], size, rng)
            both = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(marks)))
            image.paste(tuple(int(v) for v in fill * 0.45), mask=both)
        pixels[i] = np.asarray(image)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return WorldImages(images, labels_t, labels_t // len(SHAPES), labels_t % len(SHAPES),
                       torch.from_numpy(np.asarray(patterns, dtype=np.int64)),
                       torch.from_numpy(np.asarray(sizes, dtype=np.int64)),
                       torch.from_numpy(np.asarray(backgrounds, dtype=np.int64)))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float) -> None:
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=255)


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, size: int, rng: np.random.Generator) -> None:
    period = max(4, size // 8)
    offset = int(rng.integers(0, period))
    if pattern == "striped":  # diagonal stripes
        for start in range(-size + offset, size, period):
            draw.line([(start, 0), (start + size, size)], fill=255, width=max(1, period // 2))
    else:  # a grid of dots
        dot = max(1, period // 4)
        for y in range(offset % period, size, period):
            for x in range(offset % period, size, period):
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=255)


def captions(data: WorldImages) -> list[str]:
    """"a small red striped circle on a dark background", one per image."""
    out = []
    for i in range(len(data)):
        out.append(
            f"a {SIZES[data.sizes[i]]} {list(COLOURS)[data.colours[i]]} {PATTERNS[data.patterns[i]]} "
            f"{SHAPES[data.shapes[i]]} on a {BACKGROUNDS[data.backgrounds[i]]} background"
        )
    return out


def concept_name(family: str, value: str) -> str:
    """How a family value reads as a concept ("red", "striped", "dark background")."""
    return f"{value} background" if family == "background" else value


def family_concepts(family: str) -> tuple[str, ...]:
    return tuple(concept_name(family, v) for v in FAMILIES[family])


def concept_vocabulary() -> tuple[str, ...]:
    """The world's concepts: the 9 classes, then every family value (the concept set for dissections)."""
    return class_names() + tuple(c for family in FAMILIES for c in family_concepts(family))


def caption_variants(data: WorldImages) -> list[list[str]]:
    """Several true captions per image, as COCO has five: the full sentence and shorter phrases around the
    image's class ("red circle", "a small red circle", "red circle on a dark background", …). Contrastive
    training draws one per step, so the CLIP learns to read the short concept texts that a dissection's
    concept set holds, not only full sentences. Every short variant names the class: captions that name only a
    colour repeat so often in a batch that the contrastive loss learns colour and little else."""
    full = captions(data)
    out = []
    for i in range(len(data)):
        v = {f: FAMILIES[f][int(data.family(f)[i])] for f in FAMILIES}
        name = f"{v['colour']} {v['shape']}"
        out.append([
            full[i], name, f"a {name}", f"a {v['size']} {name}", f"a {v['pattern']} {name}",
            f"{name} on a {v['background']} background", f"a {v['size']} {v['pattern']} {name}",
        ])
    return out


def truth_matrix(data: WorldImages) -> Tensor:
    """[N, len(concept_vocabulary())] 0/1: which concepts are true of each image."""
    names = concept_vocabulary()
    truth = torch.zeros(len(data), len(names))
    rows = torch.arange(len(data))
    truth[rows, data.labels] = 1
    for family in FAMILIES:
        truth[rows, names.index(family_concepts(family)[0]) + data.family(family)] = 1
    return truth


def label_concepts(data: WorldImages) -> tuple[tuple[str, ...], Tensor]:
    """Concept names and P[N, M] from the known truth: one-hot class, colour and shape (LE(Label) style)."""
    names = class_names() + tuple(COLOURS) + SHAPES
    keep = [concept_vocabulary().index(n) for n in names]
    return names, truth_matrix(data)[:, keep]


def write_parquet(path: str | Path, data: WorldImages) -> Path:
    """The world as a Parquet probe / training set: image (PNG bytes), image_id, label, label_name, caption
    and one column per concept family."""
    pixels = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    encoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    names = class_names()
    columns = {
        "image_id": pa.array([f"world/{i:06d}" for i in range(len(data))]),
        "image": pa.array(encoded, pa.binary()),
        "label": pa.array(data.labels.tolist(), pa.int64()),
        "label_name": pa.array([names[i] for i in data.labels.tolist()]),
        "caption": pa.array(captions(data)),
        "captions": pa.array(caption_variants(data), pa.list_(pa.string())),
    }
    for family, values in FAMILIES.items():
        columns[family] = pa.array([values[i] for i in data.family(family).tolist()])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=1024)
    return path


def write_folder(folder: str | Path, data: WorldImages, digits: int = 3) -> Path:
    """The world as a folder probe set: one PNG per image, ``{class}/{index}.png`` (the label is the folder)."""
    folder = Path(folder)
    names = class_names()
    pixels = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, data.labels.tolist(), strict=True)):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / names[label] / f"{i:0{digits}d}.png")
    return folder


def write_world(folder: str | Path, seed: int = 0, train: int = 6000, val: int = 900, probe: int = 900) -> Path:
    """``train`` / ``val`` / ``probe`` Parquet splits of the world (seeds ``seed·10 + 0/1/2``), its concept set
    ``concepts.txt`` and its caption bank ``captions.txt``; a split already written is kept, so the call is cheap
    and idempotent."""
    folder = Path(folder)
    for split, n, offset in (("train", train, 0), ("val", val, 1), ("probe", probe, 2)):
        path = folder / f"{split}.parquet"
        if not path.exists():
            write_parquet(folder / f".{split}.parquet.tmp", generate(n, seed=seed * 10 + offset)).rename(path)
    (folder / "concepts.txt").write_text("\n".join(concept_vocabulary()) + "\n")
    (folder / "captions.txt").write_text("\n".join(caption_bank()) + "\n")
    return folder


def caption_bank() -> tuple[str, ...]:
    """Every full caption the world's grammar makes (2·3·3·3·2 = 108): the bank a retrieval captioner picks from."""
    return tuple(f"a {size} {colour} {pattern} {shape} on a {background} background"
                 for size in SIZES for colour in COLOURS for pattern in PATTERNS for shape in SHAPES
                 for background in BACKGROUNDS)


def zero_shot_accuracy(encoder, data: WorldImages, batch_size: int = 256) -> dict[str, float]:
    """Zero-shot accuracy of a CLIP on held-out world images, per concept family and for the 9 classes:
    each image is assigned the family value whose concept text (``family_concepts``) it matches best.

    ``encoder`` is a :class:`discover_ray.encoders.clip.ClipEncoder` (anything with ``encode_images`` over
    preprocessed batches, ``encode_text`` and ``preprocess``).
    """
    from torchvision.transforms.functional import to_pil_image

    features = torch.cat([
        encoder.encode_images(torch.stack([encoder.preprocess(to_pil_image(im)) for im in data.images[s : s + batch_size]]))
        for s in range(0, len(data), batch_size)
    ])
    out = {}
    for family, truth in [("class", data.labels), *((f, data.family(f)) for f in FAMILIES)]:
        texts = class_names() if family == "class" else family_concepts(family)
        guess = (features @ encoder.encode_text(list(texts)).T).argmax(dim=1)
        out[family] = float((guess == truth).float().mean())
    return out
