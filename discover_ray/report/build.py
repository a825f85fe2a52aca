"""``discover report RUN``: a finished dissection as one self-contained folder of static HTML.

Per layer a grid of neuron cards (label, score, top concepts, the probe images that drive the unit
most), sortable by score and searchable by concept; per-example pages with the image and its active
neurons; matplotlib plots of sparsity and scores; the run summary. With a twin run (a CVN and its
non-competitive twin over the same probe set) a side-by-side page of active neurons per image, as in
the DISCOVER paper's Table 4. The folder is built beside its destination and swapped in whole, so a
failed build never leaves half a report; a destination that holds anything but an earlier report (it
carries a stamp file) is refused, never emptied.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from discover_ray.analyze.active import (
    LayerActivations,
    active_table,
    layer_activity,
    position_activity,
    read_activations,
)
from discover_ray.analyze.evolution import evolution, run_checkpoints
from discover_ray.backends.cache import CallCache
from discover_ray.errors import DatasetError, IncompatibleRuns, ReportFolderError, UnknownName
from discover_ray.evaluate.sparsity import EPS, Sparsity
from discover_ray.report import plots
from discover_ray.report.thumbnails import ProbeMismatch, Thumbnails, open_run_probe
from discover_ray.runs import LabelEntry, RunRecord, load_run
from discover_ray.runs.read import READERS, read_simulation, read_verification
from discover_ray.schema import Descriptions, Explanations, Labels
from discover_ray.store import Store

__all__ = ["Report", "build_report", "default_folder"]

PREFERRED_METHODS = ("soft_wpmi", "wpmi", "cos3", "cos", "rank_reorder")
STAMP = ".discover-report"  # written into every report folder: only such a folder is ever replaced


@dataclass
class Report:
    """Where the report went and what it holds."""

    folder: Path
    layers: list[str]
    examples: list[str]
    thumbnails: int
    twin: str | None = None
    warnings: list[str] = field(default_factory=list)
    evolution: list[tuple[str, str]] = field(default_factory=list)  # (title, page) per architecture at N checkpoints

    @property
    def index(self) -> Path:
        return self.folder / "index.html"


@dataclass
class _Layer:
    model: str
    layer: str
    primary: LabelEntry
    labellings: list[tuple[LabelEntry, Labels | Explanations | Descriptions]]
    recorded: LayerActivations
    stats: Sparsity
    per_position: Sparsity | None = None
    page: str = ""
    top: dict[str, tuple[str, float]] = field(default_factory=dict)
    simulation: dict[str, Any] = field(default_factory=dict)  # the layer's simulation scores, method by method
    test_r: dict[int, dict[str, float | None]] = field(default_factory=dict)  # id(entry) → unit → test correlation
    verified: dict[int, dict[str, float | None]] = field(default_factory=dict)  # id(entry) → unit → verification AUC
    crop_size: dict[int, int] = field(default_factory=dict)  # id(entry) → DnD's crop size (for its captioned crops)
    verification: list[Any] = field(default_factory=list)  # the layer's VerificationEntry rows

    @property
    def title(self) -> str:
        return f"{self.model} / {self.layer}"


def default_folder(store: Store, run_id: str) -> Path:
    """Inside the run's folder for a local store; ``./discover-reports/RUN`` for a remote one."""
    if not store.is_local:
        return Path("discover-reports") / run_id
    return Path(store.path(f"runs/{run_id}/report"))


