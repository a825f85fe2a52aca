"""Describe-and-Dissect as a method: open-vocabulary descriptions of neurons, without a concept set.

Two rounds of work items. First the layer's chosen units in chunks (``unit_chunk`` per task): each opens
the probe set, decodes its units' top images, and runs ``describe.propose`` (crops, captions, summaries,
candidates). Then every (unit, candidate) pair, in chunks of ``draw_chunk``: ``describe.draw`` (its images,
the target's activations on them, their CLIP embeddings). ``assemble`` chooses each unit's labels. Tasks
rebuild the target at the layer and the run's backends once per worker process. Every backend call goes
through the run's call cache, so a re-run makes no call. Units whose calls fail are recorded as failed; more than ``failure_budget`` of
the chosen units failing fails the layer (the cached calls stay, so a re-run only makes the missing ones).
Within the budget the layer's descriptions are committed with the failed units marked; ``retry: 1`` (2, …)
describes them again under a new key, every call that succeeded answered from the cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from discover_ray.config_files import Strict
from discover_ray.errors import ConfigError, DiscoverError
from discover_ray.methods.base import LayerInputs, Method, MethodOutput
from discover_ray.methods.registry import register_method
from discover_ray.schema import description_table, unit_names

__all__ = ["DescribeAndDissect", "DescribeAndDissectParams", "DescribeFailed", "parse_units"]

_RANGE = re.compile(r"^\s*(\d+)\s*(?:(?:\.\.|-)\s*(\d+))?\s*$")


class DescribeFailed(DiscoverError, RuntimeError):
    """More units failed than the failure budget allows."""


def parse_units(value: str | list[int], units: int) -> list[int]:
    """``all``, a list of unit indices, or ranges like ``"0..19, 30"`` (inclusive) → sorted unit indices."""
    if value == "all":
        return list(range(units))
    picked: set[int] = set()
    items = value if isinstance(value, list) else str(value).split(",")
    for item in items:
        if isinstance(item, int):
            picked.add(item)
            continue
        match = _RANGE.match(item)
        if not match:
            raise ConfigError(f"describe_and_dissect.units: {item!r} is not a unit or a range like 0..19")
        first, last = int(match[1]), int(match[2] or match[1])
        picked.update(range(first, last + 1))
    bad = sorted(u for u in picked if not 0 <= u < units)
    if bad:
        raise ConfigError(f"describe_and_dissect.units: {bad[:5]} are outside the layer's {units} units (0..{units - 1})")
    return sorted(picked)


class DescribeAndDissectParams(Strict):
    """methods.md §4 defaults (top images 10, crops ≤ 4, N = 5 summaries, Q = 10 images, β = 5, t = 10)."""

    layers: list[str] | None = Field(None, description="the recorded layers to describe (default: every one)")
    units: str | list[int] = Field("all", description="all, a list of units, or ranges like '0..19, 30'")
    top_images: int = Field(10, ge=1)
    crops: int = Field(4, ge=0, description="attention crops per top image at most (0: none)")
    crop_size: int = Field(375, ge=8)
    caption_images: int = Field(10, ge=1, description="most activating pool images captioned")
    summaries: int = Field(5, ge=1)
    images_per_candidate: int = Field(10, ge=1)
    beta: int = Field(5, ge=1)
    top_generated: int = Field(10, ge=1)
    temperature: float = Field(0.3, ge=0)
    scorer: str | None = Field(None, description="the CLIP concept source whose image tower scores Image-Products "
                               "(default: the run's first CLIP source)")
    unit_chunk: int = Field(16, ge=1, description="units per task of the first round (captions, summaries)")
    draw_chunk: int = Field(32, ge=1, description="(unit, candidate) pairs per task of the second round (images)")
    concurrency: int = Field(8, ge=1, description="LLM calls in flight per task")
    failure_budget: float = Field(0.1, ge=0, le=1, description="fraction of the chosen units that may fail")
    retry: int = Field(0, ge=0, description="raise it to describe again units that failed (a committed description "
                       "is never rewritten; every call that succeeded comes from the cache)")

    @field_validator("units")
    @classmethod
    def _units(cls, value: str | list[int]) -> str | list[int]:
        if isinstance(value, str) and value != "all":
            parse_units(value, 1 << 30)
        return value


@dataclass(frozen=True)
class UnitChunk:
    """First-round work: some units of the layer."""

    units: tuple[int, ...]
    calls: int | None  # this chunk's share of the run's call budget


@dataclass(frozen=True)
class DrawChunk:
    """Second-round work: some (unit, candidate) pairs."""

    pairs: tuple[tuple[int, str], ...]
    calls: int | None


@register_method
class DescribeAndDissect(Method):
    name: ClassVar[str] = "describe_and_dissect"
    Params = DescribeAndDissectParams
    needs = frozenset({"activations", "top_images", "image_bytes", "backends", "model"})
    writes = "descriptions"
    per_concept_source = False

    def layers(self, params: Any) -> list[str] | None:
        return params.layers

    def validate(self, inputs: LayerInputs, params: Any) -> None:
        if inputs.target is None or inputs.backends is None or inputs.scorer is None:
            raise ConfigError(f"{inputs.model}/{inputs.layer}: describe_and_dissect needs the target model, the run's "
                              "backends and a CLIP scorer")
        parse_units(params.units, inputs.units)

    def tasks(self, inputs: LayerInputs, params: Any) -> list[UnitChunk]:
        chosen = parse_units(params.units, inputs.units)
        calls = inputs.extra.get("calls")
        chunks = [tuple(chosen[s : s + params.unit_chunk]) for s in range(0, len(chosen), params.unit_chunk)]
        return [UnitChunk(c, None if calls is None else int(calls * len(c) // max(1, len(chosen)))) for c in chunks]

    def follow_up(self, results: list[Any], inputs: LayerInputs, params: Any) -> list[DrawChunk]:
        if any("drawings" in r for r in results):
            return []
        from discover_ray.describe import candidate_pairs

        pairs = candidate_pairs([p for r in results for p in r["proposals"]])
        budget = inputs.extra.get("calls")
        left = None if budget is None else max(0, budget - sum(r["calls"] for r in results))
        chunks = [tuple(pairs[s : s + params.draw_chunk]) for s in range(0, len(pairs), params.draw_chunk)]
        return [DrawChunk(c, None if left is None else int(left * len(c) // max(1, len(pairs)))) for c in chunks]

    def run(self, task: UnitChunk | DrawChunk, inputs: LayerInputs, params: Any) -> dict[str, Any]:
        from discover_ray.backends.limits import CallBudget
        from discover_ray.describe import draw, propose
        from discover_ray.describe.scorer import clip_scorer

        budget = CallBudget(task.calls) if task.calls is not None else None
        backends = inputs.backends.build(budget)
        settings = _settings(params)
        seed_parts = (inputs.settings.seed, inputs.model, inputs.layer)
        timings: dict[str, float] = {}
        scorer, target = clip_scorer(inputs.scorer), inputs.target.probe()
        if isinstance(task, DrawChunk):
            found: dict[str, Any] = {"drawings": draw(list(task.pairs), target, backends.generator, scorer, settings,
                                                      seed_parts, timings)}
        else:
            top = _top_images(inputs.activations, inputs.image_ids, task.units, params.top_images)
            images = _decode(inputs.probe, sorted({i for ids in top.values() for i in ids}))
            found = {"proposals": propose(list(task.units), top, images, target, backends.captioner,
                                          backends.summarizer, scorer, settings, seed_parts, timings)}
        stats = backends.cache.stats
        return {**found, "hits": stats.hits, "calls": stats.misses, "timings": timings,
                "backends": backends.identities()}

    def assemble(self, results: list[Any], inputs: LayerInputs, params: Any) -> MethodOutput:
        from discover_ray.describe import choose

        drawings: dict[int, list[Any]] = {}
        for r in results:
            for d in r.get("drawings", []):
                drawings.setdefault(d.unit, []).append(d)
        settings = _settings(params)
        described = [choose(p, drawings.get(p.description.unit, []), settings) for r in results
                     for p in r.get("proposals", [])]
        names = unit_names(inputs.units, inputs.block_size)
        failed = [d for d in described if d.status == "failed"]
        if described and len(failed) > params.failure_budget * len(described):
            shown = "; ".join(f"{names[d.unit]}: {d.error}" for d in failed[:3])
            raise DescribeFailed(
                f"{inputs.model}/{inputs.layer}: {len(failed)} of {len(described)} units failed, more than the failure "
                f"budget ({params.failure_budget:.0%}): {shown}; fix the backend (or raise "
                "reduce.params.describe_and_dissect.failure_budget) and re-run: cached calls are kept")
        table = description_table([names[d.unit] for d in described], described, inputs.block_size)
        timings: dict[str, float] = {}
        for r in results:
            for step, seconds in r["timings"].items():
                timings[step] = timings.get(step, 0.0) + seconds
        calls, hits = sum(r["calls"] for r in results), sum(r["hits"] for r in results)
        marker = {"described": sum(d.status == "ok" for d in described), "failed": len(failed),
                  "dead": sum(d.status == "dead" for d in described), "calls": calls, "cache_hits": hits,
                  "hit_rate": hits / (hits + calls) if hits + calls else None,
                  "seconds": {k: round(v, 3) for k, v in timings.items()},
                  "backends": {k: v for r in results for k, v in r["backends"].items()},
                  "failures": {names[d.unit]: d.error for d in failed[:20]}}
        return MethodOutput(table, marker)


def _settings(params: Any) -> Any:
    from discover_ray.describe import DescribeSettings

    return DescribeSettings(**{f: getattr(params, f) for f in DescribeSettings.__dataclass_fields__ if hasattr(params, f)})


def _top_images(activations: np.ndarray, image_ids: list[str], units: tuple[int, ...], k: int) -> dict[int, list[str]]:
    """Each unit's ``k`` most activating probe images, best first (ties: probe order); none for a constant unit."""
    out: dict[int, list[str]] = {}
    for u in units:
        column = activations[:, u]
        if not len(column) or float(column.max()) == float(column.min()):
            out[u] = []
            continue
        order = np.argsort(-column, kind="stable")[:k]
        out[u] = [image_ids[i] for i in order]
    return out


def _decode(handle: Any, image_ids: list[str]) -> dict[str, Any]:
    """The probe images named, decoded (RGB); an unreadable one is left out (its unit uses the others)."""
    from discover_ray.probe import decode_images

    probe = handle.open()
    wanted = set(image_ids)
    chosen = [im for im in probe.images if im.image_id in wanted]
    decoded = decode_images(probe, chosen, failure_budget=1.0)
    return {im.image_id: image for im, image in zip(decoded.kept, decoded.images, strict=True)}
