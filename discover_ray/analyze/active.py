"""Per-example active neurons with their concepts (the DISCOVER paper's Tables 4–6).

For a CVN layer each competition block has one winner: its non-zero entry, also when negative (taken
as the entry of largest |a|, so a negative winner never loses to a zero loser). For a conventional layer
every unit with |a| > ε is active. Each active unit is listed with its concept label and score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from discover_ray.evaluate.sparsity import EPS, Sparsity, sparsity
from discover_ray.runs import load_run, read_labels
from discover_ray.store import Store

__all__ = [
    "ActiveNeurons", "LayerActivations", "active_table", "active_units", "explain_image", "layer_sparsity",
    "layer_activity", "read_activations", "top_labels",
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
class LayerActivations:
    """A recorded layer of one model over the whole probe set: one row per image, one column per unit."""

    model: str
    layer: str
    checkpoint_id: str
    block_size: int
    image_ids: list[str]
    units: list[str]
    values: np.ndarray  # [images, units], float32

    def row(self, image_id: str) -> np.ndarray:
        try:
            return self.values[self.image_ids.index(image_id)]
        except ValueError:
            raise KeyError(
                f"image {image_id!r} is not in the probe set of this run (ids look like {self.image_ids[:3]})"
            ) from None


def read_activations(store: Store, run: dict, model: str, layer: str) -> LayerActivations | None:
    """The recorded activations of ``layer`` of ``model`` (a run's model label); None if never committed."""
    checkpoint_id = run["models"][model]["checkpoint_id"]
    dataset = store.activations(checkpoint_id, run["probe"]["id"], layer)
    marker = dataset.marker()
    if marker is None:
        return None
    table = dataset.read()
    units = table.column_names[1:]
    values = np.stack([table[name].to_numpy() for name in units], axis=1).astype(np.float32, copy=False)
    return LayerActivations(model, layer, checkpoint_id, int(marker.get("block_size", 1)),
                            table["image_id"].to_pylist(), units, values)


def top_labels(labels: pa.Table) -> dict[str, tuple[str, float]]:
    """Each unit's rank-0 concept and score."""
    top = labels.filter(pc.equal(labels["rank"], 0))
    return dict(zip(top["unit"].to_pylist(), zip(top["concept"].to_pylist(), top["score"].to_pylist(), strict=True),
                    strict=True))


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
    store = store if isinstance(store, Store) else Store(str(store))
    (entry, labels), *_ = read_labels(store, run_id, layer, method=method, model=model)
    run = load_run(store, run_id)
    assert run is not None
    recorded = read_activations(store, run, entry.model, layer)
    if recorded is None:
        raise FileNotFoundError(f"run {run_id} has no committed activations of {entry.model}/{layer}")
    try:
        values = recorded.row(image_id)
    except KeyError as err:
        raise KeyError(str(err.args[0]).replace("this run", f"run {run_id}")) from None
    table = active_table(values, recorded.units, recorded.block_size, top_labels(labels), eps)
    return ActiveNeurons(image_id, entry.model, layer, entry.method, recorded.block_size, len(recorded.units), table)


def layer_activity(recorded: LayerActivations, eps: float = EPS) -> Sparsity:
    """Active fraction per example of a recorded layer. LWTA losers output exactly 0, so in an LWTA layer every
    non-zero unit is active (a winner whose response happens to lie within ε of 0 still won its block);
    elsewhere a unit is active when |a| > ε."""
    return sparsity(recorded.values, 0.0 if recorded.block_size > 1 else eps)


def layer_sparsity(store: Store | str, run_id: str, eps: float = EPS) -> list[tuple[str, str, int, Sparsity]]:
    """(model, layer, block size, sparsity over the probe set) for every recorded layer of a run."""
    store = store if isinstance(store, Store) else Store(str(store))
    run = load_run(store, run_id, missing_ok=True)
    if run is None:
        raise FileNotFoundError(f"no run {run_id} under {store.root}")
    out = []
    for label, model in run["models"].items():
        for layer in model["spec"]["layers"]:
            recorded = read_activations(store, run, label, layer)
            if recorded is not None:
                out.append((label, layer, recorded.block_size, layer_activity(recorded, eps)))
    return out
