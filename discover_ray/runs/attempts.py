"""Writing a run: each attempt in its own folder, events appended one file each, promotion on success.

``runs/{run_id}/attempts/{attempt}/attempt.json`` is written when the attempt starts and when it ends;
``…/events/NNNNN.json`` holds one stage event each (an object store cannot append to a file, and a
record rewritten per event would lose what a concurrent writer added). Only a succeeded attempt is
copied to ``runs/{run_id}/run.json``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from discover_ray.faults import fault_point
from discover_ray.runs.record import RunRecord, StageEvent
from discover_ray.store import Store, safe_segment

__all__ = ["RUN_FILE", "Attempt", "attempt_folder"]

RUN_FILE = "run.json"
ATTEMPT_FILE = "attempt.json"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def attempt_folder(run_id: str, attempt: str) -> str:
    return f"runs/{safe_segment(run_id, 'run id')}/attempts/{attempt}"


class Attempt:
    """One attempt of a run: ``event`` appends, ``finish`` closes it (and promotes it when it succeeded)."""

    def __init__(self, store: Store, record: RunRecord):
        self.store, self.record = store, record
        self.folder = attempt_folder(record.run_id, record.attempt)
        self._write_header()

    @classmethod
    def begin(cls, store: Store, record: RunRecord) -> Attempt:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")  # attempts sort by when they started
        record = record.model_copy(update={"attempt": f"{stamp}-{uuid.uuid4().hex[:8]}", "status": "running",
                                           "started": _now()})
        return cls(store, record)

    def _write_header(self) -> None:
        fault_point("record_write", detail=f"{self.folder}/{ATTEMPT_FILE}")
        self.store.write_json(f"{self.folder}/{ATTEMPT_FILE}", self.record.model_dump(mode="json", exclude={"stages"}),
                              sort_keys=False)

    def event(self, event: StageEvent) -> None:
        event = event.model_copy(update={"at": _now()})
        fault_point("record_write", detail=f"{self.folder}/events")
        self.store.write_json(f"{self.folder}/events/{len(self.record.stages):05d}.json", event.model_dump(mode="json"),
                              sort_keys=False)
        self.record.stages.append(event)

    def finish(self, status: str, error: str | None = None) -> RunRecord:
        self.record = self.record.model_copy(update={"status": status, "finished": _now(), "error": error})
        self._write_header()
        if status == "succeeded":
            fault_point("record_write", detail=f"runs/{self.record.run_id}/{RUN_FILE}")
            self.store.write_json(f"runs/{self.record.run_id}/{RUN_FILE}", self.record.model_dump(mode="json"),
                                  sort_keys=False)
        return self.record
