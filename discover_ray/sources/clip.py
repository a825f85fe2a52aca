"""CLIP concepts: P = image embeddings · concept-text embeddings of an open_clip model (SigLIP included).

Two stages compute its data once per (encoder, probe set) and (encoder, concept set): EMBED of the probe
images (an actor pool, like RECORD) and EMBED of the concept texts (one task); every dissection with the
same encoder, probe set or concept set shares them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator

from discover_ray.concepts import BUILTIN, ConceptSet, load_concepts
from discover_ray.config_files import Strict, absolute
from discover_ray.encoders.clip import ClipEncoder, ClipSpec, check_clip
from discover_ray.methods.base import ConceptScores
from discover_ray.pipeline.stage import Head, ModelStage, Output, ShardOutput, TaskStage, shard_lengths, stage_key
from discover_ray.schema import VERSIONS, concept_embedding_table, image_embedding_table, read_embeddings
from discover_ray.sources.base import ConceptSourceKind, PreparedSource, SourceConfig, SourceContext
from discover_ray.sources.registry import register_source
from discover_ray.store import Dataset, config_hash

__all__ = ["Calibration", "ClipConcepts", "ClipSource", "EmbedImages", "EmbedTexts", "ImageEmbedder"]


class Calibration(Strict):
    """σ(a·(cos + b)): how an image–text cosine becomes the probability that the image shows the concept."""

    a: float = Field(gt=0)
    b: float


class ClipConcepts(SourceConfig):
    """P from an open_clip encoder: image embeddings · concept-text embeddings."""

    kind: Literal["clip"] = "clip"
    model: str
    pretrained: str | None = None
    seed: int = 0
    concepts: str
    batch_size: int = Field(256, ge=1)
    calibration: Calibration | None = Field(
        None, description="a, b of the concept values σ(a·(cos + b)) that Linear Explanations and simulation read; "
        "default: the published constants of the model, when it has them (`discover calibrate` fits them)")

    @field_validator("pretrained", "concepts")
    @classmethod
    def _resolve(cls, value: str | None) -> str | None:
        if value is None or value in BUILTIN or "://" in value or not Path(value).expanduser().exists():
            return value  # a tag or built-in name, or a file that will be reported missing
        return absolute(value)

    def default_name(self) -> str:
        return f"clip:{self.model}"

    def spec(self) -> ClipSpec:
        return ClipSpec(self.model, self.pretrained, self.seed)

    def identity(self) -> dict[str, Any]:
        # the weights and the concept file are named by content (the encoder and concept-set ids)
        return self.model_dump(mode="json", exclude={"name", "pretrained", "concepts"})

    def calibrated(self) -> tuple[float, float] | None:
        """(a, b) as configured, else the model's published constants, else None."""
        if self.calibration is not None:
            return self.calibration.a, self.calibration.b
        from discover_ray.explain.calibrate import published_calibration

        return published_calibration(self.model, self.pretrained)


