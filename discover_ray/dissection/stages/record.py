"""RECORD: the target model with hooks on the chosen layers; one forward pass per chunk records them all.

Each layer is a dataset ``activations/{checkpoint}/{probe}/{layer}/{key}``, one part per shard. In LWTA
layers the noise of each image is seeded from (run seed, image_id), so activations do not depend on
batches, shards, actors or executors; LWTA layers also record each image's fraction of non-zero outputs
over all positions (``position_active_fraction``: 1/U at every position).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from discover_ray.config import DissectConfig
from discover_ray.cvn import lwta_modules, seed_examples, set_deterministic
from discover_ray.dissection.models import PreparedModel, seeded_load
from discover_ray.dissection.stages.decode import DecodeStage
from discover_ray.errors import NonFiniteActivations
from discover_ray.models import ModelSpec
from discover_ray.pipeline.chunks import chunk_ids
from discover_ray.pipeline.stage import CacheRef, Head, ModelStage, Output, ShardOutput, shard_lengths, stage_key
from discover_ray.record import ConvPool, TokenPool, recording
from discover_ray.schema import VERSIONS, activation_table, unit_names
from discover_ray.store import Store, config_hash, safe_segment

__all__ = ["ActivationRecorder", "RecordStage", "image_seed"]


def image_seed(seed: int, image_id: str) -> int:
    """The LWTA sampling seed of one probe image in a run (architecture: seeded per image)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()[:8], "little") & (2**63 - 1)


class ActivationRecorder:
    """Loads its model once, records pooled activations of ``layers`` per chunk (and LWTA position fractions)."""

    def __init__(self, spec: ModelSpec, layers: list[str], conv_pool: ConvPool, token_pool: TokenPool, seed: int,
                 threads: int, competition: str = "sample", count_active: tuple[str, ...] = ()):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = seeded_load(spec, seed).model.to(self.device)
        self.layers, self.conv_pool, self.token_pool, self.seed = list(layers), conv_pool, token_pool, seed
        self.count_active = tuple(count_active)
        self.competing = bool(lwta_modules(self.model))
        set_deterministic(self.model, competition == "argmax")

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = np.asarray(batch["pixels"][0])
        if len(pixels) == 0:
            return {}
        # batches may be read-only object-store views: copy before handing them to torch
        x = torch.from_numpy(np.array(pixels, copy=True)).to(self.device, non_blocking=True)
        if self.competing:  # an image's LWTA noise depends on (seed, image_id) alone
            seed_examples(self.model, [image_seed(self.seed, image_id) for image_id in chunk_ids(batch)])
        active: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.count_active}
        self.model.eval()
        with recording(self.model, self.layers, self.conv_pool, self.token_pool, active) as store:
            self.model(x)
        out = {f"acts/{layer}": torch.cat(store[layer]).numpy()[None] for layer in self.layers}
        out.update({f"active/{layer}": torch.cat(parts).numpy()[None] for layer, parts in active.items()})
        return out


class RecordStage(ModelStage):
    name = "RECORD"

    def __init__(self, store: Store, model: PreparedModel, config: DissectConfig, probe_id: str, images: int,
                 decode: DecodeStage | None):
        self.model, self.config, self.decode = model, config, decode
        shard_size = config.probe.shard_size
        expected = shard_lengths(images, shard_size)
        record = config.record.model_dump(mode="json", exclude={"pixel_cache", "batch_size"})
        outputs = []
        for layer in model.config.layers:
            key = stage_key("RECORD", "activations", VERSIONS["activations"], checkpoint=model.checkpoint_id,
                            model=model.config.model_dump(mode="json", exclude={"alias", "layers", "checkpoint"}),
                            probe=probe_id, layer=layer, seed=config.seed, record=record, shard=shard_size,
                            batch=config.record.batch_size)
            dataset = store.dataset(f"activations/{model.checkpoint_id}/{probe_id}/{safe_segment(layer, 'layer name')}",
                                    key, "activations")
            outputs.append(Output(layer, dataset, expected))
        # models that load images the same way share one pass (one actor pool, each image loaded once): by the
        # pixel cache they read, or, without one, by their preprocessing
        loader = decode.loader if decode is not None else f"preprocess:{config_hash(repr(model.preprocess))}"
        super().__init__(model.label, outputs, loader=loader, batch_size=config.record.batch_size)

    def transform(self) -> Any:
        return self.model.preprocess

    def cache(self) -> CacheRef | None:
        return self.decode.cache() if self.decode is not None else None

    def head(self, outputs: list[Output], shards: frozenset[int]) -> Head:
        layers = [o.name for o in outputs]
        r = self.config.record
        kwargs = {"spec": self.model.config.spec(), "layers": layers, "conv_pool": r.conv_pool,
                  "token_pool": r.token_pool, "seed": self.config.seed, "competition": r.competition,
                  "count_active": tuple(layer for layer in layers if self.model.block_sizes[layer] > 1)}
        return Head("record", ActivationRecorder, kwargs, shards)

    def write(self, outputs: list[Output], shard: ShardOutput, head: dict[str, np.ndarray]) -> None:
        """Every layer of the shard is checked before any part is written: NaN or inf activations would be
        committed and then fail every REDUCE that reads them, without saying where they came from."""
        acts = {o.name: head.get(f"acts/{o.name}", np.zeros((0, 0), np.float32)) for o in outputs}
        for layer, values in acts.items():
            self._check_finite(layer, values, shard)
        for output in outputs:
            layer = output.name
            values = acts[layer]
            table = activation_table(
                shard.image_ids, values, self.model.block_sizes[layer], failed=shard.failed,
                active_fraction=head.get(f"active/{layer}") if self.model.block_sizes[layer] > 1 else None,
                layer=layer, model=self.model.label, checkpoint_id=self.model.checkpoint_id,
                conv_pool=self.config.record.conv_pool)
            output.dataset.write_part(shard.shard, table)

    def _check_finite(self, layer: str, values: np.ndarray, shard: ShardOutput) -> None:
        """NaN or ±inf (also after the cast to the stored float32) is an error naming the model, the layer, the
        first bad units and images, and where such values come from."""
        stored = np.asarray(values, dtype=np.float32)
        bad = ~np.isfinite(stored)
        if not bad.any():
            return
        units = unit_names(values.shape[1], self.model.block_sizes[layer])
        bad_units = [units[j] for j in np.flatnonzero(bad.any(axis=0))]
        bad_images = [shard.image_ids[i] for i in np.flatnonzero(bad.any(axis=1))]
        kinds = " and ".join(k for k, found in (("NaN", np.isnan(stored).any()), ("infinite", np.isinf(stored).any()))
                             if found)
        raise NonFiniteActivations(
            f"model {self.model.label!r} (checkpoint {self.model.checkpoint_id}) gave {kinds} activations in layer "
            f"{layer!r}: {int(bad.sum())} values of {len(bad_units)} of {len(units)} units over {len(bad_images)} of "
            f"{len(shard.image_ids)} images of shard {shard.shard}; first units {bad_units[:5]}, first images "
            f"{bad_images[:3]}. No part of this shard of the model was written. Check the checkpoint (NaN or huge "
            "weights, a diverged training run), the preprocessing (image_size, mean and std), and fp16/bf16 "
            "overflow (record in float32)")

    def marker(self, output: Output) -> dict[str, Any]:
        return {"units": self.model.units[output.name], "block_size": self.model.block_sizes[output.name],
                "checkpoint_id": self.model.checkpoint_id, "failed": [list(f) for f in output.dataset.failed()]}
