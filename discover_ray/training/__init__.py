"""Training competitive vision networks with Ray Train (``TorchTrainer``, V2 API).

``config``, ``recipe`` and ``data`` are plain torch and pydantic, testable without a cluster;
``loop`` is the per-worker loop and ``trainer`` the driver. ``train`` is imported lazily so that
reading a config does not import Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from discover_ray.training import trainer as module

        return getattr(module, name)
    raise AttributeError(name)
