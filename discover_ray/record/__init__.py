"""Record pooled activations of named layers with forward hooks, in one forward pass per batch.

Layers are addressed by dotted module names (``layer1.0.conv2``, ``blocks.11.mlp.act``) resolved through
``named_modules`` — never by evaluating strings. Hooks are removed when recording ends, also on error.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from discover_ray.errors import UnknownName
from discover_ray.schema import unit_names

ConvPool = Literal["mean", "max"]
TokenPool = Literal["cls", "mean", "max"]

__all__ = ["nonzero_fraction", "record_activations", "recording", "resolve_layers", "summarise", "unit_names"]


def resolve_layers(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """Map dotted names to modules; an unknown name fails listing the closest valid names."""
    modules = dict(model.named_modules())
    resolved = {}
    for name in names:
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
            raise UnknownName(f"model has no layer {name!r}; closest: {close or sorted(modules)[1:9]}")
        resolved[name] = modules[name]
    return resolved


def summarise(output: Tensor, conv_pool: ConvPool = "mean", token_pool: TokenPool = "cls") -> Tensor:
    """One vector per example: conv maps pooled over space, token sequences by CLS/mean/max, vectors as is."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 4:  # (B, C, H, W)
        return output.mean(dim=(2, 3)) if conv_pool == "mean" else output.amax(dim=(2, 3))
    if output.ndim == 3:  # (B, T, D), batch first
        if token_pool == "cls":
            return output[:, 0]
        return output.mean(dim=1) if token_pool == "mean" else output.amax(dim=1)
    if output.ndim == 2:
        return output
    raise ValueError(f"cannot summarise a layer output of shape {tuple(output.shape)}")


def nonzero_fraction(output: Tensor) -> Tensor:
    """Per example, the fraction of a layer's (unpooled) outputs that are not exactly 0: for an LWTA layer,
    whose losers output exactly 0, the fraction of winners at every position (1/U)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    return (output != 0).flatten(1).float().mean(dim=1)


@contextlib.contextmanager
def recording(
    model: nn.Module, layers: Iterable[str], conv_pool: ConvPool = "mean", token_pool: TokenPool = "cls",
    active: dict[str, list[Tensor]] | None = None,
) -> Iterator[dict[str, list[Tensor]]]:
    """Within the block every forward pass appends each layer's summary to ``store[layer]``; for the layers
    that are keys of ``active``, also each example's ``nonzero_fraction`` of the unpooled output."""
    store: dict[str, list[Tensor]] = {}
    active = active if active is not None else {}
    handles = []
    try:
        for name, module in resolve_layers(model, layers).items():
            store[name] = []

            def hook(_module: nn.Module, _inputs: object, output: Tensor, name: str = name) -> None:
                store[name].append(summarise(output, conv_pool, token_pool).detach().float().cpu())
                if name in active:
                    active[name].append(nonzero_fraction(output.detach()).cpu())

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def record_activations(
    model: nn.Module,
    layers: Iterable[str],
    batches: Iterable[Tensor],
    conv_pool: ConvPool = "mean",
    token_pool: TokenPool = "cls",
) -> dict[str, Tensor]:
    """A[N, K] per layer over all ``batches`` (already preprocessed), with the model in eval mode."""
    model.eval()
    with recording(model, layers, conv_pool, token_pool) as store:
        for batch in batches:
            model(batch)
    return {name: torch.cat(parts) if parts else torch.empty(0) for name, parts in store.items()}
