"""``discover calibrate``: fit a CLIP / SigLIP source's (a, b) of σ(a·(cos + b)) against the probe set's labels.

The targets are the probe images' classes plus the superclasses of the config's label source (those with at
most 300 classes, methods.md §3.8); the texts are the class and superclass names. The image embeddings are
the source's EMBED stage output, computed through the same runner as a dissection (and shared with it);
the class names are embedded here (a few hundred texts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console

from discover_ray.config import DissectConfig
from discover_ray.dissection.identity import prepare_sources
from discover_ray.encoders.clip import ClipEncoder
from discover_ray.encoders.labels import resolve_superclasses
from discover_ray.errors import ConfigError, UnknownName
from discover_ray.explain.calibrate import Calibration, calibrate, calibration_targets, kept_superclasses
from discover_ray.pipeline import Executor, ProbeContext, Runner
from discover_ray.schema import read_embeddings
from discover_ray.sources.clip import ClipSource
from discover_ray.sources.labels import LabelConcepts
from discover_ray.store import Store

__all__ = ["SourceCalibration", "calibrate_source"]


@dataclass(frozen=True)
class SourceCalibration:
    source: str
    calibration: Calibration
    images: int
    targets: int  # classes + kept superclasses

    def yaml(self) -> str:
        return f"calibration: {{a: {self.calibration.a:.6g}, b: {self.calibration.b:.6g}}}"


def calibrate_source(config: DissectConfig, source: str | None = None, *, method: str = "exact",
                     executor: str | Executor | None = "local", console: Console | None = None) -> SourceCalibration:
    """The calibration of the CLIP source ``source`` (default: the config's only one) on the probe's labels."""
    from discover_ray.dissection import make_executor

    console = console or Console(stderr=True)
    probe = config.probe.open()
    if not probe.classes or any(im.label is None for im in probe.images):
        raise ConfigError(f"calibration needs a probe set whose every image has a label; {probe.source!r} has not")
    store = Store(config.store)
    notes: list[str] = []
    sources, context = prepare_sources(config, store, probe, notes)
    clips = [s for s in sources if isinstance(s, ClipSource)]
    if not clips:
        raise ConfigError("the config has no clip concept source to calibrate")
    if source is None and len(clips) > 1:
        raise ConfigError(f"the config has several clip sources; choose one with --source ({', '.join(s.name for s in clips)})")
    chosen = next((s for s in clips if source in (None, s.name)), None)
    if chosen is None:
        raise UnknownName(f"no clip concept source {source!r}; clip sources: {', '.join(s.name for s in clips)}")
    c = config.probe
    probe_context = ProbeContext(context.handle, len(probe), c.shard_size, c.failure_budget, store.root)
    Runner(make_executor(executor, config), probe_context, lambda event: None).run(
        [s for s in chosen.stages(context) if s.outputs[0].name == "images"])
    ids, image_emb = read_embeddings(chosen.images.read())
    row = {im.image_id: im.label for im in probe.images}
    labels = [row[i] for i in ids]
    superclasses: dict[str, list[int]] = {}
    for c in config.concepts:
        if isinstance(c, LabelConcepts) and c.superclasses:
            index = {name: i for i, name in enumerate(probe.classes)}
            for name, members in resolve_superclasses(c.superclasses).items():
                superclasses[name] = [index[m] for m in members if m in index]
    names = list(probe.classes) + [n.replace("_", " ") for n in kept_superclasses(superclasses)]
    texts = ClipEncoder(chosen.spec, "cuda" if torch.cuda.is_available() else "cpu").encode_text(names).numpy()
    cos = torch.from_numpy(np.array(image_emb, np.float32)) @ torch.from_numpy(texts).T
    targets = calibration_targets(labels, len(probe.classes), superclasses)
    found = calibrate(cos.clamp(-1, 1), targets, method=method)
    if found.a <= 0:
        raise ConfigError(
            f"{chosen.name}: the image–text cosines do not rise with the labels (fitted a = {found.a:.3g} ≤ 0), so its "
            "concept values would mean the opposite of the concepts; check the encoder's model and pretrained tag")
    return SourceCalibration(chosen.name, found, len(ids), int(targets.shape[1]))

