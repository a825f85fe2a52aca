"""Dissect every new checkpoint of a training run: ``python -m jobs.watch TRAIN_DIR --config CONFIG [--once]``.

The entrypoint of the scheduled Kubernetes jobs (a RayCronJob, or a CronJob that creates a RayJob): each run
lists the training run's completed checkpoints, dissects those not dissected yet (runs are named by content,
so listing again is free) and records the labels' drift. Without an address it joins the job's cluster.
Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys

from discover_ray.cli import run_watch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.watch", description=__doc__.splitlines()[0])
    parser.add_argument("train_dir", help="the training run's folder (local or s3://...)")
    parser.add_argument("--config", required=True, help="dissection config (YAML); its first model gets each checkpoint")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--interval", type=float, default=600.0, help="seconds between passes without --once")
    args = parser.parse_args(argv)
    return run_watch(args.train_dir, args.config, once=args.once, interval=args.interval)


if __name__ == "__main__":
    sys.exit(main())
