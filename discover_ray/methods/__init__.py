"""Labelling methods as plugins: the interface, the registry, and the built-in methods.

Built in: the five CLIP-Dissect similarity functions (``cos``, ``cos3``, ``rank_reorder``, ``wpmi``,
``soft_wpmi``), Linear Explanations (``linear_explanation``) and Describe-and-Dissect
(``describe_and_dissect``). A new method is one module with one ``@register_method`` class.
"""

from discover_ray.methods import clip_dissect, describe_and_dissect, linear_explanation  # noqa: F401  (registers them)
from discover_ray.methods.base import NEEDS, ConceptScores, LayerInputs, Method, MethodOutput, ReduceSettings
from discover_ray.methods.registry import get_method, method_names, register_method

__all__ = [
    "NEEDS", "ConceptScores", "LayerInputs", "Method", "MethodOutput", "ReduceSettings", "get_method",
    "method_names", "register_method",
]
