"""How a network's concept labels change between checkpoints (training epochs, or a CVN and its twin).

Units are matched by name within each (model, layer, method, concept source) that both runs labelled.
A unit is stable when its top concept is the same in both; the units that changed most share the fewest
of their top-k concepts, then moved most in score.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from discover_ray.errors import IncompatibleRuns, UnknownName
from discover_ray.runs import LabelEntry, load_run
from discover_ray.schema import Labels
from discover_ray.store import Store

__all__ = ["LayerComparison", "compare_entries", "compare_runs"]


@dataclass
class LayerComparison:
    model: str
    layer: str
    method: str
    source: str
    units: int
    stable: int
    changes: pa.Table  # unit, concept_a, score_a, concept_b, score_b, shared_top_k; most changed first

    @property
    def stability(self) -> float:
        return self.stable / self.units if self.units else 0.0


def compare_runs(store: Store | str, run_a: str, run_b: str, method: str | None = None) -> list[LayerComparison]:
    """Per-layer label stability between two finished dissections of the same architecture."""
    store = Store.of(store)
    entries = {}
    for run_id in (run_a, run_b):
        run = load_run(store, run_id)
        entries[run_id] = [e for e in run.labels if e.table == "labels" and (method is None or e.method == method)]
    single = len({e.model for e in entries[run_a]}) == 1 and len({e.model for e in entries[run_b]}) == 1
    key = (lambda e: (e.layer, e.method, e.source)) if single else (lambda e: (e.model, e.layer, e.method, e.source))
    second = {key(e): e for e in entries[run_b]}
    out = []
    for a in entries[run_a]:
        b = second.get(key(a))
        if b is not None:
            out.append(compare_entries(a, b, Labels(store.committed(a.dataset).read()), Labels(store.committed(b.dataset).read())))
    if not out:
        raise UnknownName(f"runs {run_a} and {run_b} labelled no layer in common" + (f" with method {method!r}" if method else ""))
    return out


def compare_entries(a: LabelEntry, b: LabelEntry, labels_a: Labels, labels_b: Labels) -> LayerComparison:
    """One labelling of a layer at two checkpoints: stable units and every unit's change, most changed first."""
    ranked_a, ranked_b = labels_a.ranked(), labels_b.ranked()
    if ranked_a.keys() != ranked_b.keys():
        raise IncompatibleRuns(f"layer {a.layer!r} has {len(ranked_a)} units in one run and {len(ranked_b)} in the other")
    rows = []
    for unit, first in ranked_a.items():
        second = ranked_b[unit]
        shared = len({c for c, _ in first} & {c for c, _ in second})
        rows.append((unit, first[0][0], first[0][1], second[0][0], second[0][1], shared))
    stable = sum(1 for r in rows if r[1] == r[3])
    rows.sort(key=lambda r: (r[1] == r[3], r[5], -abs(r[4] - r[2])))
    columns = list(zip(*rows, strict=True)) if rows else [[]] * 6
    changes = pa.table({
        "unit": pa.array(columns[0], pa.string()),
        "concept_a": pa.array(columns[1], pa.string()),
        "score_a": pa.array(columns[2], pa.float32()),
        "concept_b": pa.array(columns[3], pa.string()),
        "score_b": pa.array(columns[4], pa.float32()),
        "shared_top_k": pa.array(columns[5], pa.int16()),
    })
    return LayerComparison(a.model, a.layer, a.method, a.source, len(rows), stable, changes)

