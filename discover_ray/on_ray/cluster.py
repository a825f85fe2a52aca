"""Joining Ray: an existing cluster (``address`` or ``RAY_ADDRESS``), or a local one started on demand.

A local cluster keeps Ray's token authentication on: with ``RAY_AUTH_MODE`` unset, ``ray.init`` turns it on
and makes a token (``~/.ray/auth_token``) if there is none. It has to be on: the GCS, raylet and worker
gRPC servers of a local cluster listen on all interfaces, and ``ray.init`` cannot narrow them (it turns a
``_node_ip_address`` of 127.0.0.1 into the machine's reachable address), so a cluster without a token runs
code for anyone who can reach the machine. Only the test suite's throw-away clusters turn it off
(``tests/unit/on_ray/test_security.py`` checks that nothing shipped does). Ray's own console messages
(start-up, token notices, Ray Data progress) stay in Ray's logs under the session directory; the product
prints its own lines.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

# Ray Data reads its logging configuration when it is imported: ours prints only errors to the console
os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))

import ray
import ray.data

__all__ = ["Resources", "connect", "quiet_ray_console"]


@dataclass(frozen=True)
class Resources:
    """What stages may ask for on this cluster."""

    cpus: float
    gpus: float

    @property
    def has_gpu(self) -> bool:
        return self.gpus >= 1


def quiet_ray_console() -> None:
    """Ray's loggers keep writing their files but print only errors to the console."""
    for name in ("ray", "ray.train", "ray.tune"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own progress, per stage
    context.print_on_execution_start = False


def connect(address: str | None = None, num_cpus: float | None = None) -> Resources:
    """Join the cluster (once per process) and report its resources."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local": always a fresh cluster of our own, never a stale one another `ray start` left behind
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    quiet_ray_console()
    total = ray.cluster_resources()
    return Resources(cpus=float(total.get("CPU", 0)), gpus=float(total.get("GPU", 0)))


def shutdown() -> None:
    """Leave the cluster (and stop a local one this process started)."""
    if ray.is_initialized():
        ray.shutdown()
