"""Planning a dissection: check every input on the driver, name the run by content, and list its stages.

The order is: each concept source's stages (CLIP: EMBED images, EMBED concepts), one DECODE per pixel
format the models share (the pixel cache), RECORD per model, then REDUCE per (model, layer, concept
source, method). Bad input fails here, within seconds, before any record is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from discover_ray.config import DissectConfig
from discover_ray.dissection.identity import input_ids, prepare_sources, run_id_of
from discover_ray.dissection.models import PreparedModel, prepare_model
from discover_ray.dissection.stages import DecodeStage, RecordStage, ReduceStage
from discover_ray.methods import get_method
from discover_ray.pipeline import ProbeContext, Stage
from discover_ray.pipeline.chunks import ProbeHandle
from discover_ray.probe import ProbeSet
from discover_ray.runs import CompetitionInfo, LabelEntry, ModelInfo, ProbeInfo, RunRecord
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
                competition=CompetitionInfo(**model.competition) if model.competition else None)
        labels = [LabelEntry(model=r.model.label, checkpoint_id=r.model.checkpoint_id, layer=r.layer, method=r.method.name,
                             source=r.source.name if r.source else "", concept_set_id=r.source.concepts.id if r.source else "",
                             encoder_id=r.source.encoder_id if r.source else "", dataset=r.dataset.relative,
                             table=r.method.writes)
                  for r in self.reduces]
        outputs = sorted({o.path for s in self.stages for o in s.outputs})
        return RunRecord(run_id=self.run_id, name=stored["name"], status="running", attempt="", started="", config=stored,
                         inputs=self.inputs, probe=probe, models=models, labels=labels, outputs=outputs)


def plan_dissection(config: DissectConfig, store: Store) -> Plan:
    probe = config.probe.open()
    methods = [(get_method(name), get_method(name).params(config.reduce.params.get(name))) for name in config.reduce.methods]
    for method, params in methods:
        method.check(params, len(probe))
    notes: list[str] = []
    sources, context = prepare_sources(config, store, probe, notes)
    models = [prepare_model(m, config, probe) for m in config.models]
    inputs = input_ids(probe.id, sources, {m.label: m.weights_sha256 for m in models})
    settings = config.reduce.settings(config.seed)

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
                    if (source is None) == method.per_concept_source:
                        continue
                    reduces.append(ReduceStage(store, model, output.name, output, method, params, source, settings,
                                               tuple(probe.classes or ()), probe.id, context.handle))
    stages += reduces
    return Plan(config, store, probe, context.handle, sources, models, stages, records, reduces,
                run_id_of(config, inputs), inputs, notes)