def build_report(
    store: Store | str,
    run_id: str,
    out: str | Path | None = None,
    method: str | None = None,
    examples: int | Sequence[str] = 12,
    top_images: int = 8,
    twin: str | None = None,
    twin_rows: int = 10,
    eps: float = EPS,
) -> Report:
    """Writes the report of ``run_id`` to ``out`` (default: see :func:`default_folder`) and returns it."""
    store = Store.of(store)
    run = _finished(store, run_id)
    folder = (Path(out) if out is not None else default_folder(store, run_id)).resolve()
    _check_destination(folder)
    layers = _layers(store, run, method, eps)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the report from a web server or another user
    try:
        report = _write(store, run, layers, staging, examples, top_images, twin, twin_rows, eps)
        (staging / STAMP).write_text(f"discover-ray report of run {run.run_id}; `discover report` replaces this folder\n")
        _swap(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.folder = folder
    return report


def _check_destination(folder: Path) -> None:
    """Only an absent or empty folder, or one an earlier report was written to, may become the report."""
    if folder.exists() and not folder.is_dir():
        raise ReportFolderError(f"{folder} is a file, not a folder; give --out a folder for the report")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / STAMP).is_file():
        raise ReportFolderError(
            f"{folder} is not empty and holds no earlier report; nothing was written. Give --out a new or empty "
            "folder (a folder a report was written to is replaced)"
        )


# -- gathering --------------------------------------------------------------------------------------
def _finished(store: Store, run_id: str) -> RunRecord:
    run = load_run(store, run_id)
    if not run.labels:
        raise DatasetError(f"run {run_id} has no labels; dissect it with some methods first")
    return run


def _layers(store: Store, run: RunRecord, method: str | None, eps: float) -> list[_Layer]:
    entries = [e for e in run.labels if e.table in READERS]
    methods = sorted({e.method for e in entries})
    if method is not None and method not in methods:
        raise UnknownName(f"run {run.run_id} has no labels by method {method!r}; it has {methods}")
    groups: dict[tuple[str, str], list[LabelEntry]] = {}
    for entry in entries:
        groups.setdefault((entry.model, entry.layer), []).append(entry)
    out = []
    for (model, layer), group in groups.items():
        recorded = read_activations(store, run, model, layer)
        if recorded is None:
            continue
        rank = {m: i for i, m in enumerate(PREFERRED_METHODS)}
        primary = min(group, key=lambda e: (e.method != method, rank.get(e.method, len(rank)), group.index(e)))
        labellings = [(e, READERS[e.table](store.committed(e.dataset).read())) for e in group]
        item = _Layer(model, layer, primary, labellings, recorded, layer_activity(recorded, eps),
                      position_activity(recorded))
        item.simulation = _simulation_table(run, model, layer)
        item.verification = [v for v in run.verification if v.model == model and v.layer == layer]
        for e, table in labellings:
            scores = read_simulation(store, run, e, "correlation")
            if scores is not None:
                item.test_r[id(e)] = scores
            auc = read_verification(store, run, e, "auc")
            if auc is not None:
                item.verified[id(e)] = auc
            if isinstance(table, Descriptions):
                params = (store.committed(e.dataset).marker() or {}).get("params", {})
                item.crop_size[id(e)] = int(params.get("crop_size", 375))
        out.append(item)
    for item in out:
        item.top = next(t for e, t in item.labellings if e is item.primary).top()
    return out


def _simulation_table(run: RunRecord, model: str, layer: str) -> dict[str, Any]:
    """The layer's simulation scores as the paper's Table 2: a row per (concepts, simulator, scoring), a column
    per method, mean ± SEM over live units."""
    entries = [s for s in run.simulation if s.model == model and s.layer == layer]
    methods = list(dict.fromkeys(s.method for s in entries))
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in entries:
        row = rows.setdefault((s.source, s.simulator, s.scoring), {})
        row[s.method] = s
    return {"methods": methods, "rows": [{"source": k[0], "simulator": k[1], "scoring": k[2], "cells": v}
                                         for k, v in rows.items()]}


def _example_ids(run: RunRecord, layers: list[_Layer], examples: int | Sequence[str]) -> list[str]:
    ids = layers[0].recorded.image_ids
    if isinstance(examples, int):
        if examples <= 0:
            return []
        picks = np.unique(np.linspace(0, len(ids) - 1, min(examples, len(ids))).round().astype(int))
        return [ids[i] for i in picks]
    known = set(ids)
    unknown = [i for i in examples if i not in known]
    if unknown:
        raise UnknownName(f"images {unknown[:5]} are not in the probe set of run {run.run_id} (ids look like {ids[:3]})")
    return list(dict.fromkeys(examples))


