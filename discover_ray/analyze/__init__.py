"""Reading a finished dissection: per-example active neurons with their concepts, and how labels change
between checkpoints. Plain pyarrow and numpy over the store; no Ray."""

from discover_ray.analyze.active import (
    ActiveNeurons,
    LayerActivations,
    active_table,
    active_units,
    explain_image,
    layer_activity,
    layer_sparsity,
    read_activations,
    top_labels,
)
from discover_ray.analyze.compare import LayerComparison, compare_runs

__all__ = [
    "ActiveNeurons", "LayerActivations", "LayerComparison", "active_table", "active_units", "compare_runs",
    "explain_image", "layer_activity", "layer_sparsity", "read_activations", "top_labels",
]
