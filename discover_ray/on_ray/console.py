"""Keeping Ray's own messages off the console; they all stay in Ray's logs under the session folder.

Ray's core worker writes every message of ERROR level and above to the process's stderr as well as to
its log file (``python-core-driver-*.log`` in the session's log folder), and Ray Data's actor pools
always trigger one at actor creation (ray#53727: constructor arguments in the object store). While a
pass runs, stderr (file descriptor 2) goes through a pipe that forwards everything except lines in the
C++ log format, which are already in Ray's log file. The raylet's notices that Ray relays to the driver
(``(raylet) WARNING: …``) are dropped from ``sys.stdout`` / ``sys.stderr`` by ``without_ray_notices``, which the
CLI wraps around the commands that run on Ray.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

__all__ = ["without_ray_log_lines", "without_ray_notices"]

_RAY_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")


def _forward(read_fd: int, write_fd: int) -> None:
    pending = b""
    while chunk := os.read(read_fd, 65536):
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        out = b"".join(line + b"\n" for line in lines if not _RAY_LINE.match(line))
        if pending and not pending.startswith(b"["):  # a partial line (a progress bar redraw): now
            out, pending = out + pending, b""
        if out:
            os.write(write_fd, out)
    if pending and not _RAY_LINE.match(pending):
        os.write(write_fd, pending)


@contextlib.contextmanager
def without_ray_log_lines() -> Iterator[None]:
    """Within the block, stderr shows everything but Ray's C++ log lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (captured by a test runner): nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_forward, args=(read_fd, saved), daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the thread reads to its end
        thread.join(timeout=5)
        os.close(read_fd)
        os.close(saved)


_RAY_NOTICE = re.compile(r"^(\x1b\[\d+m)?\(raylet\)(\x1b\[0m)? WARNING: ")


class _WithoutRayNotices:
    """A text stream that passes everything on but the raylet's notices (lines ``(raylet) WARNING: …``)."""

    def __init__(self, stream: object):
        self.stream = stream
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        out = "".join(line + "\n" for line in lines if not _RAY_NOTICE.match(line))
        if self.pending and not self.pending.startswith(("(", "\x1b[")):  # a partial line (a progress bar): now
            out, self.pending = out + self.pending, ""
        if out:
            self.stream.write(out)  # type: ignore[attr-defined]
        return len(text)

    def flush(self) -> None:
        if self.pending and not _RAY_NOTICE.match(self.pending):
            self.stream.write(self.pending)  # type: ignore[attr-defined]
        self.pending = ""
        self.stream.flush()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


@contextlib.contextmanager
def without_ray_notices() -> Iterator[None]:
    """Within the block, the raylet's notices that Ray relays to the driver (e.g. that many worker processes
    were started) stay out of stdout and stderr; they are in the raylet's log. Ray's errors still show."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _WithoutRayNotices(saved[0]), _WithoutRayNotices(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        sys.stdout, sys.stderr = saved
