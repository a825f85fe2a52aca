"""Ray's own messages stay off the console; everything else passes, progress-bar redraws at once."""

from __future__ import annotations

import io
import os
import sys

from discover_ray.on_ray.console import _WithoutRayNotices, without_ray_log_lines

NOTICE = "\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: ab with address: x\n"


def test_raylet_notices_are_dropped_and_the_rest_passes():
    sink = io.StringIO()
    stream = _WithoutRayNotices(sink)
    stream.write("epoch 1 | loss 0.5\n" + NOTICE + "(raylet) A worker died or was killed\n")
    stream.write("\rRECORD ━━━ 10/72")  # a redraw without a newline goes out at once
    assert sink.getvalue() == "epoch 1 | loss 0.5\n(raylet) A worker died or was killed\n\rRECORD ━━━ 10/72"
    stream.write("(raylet) WARNING: half a line")
    stream.flush()
    assert "half a line" not in sink.getvalue()


def test_ray_log_lines_are_dropped_from_stderr(tmp_path, capfd):
    with without_ray_log_lines():
        os.write(2, b"[2026-12-01 08:52:09,519 E 13724 13724] core_worker.cc:2465: Actor with class name ...\n")
        os.write(2, b"a traceback line\n")
        print("progress", file=sys.stderr, flush=True)
    err = capfd.readouterr().err
    assert "core_worker.cc" not in err and "a traceback line" in err and "progress" in err
