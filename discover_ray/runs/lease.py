"""A run's lease: ``runs/{run_id}/lease.json`` names the one job computing a run now.

Two identical jobs would compute the same content-addressed outputs, so their datasets cannot disagree; but
they would spend the cluster twice and interleave their attempt records. The lease lets the second one wait
for the first (``wait_s``) or stop at once with ``RunInProgress`` saying who holds it and until when.

``lease.json`` is ``{owner: {host, pid, uuid}, acquired, renewed, expires, ttl_s}``. The holder renews it
from a daemon thread every ``ttl/3`` and deletes it at the end. Taking it:

- local stores: an ``O_EXCL`` create (only one creator can win), written, then read back;
- object stores (no exclusive create here): written, then read back after ``SETTLE_S``: the last writer
  wins, and a writer that reads back another owner stops;
- an expired lease (its job was killed, or froze for longer than the ttl) is taken over the same way
  (written, then read back); one whose owner ran on this host and whose process is gone is taken over at
  once, so the re-run of a killed job does not wait for the expiry.

Expiry compares wall clocks: jobs on other hosts need clocks that agree to within a fraction of the ttl.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from discover_ray.errors import ConfigError, RunInProgress
from discover_ray.store import Store, safe_segment

__all__ = ["DEFAULT_TTL_S", "LEASE_FILE", "TTL_ENV", "WAIT_ENV", "Owner", "RunLease", "lease_path"]

LEASE_FILE = "lease.json"
TTL_ENV = "DISCOVER_LEASE_TTL_S"
WAIT_ENV = "DISCOVER_LEASE_WAIT_S"
DEFAULT_TTL_S = 60.0
SETTLE_S = 0.5  # object stores: how long a writer lets a competing write land before it reads its lease back
POLL_S = 1.0
UNREADABLE_RETRIES = 10  # reads of a lease file that does not parse yet, 20 ms apart, before it counts as unreadable


def lease_path(run_id: str) -> str:
    return f"runs/{safe_segment(run_id, 'run id')}/{LEASE_FILE}"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(stamp: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must be 0 or more seconds")
    return value


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    uuid: str

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Owner:
        owner = lease.get("owner") or {}
        return cls(str(owner.get("host", "?")), int(owner.get("pid", -1) or -1), str(owner.get("uuid", "")))

    def gone(self) -> bool:
        """Whether this owner's process is known to be dead: it ran on this host and no such process exists."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False  # another host's process cannot be seen from here: only the expiry tells
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class RunLease:
    """The lease of one run for this process: ``acquire`` (or ``with``), ``check`` between stages, ``release``."""

    def __init__(self, store: Store, run_id: str, ttl_s: float | None = None, wait_s: float | None = None):
        self.store, self.run_id = store, run_id
        self.path = lease_path(run_id)
        self.ttl_s = float(ttl_s if ttl_s is not None else _env_seconds(TTL_ENV, DEFAULT_TTL_S))
        self.wait_s = float(wait_s if wait_s is not None else _env_seconds(WAIT_ENV, 0.0))
        if self.ttl_s <= 0:
            raise ConfigError(f"the lease ttl must be more than 0 seconds, not {self.ttl_s} ({TTL_ENV})")
        self.owner = Owner.me()
        self.held = False
        self.lost: str | None = None  # why the lease is no longer ours, once another job took it over
        self.took_over: dict[str, Any] | None = None  # the expired lease this one replaced
        self._acquired = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it ------------------------------------------------------------------------------------
    def acquire(self) -> RunLease:
        """Take the lease, waiting up to ``wait_s`` for a live holder to let go; ``RunInProgress`` if it does not."""
        started = time.monotonic()
        while True:
            other = self._try_take()
            if other is None:
                self.held = True
                self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.run_id}", daemon=True)
                self._thread.start()
                return self
            waited = time.monotonic() - started
            left = self.wait_s - waited
            if left <= 0:
                raise RunInProgress(self._busy(other, waited))
            expires = _seconds(other.get("expires"))
            until_expiry = expires - time.time() if expires is not None else POLL_S
            time.sleep(max(0.05, min(POLL_S, left, until_expiry + 0.05)))

    def _try_take(self) -> dict[str, Any] | None:
        """None once the lease is ours; else the lease that another live job holds."""
        self._acquired = 0.0
        current = self._read()
        if current is None:
            if self.store.is_local:
                if self._create_exclusive():
                    return None
                return self._read() or self._unreadable()
            return self._write_and_verify()
        if Owner.of(current).uuid == self.owner.uuid:
            return None
        if not self._expired(current):
            return current
        if self._read() != current:  # it changed meanwhile: someone renewed or took it first
            return self._read() or self._unreadable()
        other = self._write_and_verify()
        if other is None:
            self.took_over = current
        return other

    def _expired(self, lease: dict[str, Any]) -> bool:
        if lease.get("unreadable"):
            return bool(lease.get("stale"))
        expires = _seconds(lease.get("expires"))
        return expires is None or expires <= time.time() or Owner.of(lease).gone()

    def _create_exclusive(self) -> bool:
        """Local stores: create the lease file only if there is none (``O_EXCL``), then check it reads back as ours."""
        full = self.store.path(self.path)
        self.store.fs.makedirs(os.path.dirname(full), exist_ok=True)
        try:
            fd = os.open(full, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(self._payload())
        mine = self._read()
        return mine is not None and Owner.of(mine).uuid == self.owner.uuid

    def _write_and_verify(self) -> dict[str, Any] | None:
        """Write our lease, let a competing write land, read it back: the last writer wins."""
        self.store.write_bytes(self.path, self._payload())
        time.sleep(SETTLE_S)
        back = self._read()
        if back is not None and Owner.of(back).uuid == self.owner.uuid:
            return None
        return back or self._unreadable()

    def _read(self) -> dict[str, Any] | None:
        """The lease as stored; None when there is none; ``{"unreadable": True}`` while a creator is still writing
        it (or after it died doing so: then ``stale`` once the file is older than the ttl)."""
        for _ in range(UNREADABLE_RETRIES):  # an O_EXCL creator writes its lease a moment after creating the file
            try:  # one GET (an open would check the ETag of a HEAD, and fail if a renewal replaced it in between)
                raw = self.store.fs.cat_file(self.store.path(self.path))
            except FileNotFoundError:
                return None
            try:
                lease = json.loads(raw)
                if isinstance(lease, dict) and "owner" in lease:
                    return lease
            except ValueError:
                pass
            time.sleep(0.02)
        return self._unreadable()

    def _unreadable(self) -> dict[str, Any]:
        try:
            modified = self.store.fs.modified(self.store.path(self.path)).timestamp()
        except (FileNotFoundError, NotImplementedError, OSError):
            modified = time.time()
        return {"unreadable": True, "stale": modified + self.ttl_s < time.time(), "expires": _stamp(modified + self.ttl_s)}

    def _payload(self, renewed: float | None = None) -> bytes:
        now = time.time()
        if not self._acquired:
            self._acquired = now
        renewed = renewed or now
        return json.dumps({
            "owner": {"host": self.owner.host, "pid": self.owner.pid, "uuid": self.owner.uuid},
            "run_id": self.run_id, "acquired": _stamp(self._acquired), "renewed": _stamp(renewed),
            "expires": _stamp(renewed + self.ttl_s), "ttl_s": self.ttl_s,
        }, indent=2).encode()

    def _busy(self, lease: dict[str, Any], waited: float) -> str:
        where = self.store.path(self.path)
        if lease.get("unreadable"):
            holder = f"{where} is being written by another job (unreadable so far; it counts as stale after {lease['expires']})"
        else:
            owner = Owner.of(lease)
            holder = (f"{where} is held by pid {owner.pid} on host {owner.host} (lease {owner.uuid[:8]}), since "
                      f"{lease.get('acquired')}, last renewed {lease.get('renewed')}, expiring {lease.get('expires')} "
                      "unless renewed")
        waited_s = f" (waited {waited:.0f} s)" if waited >= 1 else ""
        return (f"run {self.run_id} is already running{waited_s}: {holder}. That job writes the same outputs this one "
                f"would: let it finish (a re-run then reuses everything), or wait for it with {WAIT_ENV}=<seconds> "
                "(dissect(..., lease_wait_s=...)). If that job is dead, its lease lapses at the expiry and the next run "
                f"takes over; delete {where} only if you are sure no job is running it.")

    # -- holding it -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise when another job took the lease over (ours lapsed): two jobs must not run one run at once."""
        if self.lost:
            raise RunInProgress(self.lost)

    def renew(self) -> None:
        """Push the expiry on, if the lease is still ours; note the loss when it is not."""
        current = self._read()
        if current is not None and not current.get("unreadable") and Owner.of(current).uuid != self.owner.uuid:
            owner = Owner.of(current)
            self.lost = (f"run {self.run_id}: this job's lease {self.store.path(self.path)} lapsed and pid {owner.pid} on "
                         f"host {owner.host} took it over at {current.get('acquired')}; this job stops so that the run is "
                         f"computed by one job at a time (was this process paused for more than {self.ttl_s:.0f} s? "
                         f"raise {TTL_ENV})")
            self._stop.set()
            return
        self.store.write_bytes(self.path, self._payload(time.time()))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as err:  # a passing store error: try again at the next period, the ttl has room
                print(f"warning: could not renew the lease of run {self.run_id}: {type(err).__name__}: {err}",
                      file=sys.stderr)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours. Never raises: it runs while errors propagate."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if not self.held:
            return
        self.held = False
        try:
            current = self._read()
            if current is not None and Owner.of(current).uuid == self.owner.uuid:
                self.store.fs.rm(self.store.path(self.path))
        except Exception as err:
            print(f"warning: could not release the lease {self.store.path(self.path)}: {type(err).__name__}: {err}; "
                  f"it lapses within {self.ttl_s:.0f} s", file=sys.stderr)

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
