"""Time and peak memory of a call, measured in this process.

Timing runs under the default allocator, as users run the code. Memory is measured in a separate pass
after ``fix_allocator()``: glibc then serves every large buffer by mmap and returns it when freed, so
the peak resident size reflects live allocations, not memory a previous call left in the heap.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable
from typing import Any

import torch

_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def fix_allocator(threshold: int = 128 * 1024) -> None:
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)


def _settle(device: str) -> None:
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    if device == "cuda":
        torch.cuda.synchronize()


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def time_call(fn: Callable[[], Any], device: str = "cpu", repeat: int = 1) -> tuple[Any, dict[str, Any]]:
    """Best wall time of ``repeat`` runs (all listed) and the last run's result."""
    seconds = []
    result = None
    for _ in range(repeat):
        _settle(device)
        start = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(round(time.perf_counter() - start, 3))
    stats: dict[str, Any] = {"seconds": min(seconds)}
    if repeat > 1:
        stats["all_seconds"] = seconds
    return result, stats


def peak_memory(fn: Callable[[], Any], device: str = "cpu") -> dict[str, float]:
    """Peak memory of one run above what was resident before it (MiB); call ``fix_allocator`` first on CPU."""
    _settle(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak resident set size to the current one
        before = _status_mib("VmRSS")
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mib("VmHWM")
    return {"extra_mib": round(peak - before, 1), "peak_mib": round(peak, 1)}


def emit(report: dict[str, Any], out: Any = None) -> None:
    """Print a benchmark's JSON report, and write it to ``out`` (a path) when given."""
    import json

    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text)
