"""Typed dissection configs: YAML in, a validated and resolved config out.

Strings may name environment variables as ``${NAME}`` or ``${NAME:-default}`` (expanded by a plain
pattern, never evaluated). Relative local paths resolve against the directory the job is started in
and are stored absolute, so Ray workers (whose working directory may differ) and the run record see
the same files. Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import fsspec
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from discover_ray.concepts import BUILTIN
from discover_ray.encoders.clip import ClipSpec
from discover_ray.models import ModelSpec
from discover_ray.probe import ProbeError, ProbeSet
from discover_ray.similarity import METHODS, resolve_params
from discover_ray.store import DEFAULT_ROOT, config_hash

__all__ = ["ConfigError", "DissectConfig", "load_config", "expand_env", "validate"]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The config file cannot be used; the message names the field and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Config = TypeVar("_Config", bound=BaseModel)


def _absolute(path: str | None) -> str | None:
    """Local paths become absolute; URIs (``s3://…``) and built-in names stay as they are."""
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


class ProbeConfig(_Strict):
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

    @field_validator("source")
    @classmethod
    def _resolve(cls, value: str) -> str:
        return _absolute(value) or value

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
        return probe


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


class ModelConfig(_Strict):
    """A target model: a built-in or timm ``name`` (or a ``module:function`` builder) plus weights."""

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
        return _absolute(value)

    @property
    def label(self) -> str:
        return self.alias or self.name

    def spec(self) -> ModelSpec:
        return ModelSpec(**self.model_dump(exclude={"alias", "layers"}))


class LabelConcepts(_Strict):
    """P from the probe set's labels: one-hot classes, plus superclasses (a built-in table or a mapping)."""

    kind: Literal["labels"] = "labels"
    superclasses: str | dict[str, list[str]] | None = None


class ClipConcepts(_Strict):
    """P from an open_clip encoder: image embeddings · concept-text embeddings."""

    kind: Literal["clip"] = "clip"
    model: str
    pretrained: str | None = None
    seed: int = 0
    concepts: str
    batch_size: int = Field(256, ge=1)

    @field_validator("pretrained", "concepts")
    @classmethod
    def _resolve(cls, value: str | None) -> str | None:
        if value is None or value in BUILTIN or "://" in value or not Path(value).expanduser().exists():
            return value  # a tag or built-in name, or a file that will be reported missing
        return _absolute(value)

    def spec(self) -> ClipSpec:
        return ClipSpec(self.model, self.pretrained, self.seed)


ConceptSource = Annotated[LabelConcepts | ClipConcepts, Field(discriminator="kind")]


class RecordConfig(_Strict):
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


class ReduceConfig(_Strict):
    methods: list[str] = Field(default_factory=lambda: ["soft_wpmi"], min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    top_k: int = Field(5, ge=1)
    concept_shard: int = Field(8192, ge=1, description="concepts per REDUCE task")
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="after")
    def _known(self) -> ReduceConfig:
        for method in self.methods:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for method, params in self.params.items():
            if method not in METHODS:
                raise ValueError(f"params given for unknown method {method!r}; choose from {', '.join(METHODS)}")
            resolve_params(method, params)
        return self


class RayConfig(_Strict):
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


class DissectConfig(_Strict):
    """One dissection: a probe set, target models and their layers, concept sources, methods."""

    name: str = "dissect"
    store: str = DEFAULT_ROOT
    probe: ProbeConfig
    models: list[ModelConfig] = Field(min_length=1)
    concepts: list[ConceptSource] = Field(min_length=1)
    record: RecordConfig = RecordConfig()
    reduce: ReduceConfig = ReduceConfig()
    ray: RayConfig = RayConfig()
    seed: int = 0

    @field_validator("store")
    @classmethod
    def _resolve(cls, value: str) -> str:
        return _absolute(value) or value

    @property
    def run_id(self) -> str:
        """Content id of what is computed (not where, nor how wide): re-running the same config resumes it."""
        return config_hash(self.model_dump(mode="json", exclude={"ray", "store", "name"}))

    @property
    def submission_id(self) -> str:
        return f"dissect-{self.run_id}"


def expand_env(value: Any) -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"the config uses ${{{name}}} but the environment variable {name} is not set")

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value


def load_config(source: str | Path | dict[str, Any], **overrides: Any) -> DissectConfig:
    """A validated config from a YAML file (or an already parsed dict); ``overrides`` replace top-level keys."""
    return validate(DissectConfig, source, "dissection", **overrides)


def validate(model: type[_Config], source: str | Path | dict[str, Any], what: str, **overrides: Any) -> _Config:
    """Read YAML (or take a parsed dict), expand ``${VAR}``, apply top-level ``overrides``, and validate."""
    if isinstance(source, dict):
        raw: Any = dict(source)
        where = "config"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(source)!r} not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(source)!r} is not valid YAML: {err}") from None
        where = str(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values")
    raw = expand_env({**raw, **{k: v for k, v in overrides.items() if v is not None}})
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{where} is not a valid {what} config: {problems}") from None
