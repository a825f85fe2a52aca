"""Stages as data and the one runner that skips, resumes, commits and records them, with the in-process
executor. The Ray executor is ``discover_ray.on_ray``; nothing here imports Ray."""

from discover_ray.pipeline.local import LocalExecutor
from discover_ray.pipeline.runner import Event, Executor, ProbeContext, Runner
from discover_ray.pipeline.stage import CacheRef, Head, ModelStage, Output, ShardOutput, Stage, TaskStage, stage_key

__all__ = [
    "CacheRef", "Event", "Executor", "Head", "LocalExecutor", "ModelStage", "Output", "ProbeContext", "Runner",
    "ShardOutput", "Stage", "TaskStage", "stage_key",
]
