"""Reading runs back, without Ray: a run's record, its attempts, its label tables, what it references."""

from __future__ import annotations

from discover_ray.errors import RunNotFound, UnknownName
from discover_ray.runs.attempts import ATTEMPT_FILE, RUN_FILE, attempt_folder
from discover_ray.runs.record import LabelEntry, RunRecord, StageEvent
from discover_ray.schema import Descriptions, Explanations, Labels, Scores
from discover_ray.store import Store, is_safe_segment

__all__ = ["READERS", "list_runs", "load_attempts", "load_run", "read_labels", "read_simulation", "read_verification",
           "referenced_datasets", "run_folder"]

#: how each kind of label table a method writes is read back
READERS: dict[str, type[Labels] | type[Explanations] | type[Descriptions]] = {
    "labels": Labels, "explanations": Explanations, "descriptions": Descriptions}


def list_runs(store: Store | str) -> list[str]:
    return Store.of(store).listdir("runs")


def run_folder(run_id: str) -> str:
    """``runs/{run_id}``; a run id that is not one folder name (``../x``, typed on the command line) is refused
    before the store is touched."""
    if not isinstance(run_id, str) or not is_safe_segment(run_id):
        raise RunNotFound(f"{run_id!r} is not a run id: run ids are the names `discover dissect` prints (one folder "
                          "under the store's runs/, no '/' or '..'); `ls STORE/runs` lists them")
    return f"runs/{run_id}"


def load_attempts(store: Store | str, run_id: str) -> list[RunRecord]:
    """Every attempt of a run, oldest first, with its events (a killed attempt stays ``running``)."""
    folder_of_run = run_folder(run_id)
    store = Store.of(store)
    out = []
    for attempt in store.listdir(f"{folder_of_run}/attempts"):
        folder = attempt_folder(run_id, attempt)
        if not store.exists(f"{folder}/{ATTEMPT_FILE}"):
            continue
        header = store.read_json(f"{folder}/{ATTEMPT_FILE}")
        events = [StageEvent.model_validate(store.read_json(f"{folder}/events/{name}"))
                  for name in store.listdir(f"{folder}/events") if name.endswith(".json")]
        out.append(RunRecord.model_validate({**header, "stages": [e.model_dump() for e in events]}))
    return out


def load_run(store: Store | str, run_id: str) -> RunRecord:
    """The record of a run's latest successful attempt; a run that never succeeded is an error saying why."""
    relative = f"{run_folder(run_id)}/{RUN_FILE}"
    store = Store.of(store)
    if store.exists(relative):
        return RunRecord.model_validate(store.read_json(relative))
    attempts = load_attempts(store, run_id)
    if attempts:
        last = attempts[-1]
        why = f": {last.error}" if last.error else ""
        raise RunNotFound(f"run {run_id} has not succeeded yet; its latest attempt ({last.attempt}) is {last.status}{why}")
    known = list_runs(store)
    raise RunNotFound(f"no run {run_id!r} under {store.root}; runs there: {known[:20] or 'none'}")


def read_labels(
    store: Store | str, run_id: str, layer: str, method: str | None = None, model: str | None = None,
) -> list[tuple[LabelEntry, Labels | Explanations | Descriptions]]:
    """The label tables of ``layer`` in a run (optionally one method / model), with what each one is: ranked
    concept labels (``Labels``), weighted explanations (``Explanations``, ``entry.table == "explanations"``) or
    free-text descriptions (``Descriptions``, Describe-and-Dissect's candidates with their evidence); all read
    as unit → ranked concepts."""
    run_folder(run_id)  # a path is refused before the store is opened
    store = Store.of(store)
    run = load_run(store, run_id)
    chosen = [
        e for e in run.labels
        if e.table in READERS and e.layer == layer and (method is None or e.method == method)
        and (model is None or e.model == model)
    ]
    if not chosen:
        layers = sorted({e.layer for e in run.labels})
        methods = sorted({e.method for e in run.labels})
        raise UnknownName(
            f"run {run_id} has no labels for layer {layer!r}"
            + (f", method {method!r}" if method else "")
            + (f", model {model!r}" if model else "")
            + f"; layers: {layers}, methods: {methods}"
        )
    return [(e, READERS[e.table](store.committed(e.dataset).read())) for e in chosen]


def read_simulation(store: Store | str, run: str | RunRecord, entry: LabelEntry, scoring: str = "correlation",
                    simulator: str | None = None) -> dict[str, float | None] | None:
    """unit → its simulation score of ``entry``'s labels (None: dead), or None when the run did not score them;
    ``run`` is a run id or its record (read once by a caller that reads many entries)."""
    store = Store.of(store)
    record = load_run(store, run) if isinstance(run, str) else run
    for s in record.simulation:
        if (s.model, s.layer, s.method, s.source, s.scoring) == (entry.model, entry.layer, entry.method, entry.source,
                                                                  scoring) and simulator in (None, s.simulator):
            return Scores(store.committed(s.dataset).read()).by_unit(scoring)
    return None


def read_verification(store: Store | str, run: str | RunRecord, entry: LabelEntry,
                      metric: str = "auc") -> dict[str, float | None] | None:
    """unit → its verification score of ``entry``'s labels (``auc``, ``mad`` or ``auc_shuffled``; None: not scored),
    or None when the run did not verify them."""
    store = Store.of(store)
    record = load_run(store, run) if isinstance(run, str) else run
    for v in record.verification:
        if (v.model, v.layer, v.method, v.source) == (entry.model, entry.layer, entry.method, entry.source):
            return Scores(store.committed(v.dataset).read()).by_unit(metric)
    return None


def referenced_datasets(store: Store | str) -> set[str]:
    """Every dataset a run record or an attempt of any run names (what garbage collection keeps)."""
    store = Store.of(store)
    found: set[str] = set()
    for run_id in list_runs(store):
        records = load_attempts(store, run_id)
        if store.exists(f"runs/{run_id}/{RUN_FILE}"):
            records.append(load_run(store, run_id))
        for record in records:
            found.update(record.outputs)
            found.update(e.dataset for e in record.labels)
            found.update(s.dataset for s in record.simulation)
            found.update(v.dataset for v in record.verification)
            found.update(path for m in record.models.values() for path in m.layers.values())
            found.update(path for s in record.stages for path in s.outputs)
    return found
