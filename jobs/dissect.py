"""Dissect checkpoints on Ray: ``python -m jobs.dissect --config CONFIG [--address ADDRESS]``.

The entrypoint of ``discover submit`` and of the Kubernetes RayJobs. Without an address it joins the
job's cluster (``RAY_ADDRESS``) or starts a local one. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys

from discover_ray.cli import run_dissect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.dissect", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="dissection config (YAML)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    parser.add_argument("--store", default=None, help="output root, overriding the config (a path or s3://...)")
    args = parser.parse_args(argv)
    return run_dissect(args.config, address=args.address, store=args.store)


if __name__ == "__main__":
    sys.exit(main())
