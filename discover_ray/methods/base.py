"""The interface every labelling method implements, and what a method is given to work on.

A method names its parameter model, what it ``needs`` from the pipeline and which table it ``writes``
(a kind of ``discover_ray.schema``). Its work on one layer is a list of plain ``tasks`` (e.g. shards of
the concept axis, chunks of neurons), each run by ``run`` anywhere (in this process or in a Ray task) on
the layer's ``LayerInputs``; ``follow_up`` may ask for a further round that needs their results (e.g.
Describe-and-Dissect's (unit, candidate) items after its units' candidates); ``assemble`` turns all results
into the table and the extra facts (e.g. neuron identification) that go into the dataset's marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ValidationError

from discover_ray.concepts import ConceptSet
from discover_ray.errors import ConfigError

__all__ = ["NEEDS", "ConceptScores", "LayerInputs", "Method", "MethodOutput", "ReduceSettings", "readonly_tensor"]

#: What a method may ask the pipeline for:
#: - activations: the layer's pooled activations A [N, K] over the probe set (rows aligned with P);
#: - concept_scores: P [N, M] from a concept source, as a matrix or as image and concept embeddings;
#: - top_images: each unit's most activating probe images (derived from the activations);
#: - image_bytes: the probe images themselves (opened where the task runs);
#: - splits: a seeded train / validation split of the probe images;
#: - backends: model backends (captioner, summariser, generator) of the run's config;
#: - model: the target model itself, to show it new images (crops, generated images).
NEEDS = frozenset({"activations", "concept_scores", "top_images", "image_bytes", "splits", "backends", "model"})


@dataclass(frozen=True)
class ReduceSettings:
    """Settings every method of a run shares (``reduce:`` in the config)."""

    top_k: int = 5
    dtype: str = "float32"
    concept_shard: int = 8192
    seed: int = 0


@dataclass(frozen=True)
class ConceptScores:
    """P, the image–concept scores: a matrix [N, M] (label concepts) or image [N, d] and concept [M, d]
    embeddings (CLIP concepts), rows aligned with the activation rows."""

    scores: np.ndarray | None = None
    image_emb: np.ndarray | None = None
    concept_emb: np.ndarray | None = None
    calibration: tuple[float, float] | None = None  # (a, b) of σ(a·(cos + b)), for embedding sources
    source: str = ""  # the concept source's name, for messages

    @property
    def n_concepts(self) -> int:
        if self.scores is not None:
            return int(self.scores.shape[1])
        assert self.concept_emb is not None
        return int(self.concept_emb.shape[0])

    def values(self, rows: np.ndarray | None = None, columns: np.ndarray | None = None) -> np.ndarray:
        """C [N, M] in [0, 1], the concept values Linear Explanations and simulation read: the label matrix as it
        is, or σ(a·(cos + b)) of the embeddings with the source's calibration (float32)."""
        if self.scores is not None:
            out = self.scores if rows is None else self.scores[rows]
            return np.ascontiguousarray(out if columns is None else out[:, columns], dtype=np.float32)
        if self.calibration is None:
            raise ConfigError(
                f"concept source {self.source!r} has no calibration (a, b) for concept values σ(a·(cos + b)); set "
                f"calibration: {{a: ..., b: ...}} on it, or fit one with `discover calibrate CONFIG --source {self.source}`")
        assert self.image_emb is not None and self.concept_emb is not None
        a, b = self.calibration
        images = self.image_emb if rows is None else self.image_emb[rows]
        texts = self.concept_emb if columns is None else self.concept_emb[columns]
        cos = readonly_tensor(np.ascontiguousarray(images, np.float32)) @ readonly_tensor(
            np.ascontiguousarray(texts, np.float32)).T
        return torch.sigmoid(a * (cos + b)).numpy()

    def kwargs(self) -> dict[str, torch.Tensor]:
        """P as the similarity kernels take it (``concept_scores=`` or ``image_emb=`` + ``concept_emb=``)."""
        if self.scores is not None:
            return {"concept_scores": readonly_tensor(self.scores)}
        return {"image_emb": readonly_tensor(self.image_emb), "concept_emb": readonly_tensor(self.concept_emb)}


