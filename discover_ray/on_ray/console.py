"""Keeping Ray's C++ log lines off the console while Ray Data starts actors.

Ray's core worker writes every message of ERROR level and above to the process's stderr as well as to
its log file (``python-core-driver-*.log`` in the session's log folder), and Ray Data's actor pools
always trigger one at actor creation (ray#53727: constructor arguments in the object store). While a
pass runs, stderr (file descriptor 2) goes through a pipe that forwards everything except lines in the
C++ log format, which are already in Ray's log file.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

__all__ = ["without_ray_log_lines"]

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
