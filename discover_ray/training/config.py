"""Typed training configs: a model, a recipe (optimiser + schedule presets), data, competition, scaling.

``recipe: resnet`` and ``recipe: deit`` fill in the DISCOVER paper's recipes; any field given in the
file wins over the preset. The run ``name`` defaults to a hash of everything that changes the result,
so re-running the same config resumes the same run from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from discover_ray.config import ProbeConfig
from discover_ray.config_files import Strict, absolute, validate
from discover_ray.models import ModelSpec
from discover_ray.store import config_hash

__all__ = ["RECIPES", "TrainConfig", "load_train_config"]

DEFAULT_STORAGE = "./discover-train"

#: The DISCOVER recipes (paper A.1/A.2; methods.md §2.2). Heavy DeiT augmentations (mixup, cutmix, label
#: smoothing, RandAugment) are off: the product trains the competition, not a leaderboard entry.
RECIPES: dict[str, dict[str, Any]] = {
    "resnet": {
        "epochs": 90,
        "batch_size": 256,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "step", "step_epochs": 30, "gamma": 0.1},
    },
    "deit": {
        "epochs": 300,
        "batch_size": 256,
        "optimizer": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.02},
        "schedule": {"name": "cosine", "warmup_epochs": 5, "warmup_lr": 1e-6, "min_lr": 1e-5},
    },
}


class ModelSection(Strict):
    """What to train: a built-in, timm or CVN name (``cifar_resnet20_cvn2``, ``deit_tiny_cvn16``) or a builder."""

    name: str
    builder: str | None = None
    pretrained: bool = False
    checkpoint: str | None = Field(None, description="initial weights (a state_dict or safetensors file)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @field_validator("checkpoint")
    @classmethod
    def _resolve(cls, value: str | None) -> str | None:
        return absolute(value)

    def spec(self) -> ModelSpec:
        return ModelSpec(**self.model_dump())


class OptimizerSection(Strict):
    name: Literal["sgd", "adamw"]
    lr: float = Field(gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class ScheduleSection(Strict):
    """Per-epoch learning rate: ``step`` (× gamma every step_epochs), ``cosine`` (to min_lr), ``constant``;
    an optional linear warm-up from ``warmup_lr`` over the first ``warmup_epochs``."""

    name: Literal["step", "cosine", "constant"] = "constant"
    step_epochs: int = Field(30, ge=1)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(0.0, ge=0)


class CompetitionSection(Strict):
    """How the LWTA layers train and predict (methods.md §5: the paper's values by default).

    ``kl_weight`` scales Σ over LWTA layers of KL(q‖Uniform(U)), each layer's KL averaged over its blocks,
    positions and examples. 1e-3 keeps it a gentle regulariser next to the cross-entropy (it is at most
    log U per layer); 0 reproduces the reference code, which trained without it.
    """

    tau: float = Field(0.67, ge=0)
    kl_weight: float = Field(1e-3, ge=0)
    eval_samples: int = Field(4, ge=1, description="stochastic passes whose logits are averaged at evaluation")


class DataSection(Strict):
    """Training and validation images from any probe-set source (a folder, Parquet with bytes, a manifest)."""

    train: ProbeConfig
    val: ProbeConfig | None = None
    augment: Literal["crop_flip", "resized_crop_flip", "none"] = "crop_flip"
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")


class ScalingSection(Strict):
    """Ray Train workers. ``accelerator_type`` (e.g. ``RTX-A6000``) or ``label_selector`` picks the GPU pool."""

    num_workers: int = Field(1, ge=1, description="training workers (Ray Train actors), one GPU each with use_gpu")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    accelerator_type: str | None = None
    label_selector: dict[str, str] | None = None
    max_failures: int = Field(2, ge=-1, description="worker failures retried from the last checkpoint (-1: always)")
    address: str | None = None
    num_cpus: float | None = Field(None, gt=0, description="CPUs of a local cluster started on demand")


class TrainConfig(Strict):
    """One training run of a (competitive) vision network."""

    name: str | None = None
    storage_path: str = DEFAULT_STORAGE
    task: Literal["classify", "contrastive"] = Field(
        "classify", description="classify: cross-entropy (+ KL for CVNs); contrastive: a CLIP on image-caption pairs")
    recipe: Literal["resnet", "deit", "custom"] = "resnet"
    model: ModelSection
    data: DataSection
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="global batch, split evenly over the workers")
    optimizer: OptimizerSection
    schedule: ScheduleSection = ScheduleSection()
    competition: CompetitionSection = CompetitionSection()
    scaling: ScalingSection = ScalingSection()
    bf16: bool = Field(True, description="bf16 autocast on GPU workers (CPU always trains in fp32)")
    keep_checkpoints: int | None = Field(None, ge=1, description="newest checkpoints kept (default: all)")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        preset = RECIPES.get(raw.get("recipe", "resnet"), {})
        merged = dict(preset)
        for key, value in raw.items():
            if key in preset and isinstance(preset[key], dict) and isinstance(value, dict):
                merged[key] = {**preset[key], **value}
            else:
                merged[key] = value
        return merged

    @model_validator(mode="after")
    def _captions(self) -> TrainConfig:
        if self.task == "contrastive" and not self.data.train.text_column:
            raise ValueError("task: contrastive trains on captions: set data.train.text_column (e.g. caption)")
        if self.task == "contrastive" and self.data.val is not None and not self.data.val.text_column:
            raise ValueError("task: contrastive: set data.val.text_column as well")
        return self

    @field_validator("storage_path")
    @classmethod
    def _storage(cls, value: str) -> str:
        return absolute(value) or value

    @property
    def run_hash(self) -> str:
        """Content id of what is trained (not where, on how many workers, nor for how long: ``--epochs``
        extends a run, resuming it)."""
        return config_hash(self.model_dump(mode="json", exclude={"name", "storage_path", "scaling", "epochs"}))

    @property
    def run_name(self) -> str:
        return self.name or f"train-{self.run_hash}"


def load_train_config(source: str | Path | dict[str, Any], **overrides: Any) -> TrainConfig:
    """A validated training config from YAML (or a parsed dict); ``overrides`` replace top-level keys."""
    return validate(TrainConfig, source, "training", **overrides)