class ImageEmbedder:
    """Loads the CLIP image tower once, embeds each loaded chunk (rows L2-normalised)."""

    def __init__(self, spec: ClipSpec, threads: int):
        torch.set_num_threads(threads)
        self.encoder = ClipEncoder(spec, "cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = np.asarray(batch["pixels"][0])
        if not len(pixels):
            return {}
        return {"embedding": self.encoder.encode_images(torch.from_numpy(np.array(pixels, copy=True))).numpy()[None]}


def embed_texts(payload: tuple[ClipSpec, list[str], int], task: Any) -> np.ndarray:
    """Concept-text embeddings [M, d], L2-normalised; on a GPU when the worker has one."""
    spec, texts, batch_size = payload
    encoder = ClipEncoder(spec, "cuda" if torch.cuda.is_available() else "cpu")
    return encoder.encode_text(texts, batch_size=batch_size).numpy()


class EmbedImages(ModelStage):
    name = "EMBED"

    def __init__(self, source: ClipSource, context: SourceContext):
        self.spec, self.dataset = source.spec, source.images
        expected = shard_lengths(len(context.probe), context.shard_size)
        super().__init__(f"{source.spec.describe()} images", [Output("images", self.dataset, expected)],
                         loader=f"clip:{source.encoder_id}", batch_size=source.config.batch_size)

    def transform(self) -> Any:
        return ClipEncoder(self.spec).preprocess  # the encoder's own transform (tag-specific mean/std included)

    def head(self, outputs, shards: frozenset[int]) -> Head:
        return Head("embed", ImageEmbedder, {"spec": self.spec}, shards)

    def write(self, outputs, shard: ShardOutput, head: dict[str, np.ndarray]) -> None:
        embeddings = head.get("embedding", np.zeros((0, 1), np.float32))
        self.dataset.write_part(shard.shard, image_embedding_table(shard.image_ids, embeddings, shard.failed))

    def marker(self, output: Output) -> dict[str, Any]:
        return {"encoder": self.spec.describe(), "failed": [list(f) for f in output.dataset.failed()]}


class EmbedTexts(TaskStage):
    name = "EMBED"
    compute = staticmethod(embed_texts)

    def __init__(self, source: ClipSource):
        self.source = source
        super().__init__(f"{source.spec.describe()} concepts {source.concepts.name}",
                         [Output("concepts", source.texts, {0: len(source.concepts)})])

    def load(self) -> tuple[ClipSpec, list[str], int]:
        return self.source.spec, list(self.source.concepts.concepts), self.source.config.batch_size

    def tasks(self, part: int, payload: Any) -> list[Any]:
        return [None]

    def assemble(self, part: int, results: list[Any], payload: Any) -> dict[str, pa.Table]:
        return {"concepts": concept_embedding_table(self.source.concepts.concepts, np.asarray(results[0]))}

    def marker(self, output: Output) -> dict[str, Any]:
        return {"encoder": self.source.spec.describe(), "concept_set": self.source.concepts.name}


class ClipSource(PreparedSource):
    config: ClipConcepts

    def __init__(self, config: ClipConcepts, concepts: ConceptSet, context: SourceContext):
        self.spec = config.spec()
        super().__init__(config, concepts, self.spec.id)
        images_key = stage_key("EMBED", "image_embeddings", VERSIONS["image_embeddings"], encoder=self.encoder_id,
                               probe=context.probe_id, shard=context.shard_size, batch=config.batch_size)
        texts_key = stage_key("EMBED", "concept_embeddings", VERSIONS["concept_embeddings"], encoder=self.encoder_id,
                              concepts=concepts.id)
        self.images: Dataset = context.store.dataset(f"embeddings/{self.encoder_id}/images/{context.probe_id}",
                                                     images_key, "image_embeddings")
        self.texts: Dataset = context.store.dataset(f"embeddings/{self.encoder_id}/concepts/{concepts.id}",
                                                    texts_key, "concept_embeddings")

    def has_values(self) -> bool:
        return self.config.calibrated() is not None

    def stages(self, context: SourceContext) -> list[Any]:
        return [EmbedImages(self, context), EmbedTexts(self)]

    def data_key(self) -> str:
        key = {"images": self.images.key, "concepts": self.texts.key}
        if self.config.calibration is not None:  # concept values change with it (similarity scores do not)
            key["calibration"] = self.config.calibrated()
        return config_hash(key)

    def data_paths(self) -> list[str]:
        return [self.images.relative, self.texts.relative]

    def load(self, image_ids: list[str]) -> tuple[ConceptScores, np.ndarray]:
        """The embeddings of the images that have one (unreadable images have none), in ``image_ids`` order."""
        ids, emb = read_embeddings(self.images.read())
        row = {image_id: r for r, image_id in enumerate(ids)}
        keep = np.array([i for i, image_id in enumerate(image_ids) if image_id in row], dtype=np.int64)
        image_emb = emb[[row[image_ids[i]] for i in keep]] if len(keep) else np.zeros((0, emb.shape[1]), np.float32)
        _, concept_emb = read_embeddings(self.texts.read())
        return ConceptScores(image_emb=image_emb.astype(np.float32), concept_emb=concept_emb.astype(np.float32),
                             calibration=self.config.calibrated(), source=self.name), keep


@register_source
class Clip(ConceptSourceKind):
    kind = "clip"
    Config = ClipConcepts

    def prepare(self, config: ClipConcepts, context: SourceContext) -> ClipSource:  # type: ignore[override]
        check_clip(config.spec())  # unknown model or tag, or weights that cannot be had offline: fail now
        concepts = load_concepts(config.concepts)
        if concepts.report.changed:
            context.notes.append(f"concept set {concepts.name}: {concepts.report.summary()}")
        return ClipSource(config, concepts, context)