# -- writing ----------------------------------------------------------------------------------------
def _write(
    store: Store, run: RunRecord, layers: list[_Layer], folder: Path, examples: int | Sequence[str],
    top_images: int, twin: str | None, twin_rows: int, eps: float,
) -> Report:
    env = _environment()
    report = Report(folder, [], [], 0)
    for name in ("report.css", "report.js"):
        (folder / name).write_bytes(resources.files("discover_ray.report").joinpath("static", name).read_bytes())
    (folder / "layers").mkdir()
    (folder / "examples").mkdir()
    (folder / "plots").mkdir()

    try:
        thumbs: Thumbnails | None = Thumbnails(open_run_probe(run), folder / "img")
    except ProbeMismatch as err:
        thumbs = None
        report.warnings.append(f"no thumbnails: {err}")
    example_ids = _example_ids(run, layers, examples)
    example_pages = {image_id: f"examples/{_slug(image_id)}.html" for image_id in example_ids}

    for item in layers:
        item.page = f"layers/{_slug(item.model + '__' + item.layer)}.html"
    for item in layers:
        cards = _cards(item, top_images)
        if thumbs is not None:
            thumbs.ensure(t["image_id"] for card in cards for t in card["images"])
            thumbs.ensure(c["image_id"] for card in cards for d in card["descriptions"] for c in d["captioned"]
                          if not c["box"])
        cache = CallCache(store)
        for card in cards:
            for d in card["descriptions"]:
                for c in d["captioned"]:
                    c["src"] = None if thumbs is None else (
                        thumbs.crop(c["image_id"], c["box"], c["size"]) if c["box"] else thumbs.path(c["image_id"]))
                for g in d["generated"]:
                    g["src"] = thumbs.generated(g["ref"], cache.read(g["ref"])) if thumbs else None
        for card in cards:
            for t in card["images"]:
                t["src"] = thumbs.path(t["image_id"]) if thumbs else None
                t["page"] = example_pages.get(t["image_id"])
        histogram = f"plots/scores_{_slug(item.model + '__' + item.layer)}.png"
        scores = np.array([s for _, s in item.top.values()], dtype=np.float64)
        plots.score_histogram(folder / histogram, item.title, scores, item.primary.method)
        (folder / item.page).write_text(env.get_template("layer.html.j2").render(
            root="../", title=f"{item.title} · run {run.run_id}", run=run, layer=item, cards=cards,
            histogram=histogram, nav=_nav(layers),
        ))
        report.layers.append(item.page)

    plots.sparsity_chart(
        folder / "plots/sparsity.png", [item.title for item in layers], [item.stats.mean for item in layers],
        [item.stats.std for item in layers],
        [1 / item.recorded.block_size if item.recorded.block_size > 1 else None for item in layers],
    )

    if thumbs is not None:
        thumbs.ensure(example_ids)
    for image_id in example_ids:
        tables = []
        for item in layers:
            table = active_table(item.recorded.row(image_id), item.recorded.units, item.recorded.block_size, item.top, eps)
            tables.append({"layer": item, "rows": table.to_pylist(), "units": len(item.recorded.units)})
        (folder / example_pages[image_id]).write_text(env.get_template("example.html.j2").render(
            root="../", title=f"{image_id} · run {run.run_id}", run=run, image_id=image_id,
            label=thumbs.label(image_id) if thumbs else None, src=thumbs.path(image_id) if thumbs else None,
            tables=tables, nav=_nav(layers),
        ))
        report.examples.append(example_pages[image_id])

    twin_page = None
    if twin is not None:
        twin_page = _twin_page(env, store, run, layers, twin, example_ids, example_pages, thumbs, twin_rows, eps, folder)
        report.twin = twin_page

    evolution_pages = _evolution_pages(env, store, run, layers, folder)
    report.evolution = evolution_pages

    if thumbs is not None:
        report.thumbnails = len(thumbs.written)
        if thumbs.failed:
            report.warnings.append(f"{len(thumbs.failed)} probe images could not be read for thumbnails")
    (folder / "index.html").write_text(env.get_template("index.html.j2").render(
        root="", title=f"{run.name} · run {run.run_id}", run=run, layers=layers, nav=_nav(layers),
        examples=[(i, example_pages[i], thumbs.path(i) if thumbs else None) for i in example_ids],
        twin_page=twin_page, evolution_pages=evolution_pages, warnings=report.warnings, config=json.dumps(run.config, indent=2),
        stages=run.stages, identification=run.identification, failed=run.failed_images,
    ))
    return report


