"""Explanations of neurons fitted from activations and concept values (Linear Explanations, methods.md §3)."""

from discover_ray.explain.linear import LinearExplanations, linear_explanations

__all__ = ["LinearExplanations", "linear_explanations"]
