"""The dissection job: probe set → EMBED (CLIP) → RECORD (activations) → REDUCE (labels), resumably.

Every dataset is keyed by content ids (probe, checkpoint, encoder, concept set) and committed with a
hash of the config that produced it. A stage whose ``_SUCCESS`` marker matches is skipped; a stage cut
short resumes with the shards that are missing; changing what a dataset depends on recomputes it.
Inputs are checked on the driver before any Ray work starts, so bad input fails in seconds.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from discover_ray.concepts import ConceptSet, load_concepts
from discover_ray.config import ClipConcepts, DissectConfig, LabelConcepts, ModelConfig
from discover_ray.cvn import competition_signature, lwta_modules
from discover_ray.cvn.blocks import competition_blocks
from discover_ray.encoders.clip import check_clip
from discover_ray.encoders.labels import label_concept_scores
from discover_ray.evaluate import NeuronIdentification, paired_embedding_cosine
from discover_ray.ids import content_id
from discover_ray.probe import ProbeError, decode_images
from discover_ray.probe.pixels import split_preprocess
from discover_ray.record import resolve_layers, unit_names
from discover_ray.runs import LabelEntry, RunRecord
from discover_ray.similarity import check_probe_size
from discover_ray.stages.cluster import Resources, connect
from discover_ray.stages.embed import ImageEmbedder, clip_preprocess, embed_texts
from discover_ray.stages.inference import (
    PIXEL_ROW_GROUP,
    ChunkSource,
    PixelCache,
    Pool,
    ProbeHandle,
    pixel_table,
    plan_pool,
    run_chunks,
)
from discover_ray.stages.record import ActivationRecorder, seeded_load
from discover_ray.stages.reduce import ConceptSource, identification_ranks, reduce_layer
from discover_ray.store import Dataset, Store, config_hash

__all__ = ["DissectResult", "dissect"]


@dataclass
class DissectResult:
    run_id: str
    store: str
    record: dict[str, Any]
    labels: list[LabelEntry] = field(default_factory=list)

    @property
    def identification(self) -> list[dict[str, Any]]:
        return self.record["identification"]

    @property
    def recomputed(self) -> list[dict[str, Any]]:
        """The stages this call actually ran (the rest were already done)."""
        return [s for s in self.record["stages"] if s["status"] == "done"]


@dataclass
class _Model:
    config: ModelConfig
    checkpoint_id: str
    preprocess: Any
    block_sizes: dict[str, int]


@dataclass
class _Source:
    name: str
    concepts: ConceptSet
    encoder_id: str
    config: LabelConcepts | ClipConcepts
    label_scores: np.ndarray | None = None  # [N probe images, M] for label concepts


def dissect(config: DissectConfig, console: Console | None = None) -> DissectResult:
    """Run (or resume) a dissection; returns where everything went. Raises on bad input, before any work."""
    console = console or Console(stderr=True)
    store = Store(config.store)
    record = RunRecord.start(store, config.run_id, config.name, config.model_dump(mode="json"))
    try:
        labels = _Job(config, store, record, console).run()
    except BaseException as err:
        record.finish("failed", f"{type(err).__name__}: {err}")
        raise
    record.finish("succeeded")
    return DissectResult(config.run_id, store.root, record.data, labels)


class _Job:
    def __init__(self, config: DissectConfig, store: Store, record: RunRecord, console: Console):
        self.config, self.store, self.record, self.console = config, store, record, console

    # -- the plan ----------------------------------------------------------------------------------
    def run(self) -> list[LabelEntry]:
        c = self.config
        started = time.perf_counter()
        self.probe = c.probe.open()
        self.probe_id = self.probe.id
        self.n_shards = -(-len(self.probe) // c.probe.shard_size)
        self.record.data["probe"] = {
            "id": self.probe_id, "source": self.probe.source, "kind": self.probe.kind, "images": len(self.probe),
            "shards": self.n_shards, "classes": list(self.probe.classes or ()),
        }
        for method in c.reduce.methods:
            check_probe_size(method, len(self.probe), **c.reduce.params.get(method, {}))
        sources = [self._source(s) for s in c.concepts]
        models = [self._model(m) for m in c.models]
        self.record.stage("PREPARE", "inputs", "done", time.perf_counter() - started)

        for source in sources:
            if isinstance(source.config, ClipConcepts):
                self._embed(source)
        entries = []
        for model in models:
            hashes = self._record(model)
            for layer in model.config.layers:
                entries += self._reduce(model, layer, hashes[layer], sources)
        self.record.data["labels"] = [e.__dict__ for e in entries]
        self.record.save()
        return entries

    def _source(self, source: LabelConcepts | ClipConcepts) -> _Source:
        if isinstance(source, LabelConcepts):
            if not self.probe.classes:
                raise ValueError(
                    f"label concepts need a labelled probe set, but {self.probe.source!r} has no labels; "
                    "add a label column (or class folders), or use a clip concept source"
                )
            concepts, scores = label_concept_scores(
                [im.label for im in self.probe.images], self.probe.classes, source.superclasses
            )
            return _Source("labels", concepts, "labels", source, scores.numpy())
        spec = source.spec()
        check_clip(spec)  # unknown model or tag, or weights that cannot be had offline: fail now
        concepts = load_concepts(source.concepts)
        if concepts.report.changed:
            self.console.print(f"concept set {concepts.name}: {concepts.report.summary()}")
        return _Source(f"clip:{spec.describe()}", concepts, spec.id, source)

    def _model(self, model: ModelConfig) -> _Model:
        """Build the model once on the driver: checks the checkpoint fits and the layers exist."""
        loaded = seeded_load(model.spec(), self.config.seed)
        modules = resolve_layers(loaded.model, model.layers)
        checkpoint_id = loaded.checkpoint_id or content_id(
            "model\0" + config_hash({**model.model_dump(mode="json", exclude={"alias", "layers"}), "seed": self.config.seed})
        )
        competition = competition_signature(loaded.model)
        if loaded.checkpoint_id and competition:
            # a weights file also loads into the twin without competition (and a ReLU network's into its
            # CVN): outputs of the CVN are stored under the weights' hash combined with its competition
            checkpoint_id = content_id(f"{loaded.checkpoint_id}\0{competition}")
        block_sizes = competition_blocks(loaded.model, modules, self._example(loaded.preprocess))
        self.record.data["models"][model.label] = {"checkpoint_id": checkpoint_id, "spec": model.model_dump(mode="json")}
        if loaded.checkpoint_id:
            self.record.data["models"][model.label]["weights_sha256"] = loaded.checkpoint_id
        competing = lwta_modules(loaded.model)
        if competing:  # how the stochastic layers were recorded: one pass per image, seeded from (seed, image_id)
            self.record.data["models"][model.label]["competition"] = {
                "mode": self.config.record.competition, "passes": 1, "seed": self.config.seed,
                "layers": {name: {"competitors": m.competitors, "tau": m.tau} for name, m in competing},
            }
        self.record.save()
        return _Model(model, checkpoint_id, loaded.preprocess, block_sizes)

    def _example(self, preprocess) -> torch.Tensor:
        """One preprocessed probe image (the first that decodes), for a forward pass on the driver."""
        for start in range(0, min(len(self.probe), 64), 8):
            decoded = decode_images(self.probe, self.probe.images[start : start + 8], failure_budget=1.0)
            if decoded.images:
                return preprocess(decoded.images[0])[None]
        raise ProbeError(f"none of the first probe images of {self.probe.source!r} could be decoded")

    # -- EMBED -----------------------------------------------------------------------------------
    def _embed(self, source: _Source) -> None:
        c, spec = self.config, source.config.spec()
        images = self.store.image_embeddings(source.encoder_id, self.probe_id)
        key = config_hash({"encoder": source.encoder_id, "probe": self.probe_id, "shard": c.probe.shard_size,
                           "batch": source.config.batch_size})
        if not self._skip("EMBED", images, key):
            started = time.perf_counter()
            todo = self._todo(images.begin(key))
            rows = 0
            with self._progress(f"EMBED {spec.describe()}", todo) as advance:
                for shard in run_chunks(
                    self.probe, c.probe.shard_size, todo, source.config.batch_size,
                    ChunkSource(self.handle, clip_preprocess(spec)), ImageEmbedder, {"spec": spec}, self.pool,
                    c.probe.failure_budget, advance,
                ):
                    emb = shard.outputs.get("embedding", np.zeros((0, 1), np.float32))
                    table = pa.table({
                        "image_id": pa.array(shard.image_ids, pa.string()),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]),
                    })
                    images.write_part(shard.shard, table)
                    rows += len(shard.image_ids)
                    self._failed(shard.failed)
            images.commit(key, self._rows(images), encoder=spec.describe(), probe_id=self.probe_id)
            self.record.stage("EMBED", images.relative, "done", time.perf_counter() - started, shards=len(todo), rows=rows)
        texts = self.store.concept_embeddings(source.encoder_id, source.concepts.id)
        key = config_hash({"encoder": source.encoder_id, "concepts": source.concepts.id})
        if not self._skip("EMBED", texts, key):
            started = time.perf_counter()
            texts.begin(key)
            options = {"num_gpus": 1} if self.resources.has_gpu else {"num_cpus": self.pool.read_cpus}
            emb = ray.get(embed_texts.options(**options).remote(spec, list(source.concepts.concepts), source.config.batch_size))
            texts.write_part(0, pa.table({
                "concept": pa.array(source.concepts.concepts, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]),
            }))
            texts.commit(key, len(source.concepts), encoder=spec.describe(), concept_set=source.concepts.name)
            self.record.stage("EMBED", texts.relative, "done", time.perf_counter() - started, rows=len(source.concepts))

    # -- RECORD ----------------------------------------------------------------------------------
    def _record(self, model: _Model) -> dict[str, str]:
        c, layers = self.config, model.config.layers
        datasets = {layer: self.store.activations(model.checkpoint_id, self.probe_id, layer) for layer in layers}
        hashes = {
            layer: config_hash({
                "checkpoint": model.checkpoint_id, "probe": self.probe_id, "layer": layer, "seed": c.seed,
                "record": c.record.model_dump(mode="json", exclude={"pixel_cache"}), "shard": c.probe.shard_size,
                "preprocess": model.config.model_dump(mode="json", include={"image_size", "mean", "std"}),
            })
            for layer in layers
        }
        pending = [layer for layer in layers if not self._skip("RECORD", datasets[layer], hashes[layer])]
        if not pending:
            return hashes
        kept = [set(datasets[layer].begin(hashes[layer])) for layer in pending]
        todo = self._todo(sorted(set.intersection(*kept)))
        cache = self._pixel_cache(model)
        started = time.perf_counter()
        rows, filled = 0, 0
        clock = _Throughput(started)
        position = {im.image_id: i for i, im in enumerate(self.probe.images)}
        loader = ChunkSource(self.handle, model.preprocess, cache)
        with self._progress(f"RECORD {model.config.label}", todo) as advance:
            for shard in run_chunks(
                self.probe, c.probe.shard_size, todo, c.record.batch_size, loader, ActivationRecorder,
                {"spec": model.config.spec(), "layers": pending, "conv_pool": c.record.conv_pool,
                 "token_pool": c.record.token_pool, "seed": c.seed, "competition": c.record.competition},
                self.pool, c.probe.failure_budget, clock.wrap(advance),
            ):
                for i, layer in enumerate(pending):
                    acts = shard.outputs.get(f"layer{i}", np.zeros((0, 0), np.float32))
                    datasets[layer].write_part(shard.shard, _activation_table(
                        shard.image_ids, acts, model.block_sizes[layer], layer, model, c.record.conv_pool))
                if cache and shard.shard not in cache.cached and ("raw" in shard.outputs or not shard.image_ids):
                    raw = shard.outputs.get("raw", np.zeros((0, 1, 1, 3), np.uint8))
                    self.store.dataset(cache.relative).write_part(shard.shard, pixel_table(
                        shard.image_ids, [position[i] for i in shard.image_ids], raw,
                        [(i, why, position[i]) for i, why in shard.failed]), row_group_size=PIXEL_ROW_GROUP, compression="none")
                    filled += 1
                rows += len(shard.image_ids)
                self._failed(shard.failed)
        pixels: str | dict[str, Any] = "decoded"
        if cache:
            dataset = self.store.dataset(cache.relative)
            if not dataset.missing_parts(range(self.n_shards)) and not dataset.is_complete(cache.key):
                dataset.commit(cache.key, self._rows(dataset), head=[repr(step) for step in cache.format.head])
            read = len([s for s in todo if s in cache.cached])
            pixels = {"cache": cache.relative, "shards_read": read, "shards_decoded": len(todo) - read, "shards_cached": filled}
        for layer in pending:
            units = self._units(datasets[layer])
            datasets[layer].commit(hashes[layer], self._rows(datasets[layer]), units=units,
                                   block_size=model.block_sizes[layer], checkpoint_id=model.checkpoint_id)
        self.record.stage("RECORD", f"{model.config.label}: {', '.join(pending)}", "done", time.perf_counter() - started,
                          shards=len(todo), rows=rows, pixels=pixels, **clock.summary())
        return hashes

    def _pixel_cache(self, model: _Model) -> PixelCache | None:
        """The store's decoded pixels for this model's preprocessing head (``None``: not cacheable, or
        ``record.pixel_cache`` is off), begun for this probe set: the shards already there are read,
        the others are decoded and written as RECORD goes."""
        c = self.config
        pixel_format = split_preprocess(model.preprocess) if c.record.pixel_cache else None
        if pixel_format is None or pixel_format.id is None:
            return None
        dataset = self.store.pixels(self.probe_id, pixel_format.id)
        key = config_hash({"probe": self.probe_id, "pixels": pixel_format.id, "shard": c.probe.shard_size})
        return PixelCache(self.store.root, dataset.relative, key, pixel_format, frozenset(dataset.begin(key)))

    # -- REDUCE ----------------------------------------------------------------------------------
    def _reduce(self, model: _Model, layer: str, activation_hash: str, sources: list[_Source]) -> list[LabelEntry]:
        c = self.config
        entries = []
        activations = None
        for source in sources:
            targets = {}
            for method in c.reduce.methods:
                dataset = self.store.labels(model.checkpoint_id, self.probe_id, layer, method, source.concepts.id,
                                            source.encoder_id)
                key = config_hash({"activations": activation_hash, "source": source.encoder_id,
                                   "concepts": source.concepts.id, "method": method,
                                   "params": c.reduce.params.get(method, {}), "k": c.reduce.top_k, "dtype": c.reduce.dtype})
                entries.append(LabelEntry(model.config.label, model.checkpoint_id, layer, method, source.name,
                                          source.concepts.id, source.encoder_id, dataset.relative))
                if self._skip("REDUCE", dataset, key):
                    self._identified(model, layer, source, method, dataset.marker().get("identification"))
                else:
                    targets[method] = (dataset, key)
            if not targets:
                continue
            started = time.perf_counter()
            if activations is None:
                ids, activations = _read_activations(self.store.activations(model.checkpoint_id, self.probe_id, layer))
            concept_source, a = self._concept_source(source, ids, activations)
            threads = c.ray.torch_threads or max(1, int(self.resources.cpus))
            results = reduce_layer(a, concept_source, list(targets), c.reduce.params, c.reduce.top_k,
                                   c.reduce.concept_shard, c.reduce.dtype, self.resources, threads)
            truth = self._truth(a.shape[1], source)
            ranks = identification_ranks(a, concept_source, list(targets), c.reduce.params, truth, c.reduce.dtype,
                                         self.resources, threads) if truth else {}
            block = self.store.activations(model.checkpoint_id, self.probe_id, layer).marker().get("block_size", 1)
            for method, (dataset, key) in targets.items():
                values, index = results[method]
                ident = NeuronIdentification(torch.from_numpy(np.array(ranks[method]))).as_dict() if method in ranks else None
                if ident is not None and concept_source.concept_emb is not None and truth is not None:
                    ident["text_cosine"] = paired_embedding_cosine(concept_source.concept_emb, index[:, 0], truth)
                dataset.begin(key)
                dataset.write_part(0, _label_table(values, index, source.concepts, block))
                dataset.commit(key, values.size, identification=ident, images=len(a))
                self._identified(model, layer, source, method, ident)
            self.record.stage("REDUCE", f"{model.config.label}/{layer}/{source.name}: {', '.join(targets)}", "done",
                              time.perf_counter() - started, units=a.shape[1], concepts=len(source.concepts), images=len(a))
        return entries

    def _concept_source(self, source: _Source, ids: list[str], activations: np.ndarray) -> tuple[ConceptSource, np.ndarray]:
        """P's rows aligned with the activation rows by image id (images unreadable anywhere are left out)."""
        if source.label_scores is not None:
            position = {im.image_id: i for i, im in enumerate(self.probe.images)}
            return ConceptSource(scores=source.label_scores[[position[i] for i in ids]]), activations
        images = self.store.image_embeddings(source.encoder_id, self.probe_id).read()
        row = {image_id: r for r, image_id in enumerate(images["image_id"].to_pylist())}
        keep = [i for i, image_id in enumerate(ids) if image_id in row]
        emb = np.stack(images["embedding"].to_numpy(zero_copy_only=False)) if images.num_rows else np.zeros((0, 1))
        emb = emb[[row[ids[i]] for i in keep]].astype(np.float32)
        texts = self.store.concept_embeddings(source.encoder_id, source.concepts.id).read()
        concept_emb = np.stack(texts["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
        return ConceptSource(image_emb=emb, concept_emb=concept_emb), activations[keep]

    def _truth(self, units: int, source: _Source) -> list[int] | None:
        """Each output unit's own class, when a layer has one unit per class and the concepts name them all."""
        classes = self.probe.classes or ()
        if units != len(classes) or not set(classes) <= set(source.concepts.concepts):
            return None
        return source.concepts.index_of(list(classes))

    def _identified(self, model: _Model, layer: str, source: _Source, method: str, ident: dict | None) -> None:
        if not ident:
            return
        self.record.data["identification"].append(
            {"model": model.config.label, "layer": layer, "source": source.name, "method": method, **ident})
        self.console.print(
            f"neuron identification {model.config.label}/{layer} ({method}, {source.name}): "
            f"top-1 {ident['top1']:.0%}, top-5 {ident['top5']:.0%}, mean rank {ident['mean_rank']:.2f} "
            f"over {ident['units']} units" + (f", text cosine {ident['text_cosine']:.3f}" if "text_cosine" in ident else "")
        )

    # -- plumbing --------------------------------------------------------------------------------
    @functools.cached_property
    def resources(self) -> Resources:
        """The cluster, joined (or started) only once some stage has work to do."""
        resources = connect(self.config.ray)
        self.record.data["cluster"] = {"cpus": resources.cpus, "gpus": resources.gpus}
        return resources

    @functools.cached_property
    def handle(self) -> ProbeHandle:
        """What actors open the probe set from (its config, checked against the driver's copy)."""
        return ProbeHandle.of(self.config.probe, self.probe)

    @functools.cached_property
    def pool(self) -> Pool:
        r = self.config.ray
        return plan_pool(self.resources, r.actors, r.actor_cpus, r.read_cpus, r.readers, r.torch_threads)

    def _skip(self, stage: str, dataset: Dataset, key: str) -> bool:
        if dataset.is_complete(key):
            self.record.stage(stage, dataset.relative, "skipped", 0.0, rows=dataset.marker().get("rows"))
            return True
        return False

    def _todo(self, kept: list[int]) -> list[int]:
        have = set(kept)
        return [s for s in range(self.n_shards) if s not in have]

    def _rows(self, dataset: Dataset) -> int:
        rows = 0
        for i in dataset.parts():
            with self.store.fs.open(self.store.path(f"{dataset.relative}/{dataset.part_name(i)}"), "rb") as handle:
                rows += pq.ParquetFile(handle).metadata.num_rows
        return rows

    def _units(self, dataset: Dataset) -> int:
        first = dataset.parts()[0]
        with self.store.fs.open(self.store.path(f"{dataset.relative}/{dataset.part_name(first)}"), "rb") as handle:
            return len(pq.read_schema(handle).names) - 1

    def _failed(self, failed: list[tuple[str, str]]) -> None:
        if failed:
            known = {f[0] for f in self.record.data["failed_images"]}
            self.record.data["failed_images"] += [list(f) for f in failed if f[0] not in known]
            self.record.save()

    def _progress(self, title: str, shards: list[int]):
        size = self.config.probe.shard_size
        total = sum(min(size, len(self.probe) - s * size) for s in shards)
        return _ProgressBar(title, total, self.console, self.config.ray.progress)


class _Throughput:
    """Start-up latency (until the first chunk is back: actors started, models loaded) and the rate after it."""

    def __init__(self, started: float):
        self.started, self.first, self.last, self.images_after_first = started, None, None, 0

    def wrap(self, advance):
        def counted(n: int) -> None:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            else:
                self.images_after_first += n
            self.last = now
            advance(n)

        return counted

    def summary(self) -> dict[str, float]:
        if self.first is None or self.last is None or self.last <= self.first:
            return {}
        return {"startup_s": round(self.first - self.started, 3),
                "images_per_s_after_startup": round(self.images_after_first / (self.last - self.first), 1)}


class _ProgressBar:
    def __init__(self, title: str, total: int, console: Console, enabled: bool):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("images"), TimeElapsedColumn(), console=console, disable=not enabled,
                                 transient=False)
        self.task = self.progress.add_task(title, total=total)

    def __enter__(self):
        self.progress.start()
        return lambda n: self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _activation_table(ids: list[str], acts: np.ndarray, block_size: int, layer: str, model: _Model, pool: str) -> pa.Table:
    names = unit_names(acts.shape[1], block_size) if acts.size else []
    columns = {"image_id": pa.array(ids, pa.string())}
    for j, name in enumerate(names):
        columns[name] = pa.array(np.ascontiguousarray(acts[:, j]), pa.float32())
    metadata = {"layer": layer, "units": str(len(names)), "block_size": str(block_size),
                "model": model.config.label, "checkpoint_id": model.checkpoint_id, "conv_pool": pool}
    return pa.table(columns).replace_schema_metadata({f"discover.{k}": v for k, v in metadata.items()})


def _read_activations(dataset: Dataset) -> tuple[list[str], np.ndarray]:
    table = dataset.read()
    units = [n for n in table.column_names if n != "image_id"]
    acts = np.empty((table.num_rows, len(units)), dtype=np.float32)
    for j, name in enumerate(units):
        acts[:, j] = table[name].to_numpy()
    return table["image_id"].to_pylist(), acts


def _label_table(values: np.ndarray, index: np.ndarray, concepts: ConceptSet, block_size: int) -> pa.Table:
    n_units, k = values.shape
    names = unit_names(n_units, block_size)
    unit = np.repeat(np.arange(n_units), k)
    blocked = block_size > 1
    return pa.table({
        "unit": pa.array([names[u] for u in unit], pa.string()),
        "block": pa.array(unit // block_size if blocked else [None] * len(unit), pa.int32()),
        "index_in_block": pa.array(unit % block_size if blocked else [None] * len(unit), pa.int32()),
        "rank": pa.array(np.tile(np.arange(k), n_units), pa.int16()),
        "concept": pa.array([concepts[int(i)] for i in index.reshape(-1)], pa.string()),
        "concept_index": pa.array(index.reshape(-1), pa.int32()),
        "score": pa.array(values.reshape(-1).astype(np.float32), pa.float32()),
    })
