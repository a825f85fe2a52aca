"""DESCRIBE: Describe-and-Dissect on one recorded layer — open-vocabulary descriptions from model backends.

Its work items are chunks of the layer's chosen units; within one, the steps run for all its units
together (``describe.describe_units``): one captioning batch, the LLM calls of every unit in flight at
once, every (unit, candidate)'s images drawn, one pass of the target over them. Each task rebuilds the
target at the layer and loads the backends once per worker process; every call goes through the run's
call cache (``{store}/cache``), so a re-run of the stage makes no backend call. The key covers the
activations, the method's parameters, every backend's config and the scoring CLIP.
The dataset is ``labels/{checkpoint}/{probe}/{layer}/describe_and_dissect__open__{scorer}/{key}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from discover_ray.backends.settings import BackendSet
from discover_ray.describe.target import TargetRef
from discover_ray.dissection.models import PreparedModel
from discover_ray.dissection.stages.reduce import STAGES_BY_TABLE, ReduceStage
from discover_ray.errors import ConfigError
from discover_ray.methods import LayerInputs
from discover_ray.sources import PreparedSource

__all__ = ["DescribeStage", "target_ref"]


def target_ref(config: Any, model: PreparedModel, layer: str) -> TargetRef:
    """The model at ``layer`` as workers rebuild it, pooled as RECORD pools it."""
    return TargetRef(model.config, config.seed, layer, config.record.conv_pool, config.record.token_pool)


class DescribeStage(ReduceStage):
    name = "DESCRIBE"
    resident = "backends"  # workers that keep the captioner, LLM and generator loaded from task to task

    def __init__(self, *args: Any, backends: BackendSet, scorer: PreparedSource, target: TargetRef,
                 calls: int | None = None, **kwargs: Any):
        self.backends, self.scorer, self.target, self.calls = backends, scorer, target, calls
        super().__init__(*args, **kwargs)

    @classmethod
    def plan_kwargs(cls, config: Any, sources: list[PreparedSource], model: PreparedModel, layer: str,
                    params: BaseModel) -> dict[str, Any]:
        backends = config.backends
        assert backends is not None  # the config checks that a backends method has its three backends
        clips = [s for s in sources if s.config.kind == "clip"]
        wanted = getattr(params, "scorer", None)
        scorer = next((s for s in clips if s.name == wanted), None) if wanted else (clips[0] if clips else None)
        if scorer is None:
            raise ConfigError(
                (f"describe_and_dissect.scorer {wanted!r} is not a CLIP concept source of this config "
                 f"(CLIP sources: {[s.name for s in clips]})") if wanted else
                "describe_and_dissect scores candidates by Image-Products with a CLIP image tower: add a concept source "
                "of kind clip (e.g. {kind: clip, model: ViT-B-16, pretrained: openai, concepts: ...})")
        for section in (backends.captioner, backends.summarizer, backends.generator):
            if section is not None:
                section.check()
        return {"backends": BackendSet(backends.captioner, backends.summarizer, backends.generator, config.store,
                                       backends.replay),
                "scorer": scorer, "target": target_ref(config, model, layer), "calls": backends.calls}

    def extra_key(self) -> dict[str, Any]:
        return {"backends": {role: getattr(self.backends, role).model_dump(mode="json")
                             for role in ("captioner", "summarizer", "generator") if getattr(self.backends, role)},
                "scorer": self.scorer.encoder_id, "conv_pool": self.target.conv_pool, "token_pool": self.target.token_pool}

    def load(self) -> LayerInputs:
        inputs = super().load()
        inputs.target, inputs.backends, inputs.scorer = self.target, self.backends, getattr(self.scorer, "spec", None)
        inputs.extra["calls"] = self.calls
        return inputs

    def counts(self) -> dict[str, Any]:
        marker = self._marker
        return {k: marker[k] for k in ("units", "described", "failed", "dead", "calls", "cache_hits") if k in marker}


STAGES_BY_TABLE["descriptions"] = DescribeStage
