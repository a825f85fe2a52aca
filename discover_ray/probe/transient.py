"""Transient read errors: told apart from permanent ones, retried with backoff, and never taken for a bad image.

A probe image that is not there (or may not be read) is bad input: it is named as failed and counts against
the failure budget. A read that failed because the storage service was busy (throttling, a 5xx answer, a reset
connection, a timeout) says nothing about the image: counting it as bad would commit a shard without it and
change the probe id. Such reads are retried a few times; if they still fail, ``TransientReadError`` fails the
task, which can then run again. The errors are recognised by type, errno, class name and status code, so
neither botocore nor aiohttp is imported here.
"""

from __future__ import annotations

import errno
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from discover_ray.errors import TransientReadError

__all__ = ["READ_ATTEMPTS", "READ_BACKOFF_SECONDS", "READ_RETRY_SECONDS", "backoff_waits", "is_transient",
           "retry_transient"]

T = TypeVar("T")

READ_ATTEMPTS = 4  # tries of one read in all (the first and three retries)
READ_BACKOFF_SECONDS = 0.5  # the first wait; it doubles after each retry
READ_RETRY_SECONDS = 20.0  # the waits of one read add up to no more than this

_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ETIMEDOUT", "ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "EPIPE", "EAGAIN",
                                      "EBUSY", "EREMOTEIO", "ENETDOWN", "ENETUNREACH", "EHOSTUNREACH")
    if hasattr(errno, name)
)  # s3fs raises SlowDown / 503 as EBUSY and InternalError / 500 as EREMOTEIO
_TRANSIENT_CLASSES = frozenset({
    # botocore: connection and streaming failures (HTTPClientError is their base)
    "HTTPClientError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteReadError",
    # aiohttp, urllib3, http.client, fsspec
    "ClientConnectionError", "ClientOSError", "ServerDisconnectedError", "ServerTimeoutError", "ClientPayloadError",
    "ProtocolError", "IncompleteRead", "RemoteDisconnected", "FSTimeoutError",
})
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = re.compile(r"SlowDown|Throttl|TooManyRequests|RequestLimitExceeded|reduce your request rate|"
                              r"ServiceUnavailable|InternalError|RequestTimeout", re.IGNORECASE)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from (s3fs keeps botocore's error as the cause)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(err: BaseException) -> tuple[int | None, str]:
    """The HTTP status and the service's error code an exception carries, if any (botocore, aiohttp, requests)."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (status if isinstance(status, int) else None), str(response.get("Error", {}).get("Code", ""))
    for name in ("status", "status_code"):
        value = getattr(err, name, None)
        if isinstance(value, int):
            return value, ""
    return None, ""


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is a passing fault of the storage service or the network, rather than of the input."""
    if isinstance(err, _PERMANENT):
        return False
    for cause in _chain(err):
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
            return True
        if _TRANSIENT_CLASSES.intersection(klass.__name__ for klass in type(cause).__mro__):
            return True
        status, code = _status(cause)
        if status in _TRANSIENT_STATUS or (code and _TRANSIENT_CODES.search(code)):
            return True
        if _TRANSIENT_CODES.search(_text(cause)):
            return True
    return False


def _text(err: BaseException) -> str:
    try:
        return str(err)
    except Exception:  # some exceptions cannot print themselves without all their parts (aiohttp's)
        return type(err).__name__


def backoff_waits() -> list[float]:
    """The waits before each retry: the backoff doubling from ``READ_BACKOFF_SECONDS``, the whole no longer than
    ``READ_RETRY_SECONDS`` (read when called, so the module constants can be changed)."""
    waits, left = [], READ_RETRY_SECONDS
    for i in range(max(READ_ATTEMPTS - 1, 0)):
        wait = min(READ_BACKOFF_SECONDS * 2**i, left)
        waits.append(wait)
        left -= wait
    return waits


def retry_transient(read: Callable[[], T], what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """``read()``, tried again after a growing, jittered wait while it fails with a transient error; any other
    error propagates at once. A transient error on the last attempt is a ``TransientReadError`` naming ``what``."""
    waits = backoff_waits()
    for attempt in range(len(waits) + 1):
        try:
            return read()
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == len(waits):
                raise TransientReadError(
                    f"reading {what} failed {attempt + 1} times with a transient error ({type(err).__name__}: "
                    f"{err}); it is not counted as a bad image. The task fails so that it can run again: check the "
                    "storage service (throttling, an outage) and re-run, which resumes where this run stopped"
                ) from err
            sleep(waits[attempt] * random.uniform(0.5, 1.0))  # jitter: workers throttled together retry apart
    raise AssertionError("unreachable")