@dataclass
class LayerInputs:
    """Everything a method's tasks may read for one (model, layer, concept source)."""

    model: str
    layer: str
    image_ids: list[str]
    #: A [N, K] float32, or a reference that reads it where the task runs (``dissection.stored_activations``:
    #: the driver then never holds the layer); read it as ``activations``
    values: Any
    block_size: int
    settings: ReduceSettings
    concepts: ConceptSet | None = None
    scores: ConceptScores | None = None
    truth: list[int] | None = None  # each unit's true concept index (a classifier's output layer), when known
    probe: Any = None  # pipeline.chunks.ProbeHandle, for methods that need image bytes
    splits: dict[str, np.ndarray] | None = None  # row positions of the train / val / test images (methods that need splits)
    target: Any = None  # describe.target.TargetRef: the model at this layer (methods that need the model)
    backends: Any = None  # backends.settings.BackendSet (methods that need backends)
    scorer: Any = None  # encoders.clip.ClipSpec of the run's CLIP source that scores images (methods that need backends)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def activations(self) -> np.ndarray:
        """A [N, K] float32, read in this process the first time a task here asks for it."""
        return self.values if isinstance(self.values, np.ndarray) else self.values.load()

    @property
    def units(self) -> int:
        return int(self.values.shape[1])


@dataclass
class MethodOutput:
    """A method's result on one layer: its table (of the kind it ``writes``) and facts for the marker."""

    table: pa.Table
    marker: dict[str, Any] = field(default_factory=dict)


class Method:
    """A labelling method. Subclasses set the class attributes and implement ``tasks``, ``run``, ``assemble``."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    needs: ClassVar[frozenset[str]] = frozenset({"activations"})
    writes: ClassVar[str] = "labels"
    #: whether the method ranks concepts of a concept set (then it is run once per concept source)
    per_concept_source: ClassVar[bool] = True
    #: whether it reads concept values C in [0, 1] (``ConceptScores.values``), which a CLIP source gives only
    #: with a calibration
    reads_concept_values: ClassVar[bool] = False

    def params(self, given: dict[str, Any] | None) -> BaseModel:
        """The method's parameters with defaults filled in; a misspelt or bad one is an error naming it."""
        try:
            return self.Params(**(given or {}))
        except ValidationError as err:
            fields = ", ".join(self.Params.model_fields)
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"bad parameters for method {self.name!r}: {problems} (valid: {fields})") from None

    def check(self, params: BaseModel, images: int) -> None:
        """Raise before any work if the method cannot run on a probe set of ``images`` images."""

    def layers(self, params: BaseModel) -> list[str] | None:
        """The recorded layers the method runs on (None: every one), when its parameters choose some."""
        return None

    def validate(self, inputs: LayerInputs, params: BaseModel) -> None:
        """Raise, on the driver and before any task, if the layer's inputs cannot be used (naming the layer)."""

    def tasks(self, inputs: LayerInputs, params: BaseModel) -> Sequence[Any]:
        return [None]

    def run(self, task: Any, inputs: LayerInputs, params: BaseModel) -> Any:
        raise NotImplementedError

    def follow_up(self, results: list[Any], inputs: LayerInputs, params: BaseModel) -> Sequence[Any]:
        """Tasks of a further round that need the results so far (all rounds, in order); none by default."""
        return []

    def assemble(self, results: list[Any], inputs: LayerInputs, params: BaseModel) -> MethodOutput:
        raise NotImplementedError


def readonly_tensor(array: np.ndarray | None) -> torch.Tensor:
    """A tensor over an array that may be a read-only object-store view; the kernels only read it."""
    import warnings

    assert array is not None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
