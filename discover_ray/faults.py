"""Fault injection: ``DISCOVER_FAULT=<point>:<n>:<action>[:always]`` makes the n-th event of a named point fail.

The product's own code calls ``fault_point(name)`` where a crash would hurt most (after a part is written,
before a commit, while a run record is written, inside a worker on one probe image, inside a store write), so
tests — and users checking their own deployment — can kill a job at exactly that moment and check that a
re-run finishes with identical output and that nothing half-written is ever taken for complete.

- ``point``: one of ``POINTS``;
- ``n``: the n-th event of that point in this process (1-based); for ``image`` it is the image's position in
  the probe set (0-based), so the fault strikes one given image whichever worker loads it;
- ``action``: ``raise`` (an ``InjectedFault``), ``sigkill`` (the process dies at once, as on a lost node or an
  OOM kill), or ``enospc`` (an ``OSError`` "No space left on device", as a full disk gives);
- ``always``: fire on every matching event. Without it a fault fires once: once per process, and once in all
  processes when ``DISCOVER_FAULT_STATE`` names a folder (where a fired fault leaves a marker file), so a worker
  that is restarted and retried does not die again.

Several faults are separated by ``,``. With ``DISCOVER_FAULT`` unset every call is a dictionary lookup.
The Ray executor passes both variables on to its workers.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from discover_ray.errors import ConfigError

__all__ = ["ACTIONS", "ENV", "POINTS", "STATE_ENV", "Fault", "InjectedFault", "fault_point", "forwarded_env", "parse"]

ENV = "DISCOVER_FAULT"
STATE_ENV = "DISCOVER_FAULT_STATE"
POINTS = {
    "part_written": "a dataset part was just written (before the next one, before the commit)",
    "before_commit": "every part of a dataset is there; its _SUCCESS.json is about to be written",
    "record_write": "a run record file (attempt header, stage event, run.json) is about to be written",
    "store_write": "a store file is being written (its bytes are in a temporary file or in flight)",
    "image": "a worker is loading one probe image (n: its position in the probe set)",
}
ACTIONS = ("raise", "sigkill", "enospc")


class InjectedFault(RuntimeError):
    """Raised by a ``raise`` fault: a failure that was asked for, not a bug."""


@dataclass(frozen=True)
class Fault:
    point: str
    n: int
    action: str
    always: bool = False

    @property
    def token(self) -> str:
        return hashlib.sha256(f"{self.point}:{self.n}:{self.action}".encode()).hexdigest()[:16]


def parse(spec: str) -> list[Fault]:
    """The faults of a ``DISCOVER_FAULT`` value; a malformed one is an error that shows the format."""
    faults = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        fields = item.split(":")
        usage = f"{ENV}={item!r}: write <point>:<n>:<action>[:always], point one of {sorted(POINTS)}, action one of {ACTIONS}"
        if len(fields) not in (3, 4) or fields[0] not in POINTS or fields[2] not in ACTIONS or not fields[1].isdigit():
            raise ConfigError(usage)
        if len(fields) == 4 and fields[3] != "always":
            raise ConfigError(usage)
        faults.append(Fault(fields[0], int(fields[1]), fields[2], len(fields) == 4))
    return faults


_lock = threading.Lock()
_counts: dict[str, int] = {}
_fired: set[str] = set()
_parsed: tuple[str, list[Fault]] | None = None


def _active() -> list[Fault]:
    global _parsed
    spec = os.environ.get(ENV, "")
    if not spec:
        return []
    if _parsed is None or _parsed[0] != spec:
        _parsed = (spec, parse(spec))
    return _parsed[1]


def fault_point(point: str, index: int | None = None, detail: str = "") -> None:
    """Mark an event of ``point``; a fault configured for it fires here. ``index``: the event's own number
    (an image's position), instead of this process's running count."""
    faults = _active()
    if not faults:
        return
    assert point in POINTS, point
    with _lock:
        count = _counts[point] = _counts.get(point, 0) + 1
        event = count if index is None else index
        for fault in faults:
            if fault.point != point or fault.n != event:
                continue
            if not fault.always and not _claim(fault):
                continue
            _fire(fault, detail)


def _claim(fault: Fault) -> bool:
    """Whether a once-only fault may still fire (and mark it fired, here and in the state folder)."""
    if fault.token in _fired:
        return False
    _fired.add(fault.token)
    state = os.environ.get(STATE_ENV)
    if not state:
        return True
    marker = Path(state) / f"fired-{fault.token}"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with open(marker, "x"):
            return True
    except FileExistsError:
        return False


def _fire(fault: Fault, detail: str) -> None:
    what = f"injected fault {fault.point}:{fault.n}:{fault.action}" + (f" ({detail})" if detail else "")
    if fault.action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device [{what}]")
    raise InjectedFault(what)


def forwarded_env() -> dict[str, str]:
    """The fault variables set in this process, for the environment of workers started for it."""
    return {k: os.environ[k] for k in (ENV, STATE_ENV) if os.environ.get(k)}
