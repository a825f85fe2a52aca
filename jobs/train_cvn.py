"""Train a competitive vision network with Ray Train: ``python -m jobs.train_cvn --config CONFIG``.

The entrypoint for Ray Jobs and the Kubernetes RayJobs. Without an address it joins the job's cluster
(``RAY_ADDRESS``) or starts a local one. Re-running the same config resumes from the newest checkpoint.
Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys

from discover_ray.cli import run_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_cvn", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config (YAML)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    parser.add_argument("--storage-path", default=None, help="checkpoint root, overriding the config (a path or s3://...)")
    parser.add_argument("--epochs", type=int, default=None, help="train to this many epochs, overriding the config")
    args = parser.parse_args(argv)
    return run_train(args.config, address=args.address, storage_path=args.storage_path, epochs=args.epochs)


if __name__ == "__main__":
    sys.exit(main())
