"""The stages of a dissection: DECODE (the pixel cache), RECORD (activations), REDUCE (a method on a layer;
EXPLAIN for methods that write weighted explanations), SIMULATE (simulation scoring of a layer's labels). EMBED belongs to the CLIP concept source (``discover_ray.sources.clip``)."""

from discover_ray.dissection.stages.decode import DecodeStage
from discover_ray.dissection.stages.record import ActivationRecorder, RecordStage, image_seed
from discover_ray.dissection.stages.reduce import ExplainStage, ReduceStage, stage_for
from discover_ray.dissection.stages.simulate import SimulateStage

__all__ = ["ActivationRecorder", "DecodeStage", "ExplainStage", "stage_for", "RecordStage", "ReduceStage", "SimulateStage", "image_seed"]
