"""Ray stages of a dissection: EMBED and RECORD (Ray Data actor pools), REDUCE (Ray tasks over concept shards).

With ``discover_ray.train`` this is the only part of the package that imports ray; the math they run
lives in the library core (``similarity``, ``record``, ``encoders``) and is testable without a cluster.
``dissect`` is imported lazily so that Ray workers unpickling one stage's actor do not import the others.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DissectResult", "dissect"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from discover_ray.stages import pipeline as module

        return getattr(module, name)
    raise AttributeError(name)
