"""How labels evolve over N checkpoints of one architecture: per layer, the label stability between
consecutive checkpoints, the units whose concept changed, and the first checkpoint where each concept appears.

The checkpoints are either the models of one run (a job over many checkpoints: ``models[].checkpoints``),
grouped by architecture in the run's order, or several runs of one model each (``discover watch``'s runs),
in the order given. Consecutive checkpoints are compared as ``compare_runs`` compares two runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from discover_ray.analyze.compare import LayerComparison, compare_entries
from discover_ray.errors import IncompatibleRuns
from discover_ray.runs import LabelEntry, RunRecord, load_run
from discover_ray.schema import Labels
from discover_ray.store import Store, config_hash

__all__ = ["Checkpointed", "LayerEvolution", "Step", "evolution", "label_evolution", "run_checkpoints",
           "runs_as_checkpoints"]


@dataclass(frozen=True)
class Checkpointed:
    """One checkpoint of the sequence: its name and the labellings it has."""

    name: str
    entries: tuple[LabelEntry, ...]


@dataclass
class Step:
    """From one checkpoint to the next, on one layer."""

    before: str
    after: str
    units: int
    stable: int
    changed: list[dict[str, Any]]  # the units whose top concept changed, most changed first

    @property
    def stability(self) -> float:
        return self.stable / self.units if self.units else 0.0


@dataclass
class LayerEvolution:
    layer: str
    method: str
    source: str
    checkpoints: list[str]
    steps: list[Step] = field(default_factory=list)
    first_seen: dict[str, str] = field(default_factory=dict)  # concept → the first checkpoint where a unit has it

    @property
    def first_by_checkpoint(self) -> list[tuple[str, list[str]]]:
        """Each checkpoint where concepts first appear, in checkpoint order, with those concepts (sorted)."""
        firsts: dict[str, list[str]] = {}
        for concept, name in self.first_seen.items():
            firsts.setdefault(name, []).append(concept)
        return [(name, sorted(firsts[name])) for name in self.checkpoints if name in firsts]

    @property
    def title(self) -> str:
        return f"{self.layer} ({self.method}" + (f", {self.source})" if self.source else ")")


def run_checkpoints(run: RunRecord) -> list[list[Checkpointed]]:
    """The models of one run grouped by architecture (model spec without its weights), in the run's order;
    only groups of two or more checkpoints."""
    groups: dict[str, list[Checkpointed]] = {}
    for label, model in run.models.items():
        spec = {k: v for k, v in model.spec.items() if k not in ("alias", "checkpoint")}
        entries = tuple(e for e in run.labels if e.model == label and e.table == "labels")
        groups.setdefault(config_hash(spec), []).append(Checkpointed(label, entries))
    return [g for g in groups.values() if len(g) > 1]


def evolution(store: Store | str, sequence: Sequence[Checkpointed], *, method: str | None = None,
              changed: int = 5) -> list[LayerEvolution]:
    """Per (layer, method, concept source) that every checkpoint labelled: each consecutive step and the first
    checkpoint of each concept (a concept some unit has as its top label)."""
    store = Store.of(store)
    if len(sequence) < 2:
        raise IncompatibleRuns("an evolution needs at least two checkpoints")
    keyed = [{(e.layer, e.method, e.source): e for e in c.entries if method is None or e.method == method}
             for c in sequence]
    common = [k for k in keyed[0] if all(k in other for other in keyed[1:])]
    if not common:
        raise IncompatibleRuns(f"checkpoints {', '.join(c.name for c in sequence)} labelled no layer in common"
                               + (f" with method {method!r}" if method else ""))
    out = []
    for key in common:
        layer, method_name, source = key
        found = LayerEvolution(layer, method_name, source, [c.name for c in sequence])
        labels = [Labels(store.committed(k[key].dataset).read()) for k in keyed]
        for i, table in enumerate(labels):
            for concept, _ in table.top().values():
                found.first_seen.setdefault(concept, sequence[i].name)
        for i in range(1, len(sequence)):
            step: LayerComparison = compare_entries(keyed[i - 1][key], keyed[i][key], labels[i - 1], labels[i])
            moved = [r for r in step.changes.to_pylist() if r["concept_a"] != r["concept_b"]]
            found.steps.append(Step(sequence[i - 1].name, sequence[i].name, step.units, step.stable, moved[:changed]))
        out.append(found)
    return out


def runs_as_checkpoints(store: Store | str, run_ids: Sequence[str], names: Sequence[str] | None = None) -> list[Checkpointed]:
    """Runs as a checkpoint sequence (e.g. ``discover watch``'s, one per checkpoint), named by ``names`` or run id;
    of each run its first model (the one ``discover watch`` gives each checkpoint)."""
    store = Store.of(store)
    out = []
    for i, run_id in enumerate(run_ids):
        run = load_run(store, run_id)
        first = next(iter(run.models))
        out.append(Checkpointed(names[i] if names else run_id,
                                tuple(e for e in run.labels if e.table == "labels" and e.model == first)))
    return out


def label_evolution(store: Store | str, runs: str | Sequence[str], *, method: str | None = None,
                    changed: int = 5) -> list[LayerEvolution]:
    """The evolution view: of one run's checkpoints (each architecture it holds twice or more), or of several
    runs of one model each, in the order given."""
    store = Store.of(store)
    if isinstance(runs, str) or len(runs) == 1:
        run_id = runs if isinstance(runs, str) else runs[0]
        groups = run_checkpoints(load_run(store, run_id))
        if not groups:
            raise IncompatibleRuns(f"run {run_id} holds no architecture at two checkpoints or more; give several runs, "
                                   "or dissect many checkpoints in one job (models[].checkpoints)")
        return [layer for group in groups for layer in evolution(store, group, method=method, changed=changed)]
    return evolution(store, runs_as_checkpoints(store, runs), method=method, changed=changed)
