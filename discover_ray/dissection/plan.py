"""Planning a dissection: check every input on the driver, name the run by content, and list its stages.

The order is: each concept source's stages (CLIP: EMBED images, EMBED concepts), one DECODE per pixel
format the models share (the pixel cache), RECORD per model, REDUCE per (model, layer, concept source,
method; EXPLAIN for Linear Explanations, DESCRIBE for Describe-and-Dissect), then SIMULATE per labelling scored and
VERIFY per labelling verified. Bad input fails here, within
seconds, before any record is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from discover_ray.backends.settings import BackendSet
from discover_ray.config import DissectConfig
from discover_ray.dissection.identity import input_ids, prepare_sources, run_id_of
from discover_ray.dissection.models import PreparedModel, prepare_model
from discover_ray.dissection.stages import DecodeStage, RecordStage, ReduceStage, SimulateStage, VerifyStage, stage_for
from discover_ray.dissection.stages.describe import target_ref
from discover_ray.errors import ConfigError
from discover_ray.explain.splits import Splits
from discover_ray.methods import get_method
from discover_ray.pipeline import ProbeContext, Stage
from discover_ray.pipeline.chunks import ProbeHandle
from discover_ray.probe import ProbeSet
from discover_ray.runs import CompetitionInfo, LabelEntry, ModelInfo, ProbeInfo, RunRecord, SplitInfo
from discover_ray.sources import PreparedSource
from discover_ray.store import Store

__all__ = ["Plan", "plan_dissection"]


@dataclass
class Plan:
    config: DissectConfig
    store: Store
    probe: ProbeSet
    handle: ProbeHandle
    sources: list[PreparedSource]
    models: list[PreparedModel]
    stages: list[Stage]
    records: dict[str, RecordStage]
    reduces: list[ReduceStage]
    run_id: str
    inputs: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    simulations: list[SimulateStage] = field(default_factory=list)
    splits: Splits | None = None
    verifications: list[VerifyStage] = field(default_factory=list)

    @property
    def probe_context(self) -> ProbeContext:
        c = self.config.probe
        return ProbeContext(self.handle, len(self.probe), c.shard_size, c.failure_budget, self.store.root)

    def header(self) -> RunRecord:
        """The record an attempt starts with: everything but what its stages report."""
        c = self.config
        stored = c.stored()
        probe = ProbeInfo(id=self.probe.id, source=stored["probe"]["source"], kind=self.probe.kind, images=len(self.probe),
                          shards=-(-len(self.probe) // c.probe.shard_size), shard_size=c.probe.shard_size,
                          classes=list(self.probe.classes or ()), config=stored["probe"])
        models = {}
        for model, spec in zip(self.models, stored["models"], strict=True):
            record = self.records[model.label]
            models[model.label] = ModelInfo(
                checkpoint_id=model.checkpoint_id, weights_sha256=model.weights_sha256, spec=spec,
                layers={o.name: o.path for o in record.outputs}, units=model.units, block_sizes=model.block_sizes,
                competition=CompetitionInfo(**model.competition) if model.competition else None,
                heads={layer: head.module for layer, head in model.heads.items()})
        labels = [LabelEntry(model=r.model.label, checkpoint_id=r.model.checkpoint_id, layer=r.layer, method=r.method.name,
                             source=r.source.name if r.source else "", concept_set_id=r.source.concepts.id if r.source else "",
                             encoder_id=r.source.encoder_id if r.source else "", dataset=r.dataset.relative,
                             table=r.method.writes)
                  for r in self.reduces]
        outputs = sorted({o.path for s in self.stages for o in s.outputs})
        splits = None
        if self.splits is not None:
            s = c.splits
            splits = SplitInfo(id=self.splits.id, seed=s.seed, fractions=list(s.fractions), column=s.column,
                               counts=self.splits.counts())
        return RunRecord(run_id=self.run_id, name=stored["name"], status="running", attempt="", started="", config=stored,
                         inputs=self.inputs, probe=probe, models=models, labels=labels, outputs=outputs, splits=splits)


def plan_dissection(config: DissectConfig, store: Store) -> Plan:
    probe = config.probe.open()
    methods = [(get_method(name), get_method(name).params(config.reduce.params.get(name))) for name in config.reduce.methods]
    for method, params in methods:
        method.check(params, len(probe))
    for method, params in methods:
        recorded = {layer for m in config.models for layer in m.layers}
        unknown = sorted(set(method.layers(params) or ()) - recorded)
        if unknown:
            raise ConfigError(f"reduce.params.{method.name}.layers names {unknown}, which no model records "
                              f"(recorded layers: {sorted(recorded)})")
    notes: list[str] = []
    sources, context = prepare_sources(config, store, probe, notes)
    models = [prepare_model(m, config, probe) for m in config.models]
    inputs = input_ids(probe.id, sources, {m.label: m.weights_sha256 for m in models})
    settings = config.reduce.settings(config.seed)
    simulating = config.simulating()
    splits = config.splits.make(probe) if simulating is not None else None

    stages: list[Stage] = []
    if any(method.per_concept_source and "concept_scores" in method.needs for method, _ in methods):
        for source in sources:
            stages += source.stages(context)
    decodes: dict[str, DecodeStage] = {}
    for model in models:
        fmt = model.pixel_format
        if fmt is not None and fmt.id not in decodes:
            decodes[fmt.id] = DecodeStage(store, probe, probe.id, config.probe.shard_size, fmt, model.preprocess)
    stages += decodes.values()
    records = {}
    for model in models:
        decode = decodes.get(model.pixel_format.id) if model.pixel_format is not None else None
        records[model.label] = RecordStage(store, model, config, probe.id, len(probe), decode)
    stages += records.values()
    reduces = []
    for model in models:
        for output in records[model.label].outputs:
            for source in [*sources, None]:
                for method, params in methods:
                    chosen = method.layers(params)
                    if (source is None) == method.per_concept_source or (chosen is not None and output.name not in chosen):
                        continue
                    if source is not None and method.reads_concept_values and not source.has_values():
                        raise ConfigError(
                            f"{method.name} reads concept values σ(a·(cos + b)), but concept source {source.name!r} has "
                            "no calibration (a, b); set calibration: {a: ..., b: ...} on it, or fit one with "
                            f"`discover calibrate CONFIG --source {source.name}`")
                    cls = stage_for(method)
                    reduces.append(cls(store, model, output.name, output, method, params, source, settings,
                                       tuple(probe.classes or ()), probe.id, context.handle, splits,
                                       **cls.plan_kwargs(config, sources, model, output.name, params)))
    stages += reduces
    simulations = _simulations(config, store, probe, sources, reduces, splits, notes) if splits is not None else []
    stages += simulations
    verifications = _verifications(config, store, probe.id, reduces)
    stages += verifications
    return Plan(config, store, probe, context.handle, sources, models, stages, records, reduces,
                run_id_of(config, inputs), inputs, notes, simulations, splits, verifications)


def _verifications(config: DissectConfig, store: Store, probe_id: str, reduces: list[ReduceStage]) -> list[VerifyStage]:
    """A VERIFY stage per labelling whose method ``verify.methods`` names (default: every labelling)."""
    verify = config.verify
    if verify is None:
        return []
    generator = verify.generator or (config.backends.generator if config.backends else None)
    assert generator is not None  # the config checks it
    generator.check()
    backends = BackendSet(None, None, generator, store.root, config.backends.replay if config.backends else False)
    return [VerifyStage(store, stage, backends, target_ref(config, stage.model, stage.layer), verify.images,
                        verify.control, verify.seed, probe_id)
            for stage in reduces if verify.methods is None or stage.method.name in verify.methods]


def _simulations(config: DissectConfig, store: Store, probe: ProbeSet, sources: list[PreparedSource],
                 reduces: list[ReduceStage], splits: Splits, notes: list[str]) -> list[SimulateStage]:
    """A SIMULATE stage per labelling scored; a simulator that cannot give concept values is an error when
    asked for by name, a note (and no scores) when it is a labelling's own uncalibrated CLIP source."""
    simulate = config.simulating()
    assert simulate is not None
    by_name = {s.name: s for s in sources}
    labels = ({im.image_id: im.label for im in probe.images if im.label is not None}
              if probe.classes and all(im.label is not None for im in probe.images) else None)
    out: list[SimulateStage] = []
    skipped: set[str] = set()
    for stage in reduces:
        if stage.source is None or (simulate.methods is not None and stage.method.name not in simulate.methods):
            continue
        simulator = by_name[simulate.simulator] if simulate.simulator else stage.source
        if not simulator.has_values():
            if simulate.simulator:
                raise ConfigError(f"simulate.simulator {simulator.name!r} has no calibration (a, b) for concept values "
                                  "σ(a·(cos + b)); set calibration: {a: ..., b: ...} on it, or fit one with "
                                  f"`discover calibrate CONFIG --source {simulator.name}`")
            skipped.add(simulator.name)
            continue
        missing = set(stage.source.concepts.concepts) - set(simulator.concepts.concepts)
        if missing:
            raise ConfigError(f"simulator {simulator.name!r} lacks {len(missing)} concept(s) of {stage.source.name!r} "
                              f"(e.g. {sorted(missing)[:5]}); a simulator must hold every concept it simulates")
        head = stage.model.heads.get(stage.layer)
        if head is not None and labels is not None and head.weight.shape[0] != len(probe.classes or ()):
            head = None  # the head's classes are not the probe set's: no ablation scoring
        out.append(SimulateStage(store, stage, simulator, splits, list(simulate.scorings), simulate.temperature, head,
                                 labels, probe.id))
    for name in sorted(skipped):
        notes.append(f"simulation: concept source {name!r} has no calibration (a, b), so its labels are not simulated; "
                     f"set calibration on it or run `discover calibrate CONFIG --source {name}`")
    return out
