"""Model backends of the description methods (captioners, summarisers, image generators) and what they share:
every call's result is stored once, content-addressed (``backends.cache``)."""

from discover_ray.backends.cache import CallCache, CallKey, ReplayMiss

__all__ = ["CallCache", "CallKey", "ReplayMiss"]
