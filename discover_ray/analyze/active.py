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

__all__ = ["ActiveNeurons", "active_units", "explain_image", "layer_sparsity"]


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


def explain_image(
    store: Store | str, run_id: str, image_id: str, layer: str, method: str | None = None,
    model: str | None = None, eps: float = EPS,
) -> ActiveNeurons:
    """The active neurons of ``image_id`` in ``layer`` of a finished dissection, with their labels."""
    store = store if isinstance(store, Store) else Store(str(store))
    (entry, labels), *_ = read_labels(store, run_id, layer, method=method, model=model)
    run = load_run(store, run_id)
    assert run is not None
    dataset = store.activations(entry.checkpoint_id, run["probe"]["id"], layer)
    table = dataset.read()
    rows = table.filter(pc.equal(table["image_id"], image_id))
    if rows.num_rows == 0:
        sample = table["image_id"].slice(0, 3).to_pylist()
        raise KeyError(f"image {image_id!r} is not in the probe set of run {run_id} (ids look like {sample})")
    names = table.column_names[1:]
    values = np.array([rows[name][0].as_py() for name in names], dtype=np.float32)
    block = int(dataset.marker().get("block_size", 1))
    active = active_units(values, block, eps)
    top = labels.filter(pc.equal(labels["rank"], 0))
    concept = dict(zip(top["unit"].to_pylist(), top["concept"].to_pylist(), strict=True))
    score = dict(zip(top["unit"].to_pylist(), top["score"].to_pylist(), strict=True))
    order = active[np.argsort(-values[active], kind="stable")]
    unit_names = [names[i] for i in order]
    out = pa.table({
        "unit": pa.array(unit_names, pa.string()),
        "block": pa.array([int(i) // block if block > 1 else None for i in order], pa.int32()),
        "index_in_block": pa.array([int(i) % block if block > 1 else None for i in order], pa.int32()),
        "activation": pa.array(values[order], pa.float32()),
        "concept": pa.array([concept.get(u) for u in unit_names], pa.string()),
        "score": pa.array([score.get(u) for u in unit_names], pa.float32()),
    })
    return ActiveNeurons(image_id, entry.model, layer, entry.method, block, len(names), out)


def layer_sparsity(store: Store | str, run_id: str, eps: float = EPS) -> list[tuple[str, str, int, Sparsity]]:
    """(model, layer, block size, sparsity over the probe set) for every recorded layer of a run."""
    store = store if isinstance(store, Store) else Store(str(store))
    run = load_run(store, run_id, missing_ok=True)
    if run is None:
        raise FileNotFoundError(f"no run {run_id} under {store.root}")
    out = []
    for label, model in run["models"].items():
        for layer in model["spec"]["layers"]:
            dataset = store.activations(model["checkpoint_id"], run["probe"]["id"], layer)
            if dataset.marker() is None:
                continue
            table = dataset.read()
            values = np.stack([table[name].to_numpy() for name in table.column_names[1:]], axis=1)
            out.append((label, layer, int(dataset.marker().get("block_size", 1)), sparsity(values, eps)))
    return out
