"""discover-ray: dissect vision networks and train competitive (LWTA) vision networks, at scale, on Ray.

The public API (the CLI, ``jobs/`` and the benchmarks use only these)::

    import discover_ray as dr
    result = dr.dissect(dr.load_config("jobs/configs/cifar10_resnet20.yaml"))   # executor="local": no Ray
    (entry, labels), *_ = dr.read_labels(result.store, result.run_id, "linear", method="soft_wpmi")
    found = dr.linear_explanations(A, C, train=train_rows, val=val_rows)            # the LE math, on tensors
    dr.build_report(result.store, result.run_id)
    trained = dr.train(dr.load_train_config("jobs/configs/train_cifar_resnet20_cvn2.yaml"))

Names are imported on first use, so ``import discover_ray`` is cheap and never imports Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {
    "load_config": "discover_ray.config",
    "DissectConfig": "discover_ray.config",
    "dissect": "discover_ray.dissection",
    "DissectResult": "discover_ray.dissection",
    "run_identity": "discover_ray.dissection",
    "load_train_config": "discover_ray.training.config",
    "TrainConfig": "discover_ray.training.config",
    "train": "discover_ray.training",
    "load_run": "discover_ray.runs",
    "load_attempts": "discover_ray.runs",
    "read_labels": "discover_ray.runs",
    "read_simulation": "discover_ray.runs",
    "read_verification": "discover_ray.runs",
    "RunRecord": "discover_ray.runs",
    "calibrate_source": "discover_ray.dissection.calibration",
    "linear_explanations": "discover_ray.explain",
    "describe_units": "discover_ray.describe",
    "build_backend": "discover_ray.backends.base",
    "register_backend": "discover_ray.backends.base",
    "build_report": "discover_ray.report",
    "explain_image": "discover_ray.analyze",
    "layer_sparsity": "discover_ray.analyze",
    "compare_runs": "discover_ray.analyze",
    "label_evolution": "discover_ray.analyze",
    "collect_garbage": "discover_ray.gc",
    "register_method": "discover_ray.methods",
    "register_source": "discover_ray.sources",
    "register_family": "discover_ray.models",
    "DiscoverError": "discover_ray.errors",
    "Store": "discover_ray.store",
}
_RENAMED = {"collect_garbage": "collect"}

__all__ = [
    "__version__",
    "load_config",
    "DissectConfig",
    "dissect",
    "DissectResult",
    "run_identity",
    "load_train_config",
    "TrainConfig",
    "train",
    "load_run",
    "load_attempts",
    "read_labels",
    "read_simulation",
    "read_verification",
    "RunRecord",
    "calibrate_source",
    "linear_explanations",
    "describe_units",
    "build_backend",
    "register_backend",
    "build_report",
    "explain_image",
    "layer_sparsity",
    "compare_runs",
    "label_evolution",
    "collect_garbage",
    "register_method",
    "register_source",
    "register_family",
    "DiscoverError",
    "Store",
]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'discover_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