def _cards(item: _Layer, top_images: int) -> list[dict[str, Any]]:
    """One card per unit: its labellings and the probe images that activate it most."""
    values = item.recorded.values
    k = min(top_images, values.shape[0])
    order = np.argsort(-values, axis=0, kind="stable")[:k]  # [k, units]
    ranked = {id(entry): labels.ranked() for entry, labels in item.labellings}
    cards = []
    block = item.recorded.block_size
    for column, unit in enumerate(item.recorded.units):
        primary = ranked[id(item.primary)].get(unit, [])
        others = [
            {"name": f"{e.method} · {e.source}", "concept": ranked[id(e)][unit][0][0], "score": ranked[id(e)][unit][0][1]}
            for e, t in item.labellings if e is not item.primary and ranked[id(e)].get(unit) and isinstance(t, Labels)
        ]
        explanations = [
            {"name": f"{e.method} · {e.source}", "terms": t.ranked().get(unit, []), "text": t.describe(unit),
             "test_r": item.test_r.get(id(e), {}).get(unit)}
            for e, t in item.labellings if isinstance(t, Explanations) and unit in t.by_unit()
        ]
        descriptions = [_described(e, t, unit, item.crop_size[id(e)]) for e, t in item.labellings
                        if isinstance(t, Descriptions) and unit in t.rows()]
        verified = [{"name": e.method + (f" · {e.source}" if e.source else ""), "auc": item.verified[id(e)].get(unit)}
                    for e, _ in item.labellings if id(e) in item.verified and item.verified[id(e)].get(unit) is not None]
        cards.append({
            "unit": unit,
            "column": column,
            "block": column // block if block > 1 else None,
            "index_in_block": column % block if block > 1 else None,
            "concept": primary[0][0] if primary else None,
            "score": primary[0][1] if primary else float("nan"),
            "top": primary,
            "others": others,
            "explanations": explanations,
            "descriptions": descriptions,
            "verified": verified,
            # the search matches the unit's own ranking first (rank 1 = its label), then the other labellings
            "ranked": json.dumps([c.lower() for c, _ in primary]),
            "other_labels": json.dumps([[o["name"], o["concept"].lower()] for o in others]
                                       + [[x["name"], c.lower()] for x in explanations for c, _ in x["terms"]]
                                       + [[d["name"], c.lower()] for d in descriptions for c, _ in d["labels"]]),
            "images": [
                {"image_id": item.recorded.image_ids[i], "activation": float(values[i, column])} for i in order[:, column]
            ],
        })
    return cards


