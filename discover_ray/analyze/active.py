"""Per-example active neurons with their concepts (the DISCOVER paper's Tables 4–6), and layer sparsity.

For a CVN layer each competition block has one winner: its non-zero entry, also when negative (taken
as the entry of largest |a|, so a negative winner never loses to a zero loser). For a conventional layer
every unit with |a| > ε is active. Each active unit is listed with its concept label and score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from discover_ray.errors import DatasetError, UnknownName
from discover_ray.evaluate.sparsity import EPS, Sparsity, sparsity
from discover_ray.runs import RunRecord, load_run, read_labels
from discover_ray.schema import Activations
from discover_ray.schema import read_activations as read_activation_table
from discover_ray.store import Store

__all__ = [
    "ActiveNeurons", "LayerActivations", "LayerSparsity", "active_table", "active_units", "explain_image",
    "layer_activity", "layer_sparsity", "read_activations",
]


def active_units(activations: np.ndarray, block_size: int = 1, eps: float = EPS) -> np.ndarray:
    """Indices of the active units of one example's activation vector."""
    a = np.asarray(activations, dtype=np.float64).reshape(-1)
    if block_size <= 1:
        return np.flatnonzero(np.abs(a) > eps)
    if a.size % block_size:
        raise ValueError(f"{a.size} units do not split into competition blocks of {block_size}")
    winners = np.abs(a.reshape(-1, block_size)).argmax(axis=1)
    return np.arange(0, a.size, block_size) + winners


@dataclass
class ActiveNeurons:
    """One image's active units in one layer, most active first."""

    image_id: str
    model: str
    layer: str
    method: str
    block_size: int
    units: int
    table: pa.Table  # unit, block, index_in_block, activation, concept, score

    @property
    def count(self) -> int:
        return self.table.num_rows

    @property
    def fraction(self) -> float:
        return self.count / self.units if self.units else 0.0


@dataclass
class LayerActivations(Activations):
    """A recorded layer of one model of a run over the whole probe set."""

    model: str = ""
    layer: str = ""
    checkpoint_id: str = ""


def read_activations(store: Store, run: RunRecord, model: str, layer: str) -> LayerActivations | None:
    """The recorded activations of ``layer`` of ``model`` (a run's model label); None if not committed."""
    info = run.models[model]
    path = info.layers.get(layer)
    if path is None:
        return None
    try:
        dataset = store.committed(path)
    except DatasetError:
        return None
    recorded = read_activation_table(dataset.read(), int((dataset.marker() or {}).get("block_size", 1)))
    return LayerActivations(recorded.image_ids, recorded.units, recorded.values, recorded.block_size,
                            recorded.active_fraction, model=model, layer=layer, checkpoint_id=info.checkpoint_id)


def active_table(values: np.ndarray, units: list[str], block: int, labels: dict[str, tuple[str, float]],
                 eps: float = EPS) -> pa.Table:
    """One example's active units, most active first, each with its concept and score."""
    active = active_units(values, block, eps)
    order = active[np.argsort(-values[active], kind="stable")]
    names = [units[i] for i in order]
    return pa.table({
        "unit": pa.array(names, pa.string()),
        "block": pa.array([int(i) // block if block > 1 else None for i in order], pa.int32()),
        "index_in_block": pa.array([int(i) % block if block > 1 else None for i in order], pa.int32()),
        "activation": pa.array(values[order], pa.float32()),
        "concept": pa.array([labels.get(u, (None, None))[0] for u in names], pa.string()),
        "score": pa.array([labels.get(u, (None, None))[1] for u in names], pa.float32()),
    })


def explain_image(
    store: Store | str, run_id: str, image_id: str, layer: str, method: str | None = None,
    model: str | None = None, eps: float = EPS,
) -> ActiveNeurons:
    """The active neurons of ``image_id`` in ``layer`` of a finished dissection, with their labels."""
    store = Store.of(store)
    (entry, labels), *_ = read_labels(store, run_id, layer, method=method, model=model)
    recorded = read_activations(store, load_run(store, run_id), entry.model, layer)
    if recorded is None:
        raise DatasetError(f"run {run_id} has no committed activations of {entry.model}/{layer}; re-run the dissection")
    try:
        values = recorded.row(image_id)
    except UnknownName as err:
        raise UnknownName(str(err).replace("this run", f"run {run_id}")) from None
    table = active_table(values, recorded.units, recorded.block_size, labels.top(), eps)
    return ActiveNeurons(image_id, entry.model, layer, entry.method, recorded.block_size, len(recorded.units), table)


def layer_activity(recorded: LayerActivations, eps: float = EPS) -> Sparsity:
    """Active fraction per example of a recorded layer's pooled vector. LWTA losers output exactly 0, so in an
    LWTA layer every non-zero unit is active (a winner whose response happens to lie within ε of 0 still won
    its block); elsewhere a unit is active when |a| > ε."""
    return sparsity(recorded.values, 0.0 if recorded.block_size > 1 else eps)


@dataclass(frozen=True)
class LayerSparsity:
    """A layer's active fraction per example: of its recorded (pooled) vector, and, for an LWTA layer, over
    every position of its unpooled output (exactly 1/U: one winner per block at each position)."""

    model: str
    layer: str
    block_size: int
    pooled: Sparsity
    per_position: Sparsity | None = None


def position_activity(recorded: LayerActivations) -> Sparsity | None:
    if recorded.active_fraction is None or not len(recorded.active_fraction):
        return None
    fraction = np.asarray(recorded.active_fraction, dtype=np.float64)
    return Sparsity(float(fraction.mean()), float(fraction.std()), len(recorded.units), len(fraction))


def layer_sparsity(store: Store | str, run_id: str, eps: float = EPS) -> list[LayerSparsity]:
    """The sparsity of every recorded layer of a run."""
    store = Store.of(store)
    run = load_run(store, run_id)
    out = []
    for label, model in run.models.items():
        for layer in model.layers:
            recorded = read_activations(store, run, label, layer)
            if recorded is not None:
                out.append(LayerSparsity(label, layer, recorded.block_size, layer_activity(recorded, eps),
                                         position_activity(recorded)))
    return out
