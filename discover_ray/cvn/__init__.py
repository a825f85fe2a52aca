"""Competitive vision networks (CVNs): stochastic LWTA activations and the conversion of any model.

Named variants (``<base>_cvn<U>``) are built by ``discover_ray.models``. Importing this package does not
import timm.
"""

from discover_ray.cvn.convert import to_cvn
from discover_ray.cvn.lwta import (
    LWTA,
    active_fractions,
    collect_kl,
    competition_signature,
    lwta_modules,
    reset_kl,
    reset_stats,
    seed_examples,
    seed_sampling,
    set_deterministic,
    set_kl_tracking,
    tracking,
)

__all__ = [
    "LWTA",
    "active_fractions",
    "collect_kl",
    "competition_signature",
    "lwta_modules",
    "reset_kl",
    "reset_stats",
    "seed_examples",
    "seed_sampling",
    "set_deterministic",
    "set_kl_tracking",
    "to_cvn",
    "tracking",
]
