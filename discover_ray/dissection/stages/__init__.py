"""The stages of a dissection: DECODE (the pixel cache), RECORD (activations), REDUCE (a method on a layer;
EXPLAIN for methods that write weighted explanations), DESCRIBE (descriptions from model backends), SIMULATE
(simulation scoring of a layer's labels), VERIFY (labels checked on generated images). EMBED belongs to the CLIP
concept source (``discover_ray.sources.clip``)."""

from discover_ray.dissection.stages.decode import DecodeStage
from discover_ray.dissection.stages.describe import DescribeStage
from discover_ray.dissection.stages.record import ActivationRecorder, RecordStage, image_seed
from discover_ray.dissection.stages.reduce import ExplainStage, ReduceStage, stage_for
from discover_ray.dissection.stages.simulate import SimulateStage
from discover_ray.dissection.stages.verify import VerifyStage

__all__ = ["ActivationRecorder", "DecodeStage", "DescribeStage", "ExplainStage", "stage_for", "RecordStage", "ReduceStage", "SimulateStage", "VerifyStage",
           "image_seed"]
