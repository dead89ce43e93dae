"""The command-line flags of every command that runs a sweep: where its tasks run.

    --scheduler ADDRESS   an existing Dask cluster (`dask scheduler`, then `dask worker ADDRESS`
                          on each machine), e.g. tcp://10.0.0.5:8786
    --workers N           local worker processes (default: one per core; 0: in this process)
"""
from __future__ import annotations

import argparse


def worker_count(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of workers >= 0, got {text!r}")
    return n


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    """Add --scheduler and --workers (mutually exclusive) in a group of their own."""
    group = parser.add_argument_group("where the tasks run")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster (started with `dask scheduler` and "
                            "`dask worker ADDRESS`), e.g. tcp://host:8786")
    where.add_argument("--workers", type=worker_count, metavar="N",
                       help="local worker processes (default: one per core; 0: in this process, "
                            "without Dask)")


def sweep_options(args: argparse.Namespace) -> dict:
    """run_sweep's keyword arguments from the parsed flags (no progress bar with -q)."""
    return {"scheduler": args.scheduler, "workers": args.workers,
            "progress": not getattr(args, "quiet", False)}
