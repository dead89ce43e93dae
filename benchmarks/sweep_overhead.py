"""The sweep engine's own cost per task: N empty tasks (bilevel.sweep.probes:empty) run in this
process (workers=0) and on a LocalCluster of process workers (one thread each), measured in one
run; the cluster's start-up and shutdown are timed separately. Two more rows: the in-process
loop with a result store (one JSON file written per task), and time-limited empty tasks (a
child process per task). Prints the ratios to the in-process loop and a line for RESULTS.md.

    python benchmarks/sweep_overhead.py [--tasks 200] [--workers 2] [--child-tasks 10]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date

from bilevel.sweep import Task, run_sweep
from bilevel.sweep.engine import local_cluster

EMPTY = "bilevel.sweep.probes:empty"


def quiet(message: str) -> None:
    pass


def per_task_ms(tasks, **options) -> float:
    """Wall-clock milliseconds per task of run_sweep(tasks, **options); every record ok."""
    t0 = time.perf_counter()
    records = run_sweep(tasks, progress=False, log=quiet, **options)
    seconds = time.perf_counter() - t0
    assert all(r == {"status": "ok", "result": None} for r in records)
    return 1000.0 * seconds / len(tasks)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child-tasks", type=int, default=10)
    args = ap.parse_args(argv)
    n, w = args.tasks, args.workers
    tasks = [Task(EMPTY, {"i": i}) for i in range(n)]          # keys made before the clocks

    serial = per_task_ms(tasks, workers=0)
    with tempfile.TemporaryDirectory() as d:
        stored = per_task_ms(tasks, workers=0, store=d)
    t0 = time.perf_counter()
    cluster = local_cluster(w)
    start = time.perf_counter() - t0
    try:
        dask = per_task_ms(tasks, scheduler=cluster.scheduler_address, check_code=False)
    finally:
        t0 = time.perf_counter()
        cluster.close()
        close = time.perf_counter() - t0
    child_tasks = [Task(EMPTY, {"i": i}, time_limit=60) for i in range(args.child_tasks)]
    child = per_task_ms(child_tasks, workers=0)

    print(f"sweep engine cost per empty task, {n} tasks (ms per task; ratio to in-process)")
    print(f"{'path':<34} {'ms/task':>9} {'ratio':>8}")
    rows = [("in process (workers=0)", serial), ("in process + result store", stored),
            (f"LocalCluster, {w} process workers", dask),
            (f"in process, time limit ({args.child_tasks} tasks)", child)]
    for name, ms in rows:
        print(f"{name:<34} {ms:9.3f} {ms / serial:8.1f}")
    print(f"LocalCluster start-up {start:.2f} s, shutdown {close:.2f} s ({w} workers, "
          f"{os.cpu_count()} cores)")
    print("\nRESULTS.md row:")
    print("| date | tasks | in process ms | + store ms | LocalCluster ms | ratio | start-up s "
          "| time limit ms |")
    print(f"| {date.today()} | {n} | {serial:.3f} | {stored:.3f} | {dask:.2f} | "
          f"{dask / serial:.0f} | {start:.2f} | {child:.0f} |")


if __name__ == "__main__":
    main()