def _described(entry: LabelEntry, table: Descriptions, unit: str, crop_size: int, generated: int = 5) -> dict[str, Any]:
    """A unit's Describe-and-Dissect labels (top 3 with scores), the images it captioned (with their captions and
    crops) and the images generated for its labels (the first ``generated`` of each)."""
    rows = table.rows()[unit]
    failure = table.failures().get(unit)
    return {
        "name": entry.method, "labels": table.ranked().get(unit, [])[:3],
        "failure": f"{failure[0]}: {failure[1]}" if failure else None,
        "captioned": [{"image_id": c["image_id"], "box": c["box"], "caption": c["caption"], "size": crop_size,
                       "activation": c["activation"]} for c in rows[0]["captioned"]],
        "generated": [{"ref": ref, "concept": r["concept"]} for r in rows[:3] if r["rank"] >= 0
                      for ref in r["images"][:generated]],
    }


def _twin_page(
    env: jinja2.Environment, store: Store, run: RunRecord, layers: list[_Layer], twin: str,
    example_ids: list[str], example_pages: dict[str, str], thumbs: Thumbnails | None, rows: int, eps: float,
    folder: Path,
) -> str:
    """Active neurons of each example in a CVN run and its twin, side by side (DISCOVER Table 4)."""
    other = _finished(store, twin)
    if other.probe.id != run.probe.id:
        raise IncompatibleRuns(
            f"runs {run.run_id} and {twin} dissected different probe sets ({run.probe.id} vs "
            f"{other.probe.id}); dissect both over the same probe set to compare them per image"
        )
    twin_layers = {item.layer: item for item in _layers(store, other, None, eps)}
    pairs = [(item, twin_layers[item.layer]) for item in layers if item.layer in twin_layers]
    if not pairs:
        raise IncompatibleRuns(f"runs {run.run_id} and {twin} recorded no layer of the same name")
    if not example_ids:
        raise IncompatibleRuns("a side-by-side comparison needs at least one example image (examples > 0)")
    blocks = []
    for image_id in example_ids:
        per_layer = []
        for ours, theirs in pairs:
            sides = []
            for item in (ours, theirs):
                table = active_table(item.recorded.row(image_id), item.recorded.units, item.recorded.block_size,
                                     item.top, eps)
                sides.append({"layer": item, "count": table.num_rows, "units": len(item.recorded.units),
                              "rows": table.slice(0, rows).to_pylist()})
            per_layer.append(sides)
        blocks.append({"image_id": image_id, "page": example_pages[image_id],
                       "src": thumbs.path(image_id) if thumbs else None,
                       "label": thumbs.label(image_id) if thumbs else None, "layers": per_layer})
    page = "twin.html"
    (folder / page).write_text(env.get_template("twin.html.j2").render(
        root="", title=f"run {run.run_id} vs {twin}", run=run, other=other, blocks=blocks, rows=rows,
        nav=_nav(layers),
    ))
    return page


def _evolution_pages(env: jinja2.Environment, store: Store, run: RunRecord, layers: list[_Layer],
                     folder: Path) -> list[tuple[str, str]]:
    """An evolution page per architecture the run holds at two or more checkpoints: (title, page)."""
    pages = []
    for i, group in enumerate(run_checkpoints(run)):
        evolved = evolution(store, group)
        page = f"evolution-{i}.html"
        names = [c.name for c in group]
        (folder / page).write_text(env.get_template("evolution.html.j2").render(
            root="", title=f"evolution · run {run.run_id}", run=run, checkpoints=names, layers=evolved,
            nav=_nav(layers)))
        pages.append((f"{names[0]} … {names[-1]} ({len(names)} checkpoints)", page))
    return pages


# -- helpers ----------------------------------------------------------------------------------------
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("discover_ray.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, digits=4: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"
    env.filters["pct"] = lambda v: "–" if v is None else f"{v:.1%}"
    return env


def _nav(layers: list[_Layer]) -> list[tuple[str, str]]:
    return [(item.title, item.page) for item in layers]


def _slug(name: str) -> str:
    """A file name for any id: readable where it can be, unique by a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60]
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _swap(staging: Path, folder: Path) -> None:
    """Replaces ``folder`` by ``staging`` with two renames; the old report is removed only afterwards."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{staging.name.rsplit('.', 1)[-1]}")
        folder.rename(old)
    staging.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
