"""Reading a finished dissection: per-example active neurons with their concepts, layer sparsity, and how
labels change between checkpoints. Plain pyarrow and numpy over the store; no Ray."""

from discover_ray.analyze.active import (
    ActiveNeurons,
    LayerActivations,
    LayerSparsity,
    active_table,
    active_units,
    explain_image,
    layer_activity,
    layer_sparsity,
    position_activity,
    read_activations,
)
from discover_ray.analyze.compare import LayerComparison, compare_runs

__all__ = [
    "ActiveNeurons", "LayerActivations", "LayerComparison", "LayerSparsity", "active_table", "active_units",
    "compare_runs", "explain_image", "layer_activity", "layer_sparsity", "position_activity", "read_activations",
]
