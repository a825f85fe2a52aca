"""Typed dissection configs: YAML in, a validated and resolved config out.

Strings may name environment variables as ``${NAME}`` or ``${NAME:-default}`` (see ``config_files``).
Relative local paths resolve against the directory the job is started in and are kept absolute, so Ray
workers (whose working directory may differ) see the same files. Unknown keys are errors that list the
valid ones; methods and concept-source kinds are checked against their registries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import fsspec
import pyarrow.parquet as pq
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from discover_ray.backends.base import BackendConfig
from discover_ray.backends.settings import BackendsConfig, parse_section
from discover_ray.checkpoints import checkpoints_of
from discover_ray.config_files import Strict, absolute, expand_env, validate
from discover_ray.errors import ConfigError, ProbeError
from discover_ray.explain.splits import Splits, column_splits, seeded_splits
from discover_ray.methods import ReduceSettings, get_method
from discover_ray.models import ModelSpec
from discover_ray.probe import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, ImageLimits, ProbeSet
from discover_ray.sources import SourceConfig, parse_source
from discover_ray.store import DEFAULT_ROOT, is_safe_segment

__all__ = [
    "SCORINGS", "ConfigError", "DissectConfig", "ModelConfig", "ProbeConfig", "RayConfig", "RecordConfig",
    "ReduceConfig", "SimulateConfig", "SplitConfig", "VerifyConfig", "expand_env", "load_config",
]


class ProbeConfig(Strict):
    """Which images to show the models (see ``discover_ray.probe``)."""

    source: str
    kind: Literal["auto", "folder", "parquet", "manifest"] = "auto"
    folder_labels: bool = True
    image_column: str = "image"
    id_column: str | None = None
    label_column: str | None = None
    label_name_column: str | None = None
    text_column: str | None = Field(None, description="captions (a string or a list per image), for contrastive training")
    uri_column: str = "uri"
    limit: int | None = Field(None, ge=1)
    sample: int | None = Field(None, ge=1)
    seed: int = 0
    shard_size: int = Field(4096, ge=1)
    failure_budget: float = Field(0.001, ge=0, le=1)
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="an image whose header declares more pixels is not decoded (a failed "
        "image, like a corrupt one): decompression bombs; the default is Pillow's own limit")
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES, ge=1, description="an image file larger than this is not read (a failed image)")

    @field_validator("source")
    @classmethod
    def _resolve(cls, value: str) -> str:
        return absolute(value) or value

    def open(self) -> ProbeSet:
        """The probe set, with ``limit`` / ``sample`` applied; fails clearly if it is empty or unreadable."""
        kind = self.kind if self.kind != "auto" else _probe_kind(self.source, self.image_column)
        if kind == "folder":
            probe = ProbeSet.from_folder(self.source, labels=self.folder_labels)
        elif kind == "parquet":
            probe = ProbeSet.from_parquet(
                self.source,
                image_column=self.image_column,
                id_column=self.id_column or "image_id",
                label_column=self.label_column or "label",
                label_name_column=self.label_name_column or "label_name",
                text_column=self.text_column,
            )
        else:
            probe = ProbeSet.from_manifest(
                self.source,
                uri_column=self.uri_column,
                id_column=self.id_column,
                label_column=self.label_column,
                label_name_column=self.label_name_column,
                text_column=self.text_column,
            )
        if self.sample is not None:
            probe = probe.sample(self.sample, seed=self.seed)
        if self.limit is not None:
            probe = probe.limit(self.limit)
        return probe.capped(ImageLimits(self.max_pixels, self.max_image_bytes))

    def identity(self) -> dict[str, Any]:
        """What selects and cuts the images, without where they are (the probe id names their content). The
        image limits count only when changed (the probe id also counts the images they refuse), so the ids of
        runs made before there were limits stand."""
        defaults = {name for name in ("max_pixels", "max_image_bytes")
                    if getattr(self, name) == type(self).model_fields[name].default}
        return self.model_dump(mode="json", exclude={"source", "failure_budget", *defaults})


def _probe_kind(source: str, image_column: str) -> str:
    fs, path = fsspec.core.url_to_fs(source)
    if fs.isdir(path):
        return "folder"
    if not fs.exists(path):
        raise ProbeError(f"probe source {source!r} not found")
    if path.lower().endswith(".csv"):
        return "manifest"
    with fs.open(path, "rb") as handle:
        names = pq.read_schema(handle).names
    return "parquet" if image_column in names else "manifest"


class ModelConfig(Strict):
    """A target model: a model-family name (or a ``module:function`` builder) plus weights and layers."""

    name: str
    alias: str | None = None
    checkpoint: str | None = None
    builder: str | None = None
    pretrained: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    layers: list[str] = Field(min_length=1)

    @field_validator("checkpoint")
    @classmethod
    def _resolve(cls, value: str | None) -> str | None:
        return absolute(value)

    @field_validator("layers")
    @classmethod
    def _distinct(cls, layers: list[str]) -> list[str]:
        repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
        if repeated:
            raise ValueError(f"layers {repeated} are listed more than once")
        return layers

    @field_validator("alias", "layers")
    @classmethod
    def _segments(cls, value: Any, info: Any) -> Any:
        """Layer names are folders of the store and an alias names a model's outputs: a name that could point
        outside its folder is refused with the config, before any work."""
        for name in [value] if isinstance(value, str) else value or []:
            if not is_safe_segment(name):
                what, like = ("alias", "a short name such as 'resnet18_seed1'") if info.field_name == "alias" else \
                    ("layer", "a module name such as 'layer4.1.conv2'")
                raise ValueError(f"{what} {name!r} cannot be part of a store path (no '/' or '\\', not '.' or "
                                 f"'..', no control characters); give {like}")
        return value

    @property
    def label(self) -> str:
        return self.alias or self.name

    def spec(self) -> ModelSpec:
        return ModelSpec(**self.model_dump(exclude={"alias", "layers"}))

    def identity(self) -> dict[str, Any]:
        """The model without where its weights are (the checkpoint's sha256 names them)."""
        return self.model_dump(mode="json", exclude={"checkpoint"})


class RecordConfig(Strict):
    conv_pool: Literal["mean", "max"] = "mean"
    token_pool: Literal["cls", "mean", "max"] = "cls"
    competition: Literal["sample", "argmax"] = Field(
        "sample",
        description="LWTA layers: one seeded stochastic pass (the paper: eval() does not stop sampling) or argmax winners",
    )
    batch_size: int = Field(256, ge=1, description="images per forward pass; fixed chunks of each shard")
    pixel_cache: bool = Field(
        True,
        description="decode each probe image once per preprocessing (the DECODE stage) and record every model "
        "that shares it from the cached uint8 pixels; the activations are the same either way",
    )


class ReduceConfig(Strict):
    methods: list[str] = Field(default_factory=lambda: ["soft_wpmi"], min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    top_k: int = Field(5, ge=1)
    concept_shard: int = Field(8192, ge=1, description="concepts per REDUCE task")
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="after")
    def _known(self) -> ReduceConfig:
        for method in [*self.methods, *self.params]:
            get_method(method)  # unknown: an error that lists the registered methods
        for method, params in self.params.items():
            get_method(method).params(params)
        return self

    def settings(self, seed: int) -> ReduceSettings:
        return ReduceSettings(self.top_k, self.dtype, self.concept_shard, seed)


SCORINGS = ("correlation", "ablation_optim", "ablation_norm")


class SplitConfig(Strict):
    """Train / validation / test images (Linear Explanations fits on train, chooses on val; scoring uses test)."""

    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    column: str | None = Field(None, description="a probe-set column naming each image's split (train / val / test)")

    @field_validator("fractions")
    @classmethod
    def _sum(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in value) or abs(sum(value) - 1) > 1e-6:
            raise ValueError(f"three non-negative fractions summing to 1, got {list(value)}")
        return value

    def make(self, probe: ProbeSet) -> Splits:
        ids = [im.image_id for im in probe.images]
        if self.column is not None:
            try:
                return column_splits(ids, probe.column(self.column), self.column)
            except ProbeError as err:
                raise ConfigError(f"simulate.splits.column: {err}") from None
        return seeded_splits(ids, self.seed, self.fractions)


class SimulateConfig(Strict):
    """Simulation scoring: how well each labelling predicts its units' activations on the test images."""

    splits: SplitConfig = SplitConfig()
    simulator: str | None = Field(None, description="the concept source that simulates (default: each labelling's own)")
    scorings: list[Literal["correlation", "ablation_optim", "ablation_norm"]] = Field(
        default_factory=lambda: list(SCORINGS),
        description="ablation scorings apply to layers that feed the model's linear head (ResNet layer4 → fc)")
    methods: list[str] | None = Field(None, description="whose labels to score (default: every method of the run)")
    temperature: float = Field(1.1, gt=0, description="softmax temperature of the ablation loss")


class VerifyConfig(Strict):
    """Verification of labels on generated images (CoSy): AUC and MAD of each unit's label against probe images."""

    generator: SerializeAsAny[BackendConfig] | None = Field(
        None, description="a generator backend section (default: backends.generator)")
    methods: list[str] | None = Field(None, description="whose labels to verify (default: every method of the run)")
    images: int = Field(10, ge=1, description="generated images per label")
    control: int = Field(200, ge=2, description="probe images in the control set")
    seed: int = 0

    @field_validator("generator", mode="before")
    @classmethod
    def _generator(cls, value: Any) -> Any:
        return parse_section("generator", value)


class RayConfig(Strict):
    """Where and how wide to run. Not part of the run id: the same dissection on another cluster is the same run."""

    address: str | None = None
    num_cpus: float | None = Field(None, gt=0, description="CPUs of a local cluster started on demand")
    actors: int | None = Field(None, ge=1, description="inference actors (default: one per GPU, else 1)")
    actor_cpus: float | None = Field(None, gt=0, description="CPUs reserved per actor (default 1 with a GPU, else 0.5)")
    read_cpus: float = Field(0.25, gt=0, description="CPUs reserved per read/decode actor")
    readers: int | None = Field(
        None, ge=0, description="decode actors at most (default 4 per GPU actor; 0 on CPU: actors decode their own chunks)"
    )
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per CPU actor (default: node CPUs / actors)")
    progress: bool = True
    no_progress_timeout_s: float = Field(
        600, gt=0, description="a stage that makes no progress this long fails (ClusterStalled) instead of waiting "
        "forever for a lost node's work; longer than the slowest chunk (or worker start-up) takes")
    max_retries: int = Field(
        3, ge=0, description="times a chunk or task whose worker died is retried (and the worker restarted) "
        "before the stage fails naming it (StageCrashed)")


class DissectConfig(Strict):
    """One dissection: a probe set, target models and their layers, concept sources, methods."""

    name: str = "dissect"
    store: str = DEFAULT_ROOT
    probe: ProbeConfig
    models: list[ModelConfig] = Field(min_length=1)
    concepts: list[SerializeAsAny[SourceConfig]] = Field(min_length=1)
    record: RecordConfig = RecordConfig()
    reduce: ReduceConfig = ReduceConfig()
    simulate: SimulateConfig | None = None
    backends: BackendsConfig | None = None
    verify: VerifyConfig | None = None
    ray: RayConfig = RayConfig()
    seed: int = 0

    @field_validator("store")
    @classmethod
    def _resolve(cls, value: str) -> str:
        return absolute(value) or value

    @field_validator("models", mode="before")
    @classmethod
    def _checkpoints(cls, value: Any) -> Any:
        """A model with ``checkpoints:`` (a training run folder, a glob or a list) becomes one model per
        checkpoint, ``{alias or name}@{checkpoint}``: many checkpoints of one architecture in one job."""
        if not isinstance(value, list):
            return value
        out = []
        for i, raw in enumerate(value):
            if not isinstance(raw, dict) or raw.get("checkpoints") is None:
                out.append(raw)
                continue
            if raw.get("checkpoint") is not None:
                raise ValueError(f"models.{i} gives both checkpoint and checkpoints; keep one")
            where = raw["checkpoints"]
            if not isinstance(where, (str, list)) or (isinstance(where, list) and not all(isinstance(w, str) for w in where)):
                raise ValueError(f"models.{i}.checkpoints must be a training run folder, a glob of weight files or a "
                                 "list of weight files")
            label = raw.get("alias") or raw.get("name", "model")
            for checkpoint in checkpoints_of([absolute(w) or w for w in where] if isinstance(where, list) else
                                             absolute(where) or where):
                out.append({**{k: v for k, v in raw.items() if k != "checkpoints"}, "checkpoint": checkpoint.uri,
                            "alias": f"{label}@{checkpoint.name}"})
        return out

    @field_validator("concepts", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for i, raw in enumerate(value):
            try:
                out.append(parse_source(raw))
            except ValidationError as err:
                problems = "; ".join(f"concepts.{i}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise ValueError(problems) from None
        return out

    @model_validator(mode="after")
    def _unique(self) -> DissectConfig:
        for what, names in (("models", [m.label for m in self.models]), ("concept sources", [c.label for c in self.concepts])):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"two {what} are both called {repeated[0]!r}; give each its own "
                                 f"{'alias' if what == 'models' else 'name'}")
        if self.simulate is not None:
            names = [c.label for c in self.concepts]
            if self.simulate.simulator is not None and self.simulate.simulator not in names:
                raise ValueError(f"simulate.simulator {self.simulate.simulator!r} is not a concept source of this config; "
                                 f"sources: {', '.join(names)}")
            unknown = sorted(set(self.simulate.methods or ()) - set(self.reduce.methods))
            if unknown:
                raise ValueError(f"simulate.methods {unknown} are not in reduce.methods ({', '.join(self.reduce.methods)})")
        if self.verify is not None:
            unknown = sorted(set(self.verify.methods or ()) - set(self.reduce.methods))
            if unknown:
                raise ValueError(f"verify.methods {unknown} are not in reduce.methods ({', '.join(self.reduce.methods)})")
            if self.verify.generator is None and (self.backends is None or self.backends.generator is None):
                raise ValueError("verify needs a generator: set verify.generator or backends.generator "
                                 "(e.g. {kind: world} or {kind: diffusers})")
        for method in self.reduce.methods:
            if "backends" in get_method(method).needs:
                for role in ("captioner", "summarizer", "generator"):
                    if self.backends is None or getattr(self.backends, role) is None:
                        raise ValueError(f"method {method} needs backends.{role}; e.g. backends: {{captioner: {{kind: "
                                         "blip}, summarizer: {kind: openai, model: ..., base_url: ...}, generator: "
                                         "{kind: diffusers}}")
        return self

    @property
    def splits(self) -> SplitConfig:
        return self.simulate.splits if self.simulate is not None else SplitConfig()

    def simulating(self) -> SimulateConfig | None:
        """The simulation to run: as configured, or the default one when a method needs splits (LE)."""
        if self.simulate is not None:
            return self.simulate
        if any("splits" in get_method(m).needs for m in self.reduce.methods):
            return SimulateConfig()
        return None

    def identity(self) -> dict[str, Any]:
        """What is computed, without where or how wide (``ray``, ``store``), its display name, or where its
        inputs are: with the inputs' content ids this is the run id."""
        return {
            "probe": self.probe.identity(),
            "models": [m.identity() for m in self.models],
            "concepts": [c.identity() for c in self.concepts],
            "record": self.record.model_dump(mode="json", exclude={"pixel_cache"}),
            "reduce": self.reduce.model_dump(mode="json", exclude={"concept_shard"}),
            **({"simulate": self.simulate.model_dump(mode="json")} if self.simulate is not None else {}),
            **({"backends": self.backends.model_dump(mode="json", exclude={"replay", "calls"})}
               if self.backends is not None else {}),
            **({"verify": self.verify.model_dump(mode="json")} if self.verify is not None else {}),
            "seed": self.seed,
        }


def load_config(source: str | Path | dict[str, Any], **overrides: Any) -> DissectConfig:
    """A validated config from a YAML file (or an already parsed dict); ``overrides`` replace top-level keys."""
    return validate(DissectConfig, source, "dissection", **overrides)

