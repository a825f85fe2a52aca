"""Turn a network into its competitive twin by swapping activation modules for LWTA, in place.

LWTA has no parameters, so the converted model has the same parameter count and state_dict keys as the
original and loads the original's checkpoints unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn

from discover_ray.cvn.lwta import LWTA
from discover_ray.errors import ConfigError, UnknownName

__all__ = ["fallback_for", "to_cvn"]


def to_cvn(
    model: nn.Module,
    competitors: int,
    *,
    tau: float = 0.67,
    activations: tuple[type[nn.Module], ...] = (nn.ReLU, nn.GELU),
    names: Sequence[str] | None = None,
    deterministic: bool = False,
) -> nn.Module:
    """Replace every activation module of the given types (or exactly the ``names``) by ``LWTA`` and return the model.

    Each replaced module falls back to its own function (ReLU or GELU) when ``competitors == 1``. A module
    registered under several names (called several times per forward) becomes one shared LWTA module.
    """
    candidates = {
        name: module
        for name, module in model.named_modules(remove_duplicate=False)
        if name and isinstance(module, activations)
    }
    if names is None:
        chosen = set(candidates)
    else:
        chosen = set(names)
        _check_names(model, chosen, candidates, activations)
    targets = {id(candidates[name]) for name in chosen}
    replaced: dict[int, LWTA] = {}
    # every alias, so a module shared between names is replaced everywhere by one LWTA
    for name, module in candidates.items():
        if id(module) not in targets:
            continue
        if id(module) not in replaced:
            fallback = fallback_for(module, competitors)
            replaced[id(module)] = LWTA(competitors, tau, deterministic=deterministic, fallback=fallback)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replaced[id(module)])
    return model


def fallback_for(module: nn.Module, competitors: int) -> str:
    """The plain activation LWTA with one competitor must equal: ``relu``, ``gelu`` or ``gelu_tanh``."""
    kind = type(module).__name__.lower()
    if isinstance(module, nn.ReLU) or kind == "relu":
        return "relu"
    if isinstance(module, nn.GELU) or "gelu" in kind:
        return "gelu_tanh" if getattr(module, "approximate", "none") == "tanh" or "tanh" in kind else "gelu"
    if competitors == 1:
        raise ConfigError(
            f"cannot turn a {type(module).__name__} into LWTA with one competitor: only ReLU and GELU have an "
            "exact U=1 fallback; use competitors > 1 or leave this module out"
        )
    return "relu"  # never used: with U > 1 the fallback plays no part


def _check_names(
    model: nn.Module,
    names: set[str],
    candidates: dict[str, nn.Module],
    activations: tuple[type[nn.Module], ...],
) -> None:
    modules = dict(model.named_modules(remove_duplicate=False))
    for name in sorted(names):
        if name not in modules:
            close = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.5)
            some = ", ".join(list(candidates)[:5]) or "none"
            hint = f"; close: {', '.join(close)}" if close else f"; activation modules: {some}"
            raise UnknownName(f"no module named {name!r} in the model{hint}")
        if name not in candidates:
            kinds = ", ".join(t.__name__ for t in activations)
            raise ConfigError(
                f"module {name!r} is a {type(modules[name]).__name__}, not one of the activations ({kinds})"
            )
