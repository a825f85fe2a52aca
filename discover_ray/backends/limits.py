"""Limits on calls to a remote or slow backend: a timeout, bounded retries with backoff, a cap on calls in
flight, and a budget of calls.

Remote model servers fail in ordinary ways (a restart, a rate limit, a slow GPU); a run should ride out a
short outage without hammering the server, and give up with a clear error instead of hanging. The client
libraries' own retrying is switched off where we use these helpers, so the number of attempts is ours and
shows in the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from discover_ray.backends.base import BackendError

__all__ = ["BudgetExhausted", "CallBudget", "CallLimits", "backoff_waits", "concurrency_slot", "with_retries"]

T = TypeVar("T")


@dataclass(frozen=True)
class CallLimits:
    """How one backend's calls are bounded (per process)."""

    timeout: float = 60.0  # seconds per call (attempt)
    retries: int = 3  # attempts after the first
    backoff: float = 1.0  # the first wait, in seconds; doubles after each retry
    concurrency: int = 8  # the most calls in flight at once in one process
    max_backoff: float = 30.0  # no wait is longer than this

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0, not {self.backoff} and {self.max_backoff}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {self.concurrency}")


def backoff_waits(limits: CallLimits) -> list[float]:
    """The waits before each retry: backoff, 2·backoff, 4·backoff, … each capped at max_backoff."""
    return [min(limits.backoff * 2**i, limits.max_backoff) for i in range(limits.retries)]


def with_retries(
    call: Callable[[], T],
    limits: CallLimits,
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, tried again after a growing wait when it raises one of ``retry_on``; any other exception
    propagates at once. After ``1 + limits.retries`` failed attempts: a ``BackendError`` naming ``what``."""
    waits = backoff_waits(limits)
    attempts = 0
    while True:
        attempts += 1
        try:
            return call()
        except retry_on as err:
            if attempts > len(waits):
                detail = str(err) or type(err).__name__
                raise BackendError(f"{what}: failed after {attempts} attempts: {detail}") from err
            sleep(waits[attempts - 1])


class BudgetExhausted(BackendError):
    """A run's budget of backend calls is spent (a guard against a runaway bill on a paid API)."""


class CallBudget:
    """A thread-safe count of calls against an optional limit (``None``: unlimited)."""

    def __init__(self, limit: int | None = None, *, what: str = "backend calls"):
        if limit is not None and limit < 0:
            raise ValueError(f"a call budget must be >= 0, not {limit}")
        self.limit, self.what = limit, what
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self._used, 0)

    def spend(self, n: int = 1) -> None:
        """Count ``n`` calls; raises ``BudgetExhausted`` (counting nothing) when they would exceed the limit."""
        if n < 0:
            raise ValueError(f"cannot spend a negative number of calls ({n})")
        with self._lock:
            if self.limit is not None and self._used + n > self.limit:
                raise BudgetExhausted(
                    f"the budget of {self.limit} {self.what} is spent ({self._used} used, {n} more asked for); "
                    "raise the limit in the config to allow more calls"
                )
            self._used += n


_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _semaphore(name: str, limit: int) -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        semaphore = _SLOTS.get((name, limit))
        if semaphore is None:
            semaphore = _SLOTS[(name, limit)] = threading.BoundedSemaphore(limit)
        return semaphore


@contextmanager
def concurrency_slot(name: str, limit: int) -> Iterator[None]:
    """Hold one of ``limit`` slots named ``name`` (shared by every caller in this process, e.g. every
    summariser talking to one server), waiting for one to be free."""
    if limit < 1:
        raise ValueError(f"a concurrency limit must be >= 1, not {limit}")
    semaphore = _semaphore(name, limit)
    with semaphore:
        yield
