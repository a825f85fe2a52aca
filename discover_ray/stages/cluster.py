"""Connecting to Ray: an existing cluster (``address`` or ``RAY_ADDRESS``), or a local one started on demand."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray

from discover_ray.config import RayConfig


@dataclass(frozen=True)
class Resources:
    """What the stages may ask for on this cluster."""

    cpus: float
    gpus: float

    @property
    def has_gpu(self) -> bool:
        return self.gpus >= 1


def connect(config: RayConfig) -> Resources:
    """Join the cluster (once per process) and report its resources."""
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # "local": always a fresh cluster of our own, never a stale one another `ray start` left behind
            ray.init(address="local", num_cpus=config.num_cpus or os.cpu_count(), include_dashboard=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own progress, per stage
    context.print_on_execution_start = False
    total = ray.cluster_resources()
    return Resources(cpus=float(total.get("CPU", 0)), gpus=float(total.get("GPU", 0)))
