"""The fault table: every fault-injection scenario × what happened (prints Markdown).

Runs the fault tests (``tests/unit/test_faults.py``, ``tests/unit/test_s3_faults.py``), each of which notes
its row (``tests.s3_faults.table_row``) in ``$DISCOVER_FAULT_TABLE``, and prints one row per scenario: the
fault, how the first job ended, what it left in the store, whether the re-run's store is byte-identical to
a clean run's, whether anything was lost (and what the re-run computed again), and the message the job gave.
Expected failures (xfail) show up as rows whose re-run *differs*.

    python tests/benchmarks/bench_faults.py            # both modules (about a minute and a half on 2 cores)
    python tests/benchmarks/bench_faults.py -k s3      # extra pytest arguments select scenarios
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ["tests/unit/test_faults.py", "tests/unit/test_s3_faults.py"]
COLUMNS = [("scenario", "Where"), ("fault", "Fault"), ("first", "First job"), ("after", "Store after it"),
           ("rerun", "Re-run identical?"), ("lost", "Anything lost? (re-run redid)"), ("message", "Message")]


def cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(key, "")) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        env = {**os.environ, "DISCOVER_FAULT_TABLE": str(path)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES, *argv],
                              cwd=REPO, env=env, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:], file=sys.stderr)
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    print(table(rows))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
