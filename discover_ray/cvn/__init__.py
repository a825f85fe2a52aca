"""Competitive vision networks (CVNs): stochastic LWTA activations, model conversion and named variants.

Importing this package does not import timm; only building a timm-based model does.
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
from discover_ray.cvn.registry import TIMM_VARIANTS, create_cvn, parse_cvn_name, register_timm_variants

__all__ = [
    "LWTA",
    "TIMM_VARIANTS",
    "active_fractions",
    "collect_kl",
    "competition_signature",
    "create_cvn",
    "lwta_modules",
    "parse_cvn_name",
    "register_timm_variants",
    "reset_kl",
    "reset_stats",
    "seed_examples",
    "seed_sampling",
    "set_deterministic",
    "set_kl_tracking",
    "to_cvn",
    "tracking",
]
