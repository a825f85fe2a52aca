"""Time and peak memory of one call, measured in this process (CPU: VmHWM reset; CUDA: allocator peak)."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


MMAP_THRESHOLD = "131072"


def isolate_allocator() -> None:
    """Re-exec once with a fixed glibc mmap threshold, so large buffers go back to the OS when freed.

    Otherwise memory freed by one measured call is reused by the next without raising its RSS, and
    the second call's peak looks smaller than it is.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
        os.execv(sys.executable, [sys.executable, *sys.argv])


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once; return its result, seconds, and peak memory above what was resident before (MiB)."""
    gc.collect()
    _trim()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak resident set size to the current one
        before = _status_mib("VmRSS")
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mib("VmHWM")
    return result, {"seconds": round(seconds, 3), "extra_mib": round(peak - before, 1), "peak_mib": round(peak, 1)}
