"""A target model prepared on the driver: built once to check its checkpoint and layers, and named by content.

``checkpoint_id`` names a model's outputs in the store: the weights file's sha256, combined with the
competition (each LWTA layer's U and τ) for a network with LWTA layers, since the same file also loads
into its twin without competition; for random initialisation, a hash of the spec and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from discover_ray.config import DissectConfig, ModelConfig
from discover_ray.cvn import competition_signature, lwta_modules
from discover_ray.cvn.blocks import competition_blocks
from discover_ray.errors import ProbeError
from discover_ray.ids import content_id
from discover_ray.models import LoadedModel, ModelSpec, load_model
from discover_ray.probe import ProbeSet, decode_images
from discover_ray.probe.pixels import PixelFormat, split_preprocess
from discover_ray.record import record_activations, resolve_layers
from discover_ray.record.heads import LinearHead, linear_heads
from discover_ray.store import config_hash

__all__ = ["PreparedModel", "prepare_model", "seeded_load"]


def seeded_load(spec: ModelSpec, seed: int) -> LoadedModel:
    """Build and load the model with torch's RNG seeded, so random-init models are the same everywhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_model(spec)


@dataclass
class PreparedModel:
    config: ModelConfig
    checkpoint_id: str
    weights_sha256: str | None
    preprocess: Any
    pixel_format: PixelFormat | None
    units: dict[str, int]  # per layer
    block_sizes: dict[str, int]  # per layer: U of its LWTA blocks (1: none)
    competition: dict[str, Any] | None  # how the stochastic layers are recorded
    heads: dict[str, LinearHead] = field(default_factory=dict)  # layers whose pooled output feeds the linear head

    @property
    def label(self) -> str:
        return self.config.label


def prepare_model(model: ModelConfig, config: DissectConfig, probe: ProbeSet) -> PreparedModel:
    """Build the model on the driver: checks the checkpoint fits and the layers exist, measures each layer."""
    loaded = seeded_load(model.spec(), config.seed)
    modules = resolve_layers(loaded.model, model.layers)
    checkpoint_id = loaded.checkpoint_id or content_id(
        "model\0" + config_hash({**model.model_dump(mode="json", exclude={"alias", "layers"}), "seed": config.seed})
    )
    competition = competition_signature(loaded.model)
    if loaded.checkpoint_id and competition:
        checkpoint_id = content_id(f"{loaded.checkpoint_id}\0{competition}")
    example = _example(probe, loaded.preprocess)
    units = {layer: int(a.shape[1]) for layer, a in record_activations(loaded.model, model.layers, [example]).items()}
    block_sizes = competition_blocks(loaded.model, modules, example)
    competing = lwta_modules(loaded.model)
    recorded = None
    if competing:  # one pass per image, its noise seeded from (seed, image_id)
        recorded = {"mode": config.record.competition, "passes": 1, "seed": config.seed,
                    "layers": {name: {"competitors": m.competitors, "tau": m.tau} for name, m in competing}}
    pixel_format = split_preprocess(loaded.preprocess) if config.record.pixel_cache else None
    if pixel_format is not None and pixel_format.id is None:
        pixel_format = None
    simulating = config.simulating()
    heads = {}
    if simulating is not None and any(s.startswith("ablation") for s in simulating.scorings):
        heads = linear_heads(loaded.model, model.layers, example, config.record.conv_pool, config.record.token_pool)
    return PreparedModel(model, checkpoint_id, loaded.checkpoint_id, loaded.preprocess, pixel_format, units,
                         block_sizes, recorded, heads)


def _example(probe: ProbeSet, preprocess: Any) -> torch.Tensor:
    """One preprocessed probe image (the first that decodes), for a forward pass on the driver."""
    for start in range(0, min(len(probe), 64), 8):
        decoded = decode_images(probe, probe.images[start : start + 8], failure_budget=1.0)
        if decoded.images:
            return preprocess(decoded.images[0])[None]
    raise ProbeError(f"none of the first probe images of {probe.source!r} could be decoded")
