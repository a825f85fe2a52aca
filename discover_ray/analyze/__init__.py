"""Reading a finished dissection: per-example active neurons with their concepts, layer sparsity, and how
labels change between checkpoints (two, or N: their evolution). Plain pyarrow and numpy over the store; no Ray."""

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
from discover_ray.analyze.evolution import (
    Checkpointed,
    LayerEvolution,
    Step,
    evolution,
    label_evolution,
    run_checkpoints,
    runs_as_checkpoints,
)

__all__ = [
    "ActiveNeurons", "LayerActivations", "LayerComparison", "LayerSparsity", "active_table", "active_units",
    "Checkpointed", "LayerEvolution", "Step", "compare_runs", "evolution", "explain_image", "label_evolution", "layer_activity",
    "layer_sparsity", "position_activity", "read_activations", "run_checkpoints", "runs_as_checkpoints",
]
