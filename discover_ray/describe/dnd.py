"""Describe-and-Dissect on a chunk of one layer's units, step by step (methods.md §4; the paper is TMLR 2025).

1. **Probe + crops**: each unit's top probe images, resized to ``crop_size``², plus up to ``crops`` attention
   crops of each (its heatmap on that image, mapped back through the preprocessing geometry); the pool is
   shown to the model again and its ``caption_images`` most activating images are kept.
2. **Captions → candidates**: every kept image is captioned; a summariser simplifies and summarises the
   captions into candidate concepts (without one, the captions are the candidates).
3. **Selection**: a generator draws ``images_per_candidate`` images of every candidate (seeded per unit and
   candidate); the unit's activations on them give TopK-Squared, CLIP embeddings give Image-Products
   (``describe.select``); the best candidates are the unit's labels.

Steps 1–2 (``propose``) run for a chunk of units together (one captioning batch, every unit's LLM calls in
flight at once); step 3's work items are (unit, candidate) pairs (``draw``: their images, then one pass of
the target and the scorer over all of them), so the DESCRIBE stage can spread them over its workers;
``choose`` orders each unit's candidates. ``describe_units`` runs the three in one process. A unit whose
backend calls fail is recorded as failed with the reason; the others go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from discover_ray.backends.base import BackendError
from discover_ray.backends.cached import CachedCaptioner, CachedGenerator, CachedSummarizer, GeneratedImage
from discover_ray.describe.crops import attention_crops
from discover_ray.describe.prompts import candidates_from, summarise_captions
from discover_ray.describe.select import select_candidates

__all__ = ["Captioned", "CandidateResult", "DescribeSettings", "ImageScorer", "TargetLayer", "UnitDescription",
           "describe_units", "seed_for"]


class TargetLayer(Protocol):
    """The target model at one layer: pooled activations [n, K] of images, and its spatial maps [n, k, h, w] of
    some units (None when the layer has no spatial map, e.g. a linear layer: then there are no crops)."""

    def region_of(self, width: int, height: int) -> Any:
        """The part of a width × height image the model's input shows (``describe.crops.input_region``)."""

    def activations(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def heatmaps(self, images: Sequence[Image.Image], units: Sequence[int]) -> np.ndarray | None: ...


#: CLIP image embeddings [n, d], L2-normalised (Image-Products)
ImageScorer = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class DescribeSettings:
    top_images: int = 10
    crops: int = 4
    crop_size: int = 375
    caption_images: int = 10
    summaries: int = 5
    images_per_candidate: int = 10
    beta: int = 5
    top_generated: int = 10
    temperature: float = 0.3
    labels: int = 3
    concurrency: int = 8


@dataclass
class Captioned:
    image_id: str
    box: tuple[int, int, int, int] | None  # the crop in the crop_size² image; None: the whole image
    activation: float
    caption: str


@dataclass
class CandidateResult:
    concept: str
    images: list[str]  # cache entries of its generated images ("backend/id")
    drawn: bool
    topk_score: float
    ordinal: int
    image_products: float
    score: float


@dataclass
class UnitDescription:
    unit: int
    status: str = "ok"  # ok | failed | dead
    error: str | None = None
    captioned: list[Captioned] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    candidates: list[CandidateResult] = field(default_factory=list)  # best first

    def fail(self, status: str, error: str) -> UnitDescription:
        self.status, self.error = status, error
        return self


def seed_for(*parts: object) -> int:
    """A 31-bit seed from any parts (run seed, model, layer, unit, candidate): stable across processes."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Proposal:
    """Steps 1–2 for one unit: its description so far (captions, summaries; or why it failed) and its candidate
    concepts, with the CLIP embeddings of the images it captioned (Image-Products reads them)."""

    description: UnitDescription
    candidates: list[str] = field(default_factory=list)
    captioned_embeddings: np.ndarray | None = None  # [captioned, d]


@dataclass
class Drawing:
    """Step 3 for one (unit, candidate): its generated images (cache references; None when the generator cannot
    draw it), the unit's activations on them [Q] and their CLIP embeddings [Q, d]; ``error`` when it failed."""

    unit: int
    concept: str
    refs: list[str] | None
    activations: np.ndarray
    embeddings: np.ndarray
    error: str | None = None


def describe_units(units: Sequence[int], top: dict[int, list[str]], images: dict[str, Image.Image],
                   target: TargetLayer, captioner: CachedCaptioner, summarizer: CachedSummarizer | None,
                   generator: CachedGenerator, scorer: ImageScorer, settings: DescribeSettings,
                   seed_parts: tuple[object, ...], timings: dict[str, float] | None = None) -> list[UnitDescription]:
    """Describe every unit of ``units`` (``top[u]``: its top probe image ids, best first, [] when it never
    activates; ``images``: those images decoded): ``propose``, ``draw`` every (unit, candidate), ``choose``.
    ``seed_parts`` name the run and layer in every seed; ``timings`` (step → seconds) is added to."""
    proposals = propose(units, top, images, target, captioner, summarizer, scorer, settings, seed_parts, timings)
    drawings = draw(candidate_pairs(proposals), target, generator, scorer, settings, seed_parts, timings)
    by_unit: dict[int, list[Drawing]] = {}
    for d in drawings:
        by_unit.setdefault(d.unit, []).append(d)
    return [choose(p, by_unit.get(p.description.unit, []), settings) for p in proposals]


def propose(units: Sequence[int], top: dict[int, list[str]], images: dict[str, Image.Image], target: TargetLayer,
            captioner: CachedCaptioner, summarizer: CachedSummarizer | None, scorer: ImageScorer,
            settings: DescribeSettings, seed_parts: tuple[object, ...],
            timings: dict[str, float] | None = None) -> list[Proposal]:
    """Steps 1–2 for a chunk of units: pools with crops, one captioning batch, the summaries of every unit
    (LLM calls in flight together), the candidates, and one scorer pass over every captioned image."""
    timings = timings if timings is not None else {}
    out = {u: UnitDescription(u) for u in units}
    with _timed(timings, "crops"):
        pools = _pools([u for u in units if _alive(out[u], top[u])], top, images, target, settings)
    with _timed(timings, "caption"):
        _caption(pools, out, captioner)
    with _timed(timings, "summarise"):
        texts = _summaries(pools, out, summarizer, settings, seed_parts)
    proposals = {u: Proposal(out[u]) for u in units}
    for u, found in texts.items():
        proposals[u].candidates = candidates_from(found)
        if out[u].status == "ok" and not proposals[u].candidates:
            out[u].fail("failed", "no candidate concept: every caption and summary was empty")
    live = [u for u in units if out[u].status == "ok"]
    with _timed(timings, "select"):
        flat = [item[2] for u in live for item in pools[u].items]
        emb = scorer(flat) if flat else np.zeros((0, 1), np.float32)
        at = 0
        for u in live:
            proposals[u].captioned_embeddings = emb[at : at + len(pools[u].items)]
            at += len(pools[u].items)
    return [proposals[u] for u in units]


def candidate_pairs(proposals: Sequence[Proposal]) -> list[tuple[int, str]]:
    """Every (unit, candidate) of the units still being described: the work items of step 3."""
    return [(p.description.unit, c) for p in proposals if p.description.status == "ok" for c in p.candidates]


def draw(pairs: Sequence[tuple[int, str]], target: TargetLayer, generator: CachedGenerator, scorer: ImageScorer,
         settings: DescribeSettings, seed_parts: tuple[object, ...],
         timings: dict[str, float] | None = None) -> list[Drawing]:
    """Step 3 for (unit, candidate) pairs: ``images_per_candidate`` images of each, seeded per pair, then one
    target pass and one scorer pass over all of them. A generator failure is that pair's ``error``."""
    timings = timings if timings is not None else {}
    found: list[tuple[int, str, list[GeneratedImage] | None, str | None]] = []
    with _timed(timings, "generate"):
        for unit, concept in pairs:
            base = seed_for(*seed_parts, "generate", unit, concept)
            seeds = [(base + i) & 0x7FFFFFFF for i in range(settings.images_per_candidate)]
            try:
                found.append((unit, concept, generator.generate(concept, seeds), None))
            except BackendError as err:
                found.append((unit, concept, None, str(err)))
    with _timed(timings, "select"):
        flat = [g.image for _, _, drawn, _ in found for g in (drawn or [])]
        acts = target.activations(flat) if flat else np.zeros((0, 0), np.float32)
        emb = scorer(flat) if flat else np.zeros((0, 1), np.float32)
    out, at = [], 0
    for unit, concept, drawn, error in found:
        n = len(drawn or [])
        out.append(Drawing(unit, concept, None if drawn is None else [f"{g.key.backend}/{g.key.id}" for g in drawn],
                           acts[at : at + n, unit] if n else np.zeros(0, np.float32),
                           emb[at : at + n] if n else np.zeros((0, emb.shape[1]), np.float32), error))
        at += n
    return out


def choose(proposal: Proposal, drawings: Sequence[Drawing], settings: DescribeSettings) -> UnitDescription:
    """The unit's candidates ordered by TopK-Squared × Image-Products (``describe.select``), best first."""
    unit = proposal.description
    if unit.status != "ok":
        return unit
    failed = [d for d in drawings if d.error]
    if failed:
        return unit.fail("failed", f"generating: {failed[0].error}")
    mine = {d.concept: d for d in drawings}
    missing = [c for c in proposal.candidates if c not in mine]
    if missing:
        return unit.fail("failed", f"generating: no images were drawn for {missing[:3]}")
    ordered = [mine[c] for c in proposal.candidates]
    if not any(d.refs for d in ordered):
        return unit.fail("failed", "the generator drew no candidate: every candidate is outside what it can draw")
    owner = np.concatenate([np.full(len(d.activations), c) for c, d in enumerate(ordered)]).astype(np.int64)
    top_emb = proposal.captioned_embeddings
    assert top_emb is not None
    chosen = select_candidates(np.concatenate([d.activations for d in ordered]), owner, len(ordered), top_emb,
                               np.concatenate([d.embeddings for d in ordered if len(d.embeddings)]),
                               beta=settings.beta, top=settings.top_generated)
    unit.candidates = [CandidateResult(ordered[c].concept, ordered[c].refs or [], bool(chosen.drawn[c]),
                                       float(chosen.topk_score[c]), int(chosen.ordinal[c]),
                                       float(chosen.image_products[c]), float(chosen.score[c]))
                       for c in chosen.order]
    return unit


@contextlib.contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - began


def _alive(unit: UnitDescription, top: list[str]) -> bool:
    if not top:
        unit.fail("dead", "no activating image: the unit's activation is constant over the probe set")
        return False
    return True


@dataclass
class _Pool:
    items: list[tuple[str, tuple[int, int, int, int] | None, Image.Image, float]]  # id, box, image, activation


def _pools(units: list[int], top: dict[int, list[str]], images: dict[str, Image.Image], target: TargetLayer,
           settings: DescribeSettings) -> dict[int, _Pool]:
    """Each unit's originals plus attention crops, re-ranked by the unit's activation, top ``caption_images``."""
    size = (settings.crop_size, settings.crop_size)
    ids = sorted({i for u in units for i in top[u][: settings.top_images] if i in images})
    maps = target.heatmaps([images[i] for i in ids], units) if ids and settings.crops > 0 else None
    row = {i: r for r, i in enumerate(ids)}
    entries: dict[int, list[tuple[str, tuple[int, int, int, int] | None, Image.Image]]] = {}
    for k, u in enumerate(units):
        entries[u] = []
        for image_id in top[u][: settings.top_images]:
            if image_id not in images:
                continue
            original = images[image_id]
            entries[u].append((image_id, None, original.resize(size)))
            if maps is not None:
                for crop in attention_crops(original, maps[row[image_id], k], target.region_of(*original.size),
                                            size=settings.crop_size, max_crops=settings.crops):
                    entries[u].append((image_id, crop.box, crop.image))
    flat = [e[2] for u in units for e in entries[u]]
    acts = target.activations(flat) if flat else np.zeros((0, 0))  # one pass over every unit's pool
    pools: dict[int, _Pool] = {}
    start = 0
    for u in units:
        mine = acts[start : start + len(entries[u]), u] if entries[u] else np.zeros(0)
        start += len(entries[u])
        order = np.argsort(-mine, kind="stable")[: settings.caption_images]
        pools[u] = _Pool([(*entries[u][i], float(mine[i])) for i in order])
    return pools


def _caption(pools: dict[int, _Pool], out: dict[int, UnitDescription], captioner: CachedCaptioner) -> None:
    """Caption every pooled image in one batch; on a failure, unit by unit, so only the failing units fail."""
    units = list(pools)
    flat = [item[2] for u in units for item in pools[u].items]
    try:
        captions = captioner.caption(flat)
        by_unit, start = {}, 0
        for u in units:
            by_unit[u] = captions[start : start + len(pools[u].items)]
            start += len(pools[u].items)
    except BackendError:
        by_unit = {}
        for u in units:
            try:
                by_unit[u] = captioner.caption([item[2] for item in pools[u].items])
            except BackendError as err:
                out[u].fail("failed", f"captioning: {err}")
    for u, captions in by_unit.items():
        out[u].captioned = [Captioned(i, box, act, text.strip()) for (i, box, _, act), text in
                            zip(pools[u].items, captions, strict=True)]
        if not any(c.caption for c in out[u].captioned):
            out[u].fail("failed", "every caption was empty")


def _summaries(pools: dict[int, _Pool], out: dict[int, UnitDescription], summarizer: CachedSummarizer | None,
               settings: DescribeSettings, seed_parts: tuple[object, ...]) -> dict[int, list[str]]:
    """unit → its summaries (or, without summariser, its captions); LLM calls of all units run concurrently."""
    live = [u for u in pools if out[u].status == "ok"]
    if summarizer is None:
        return {u: [c.caption for c in out[u].captioned] for u in live}

    def one(u: int) -> tuple[int, list[str] | BackendError]:
        unit_seed = seed_for(*seed_parts, "summarise", u)

        def chat(messages: list[dict[str, str]], seed: int) -> str:
            return summarizer.chat(messages, temperature=settings.temperature, seed=seed)

        try:
            _, replies = summarise_captions(chat, [c.caption for c in out[u].captioned], summaries=settings.summaries,
                                            rng=np.random.default_rng(unit_seed), seed=seed_for(*seed_parts[:1], "llm"))
            return u, replies
        except BackendError as err:
            return u, err

    found: dict[int, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        for u, result in pool.map(one, live):
            if isinstance(result, BackendError):
                out[u].fail("failed", f"summarising: {result}")
            else:
                out[u].summaries = result
                found[u] = result
    return found
