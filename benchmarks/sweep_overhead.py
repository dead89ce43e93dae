"""The sweep engine's own cost per task: N empty tasks (bilevel.sweep.probes:empty) run in this
process (workers=0) and on a LocalCluster of process workers (one thread each), measured in one
run; the cluster's start-up and shutdown are timed separately. More rows: the in-process
loop with a result store (one JSON file written per task), and time-limited empty tasks, in
the calling process's persistent child process (its start-up timed separately) and in a new
child per task (the idle one ended first: start-up, Pyomo and bilevel.equilibria imports per
task). Prints the ratios to the in-process loop and a line for RESULTS.md.

    python benchmarks/sweep_overhead.py [--tasks 200] [--workers 2] [--child-tasks 10]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date

from bilevel.cache import code_version
from bilevel.sweep import Task, run_sweep, run_task
from bilevel.sweep.engine import local_cluster
from bilevel.sweep.server import close_idle

EMPTY = "bilevel.sweep.probes:empty"
OK = {"status": "ok", "result": None}


def quiet(message: str) -> None:
    pass


def per_task_ms(tasks, **options) -> float:
    """Wall-clock milliseconds per task of run_sweep(tasks, **options); every record ok."""
    t0 = time.perf_counter()
    records = run_sweep(tasks, progress=False, log=quiet, **options)
    seconds = time.perf_counter() - t0
    assert all(r == OK for r in records)
    return 1000.0 * seconds / len(tasks)


def new_child_ms(tasks) -> float:
    """Milliseconds per time-limited task when each runs in a new child process: the idle
    child of this process is ended before each task (as if children were not kept)."""
    t0 = time.perf_counter()
    for task in tasks:
        close_idle()
        assert run_task(task) == OK
    return 1000.0 * (time.perf_counter() - t0) / len(tasks)


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
    limited = [Task(EMPTY, {"i": i}, time_limit=60) for i in range(n + 1)]
    close_idle()
    t0 = time.perf_counter()
    assert run_task(limited[0]) == OK                        # starts this process's child
    child_start = time.perf_counter() - t0
    child = per_task_ms(limited[1:], workers=0)
    new_child = new_child_ms(limited[:args.child_tasks])
    close_idle()
    if code_version.__wrapped__() != code_version():
        print("the source tree changed during the run: children on other code than the keys "
              "were not kept, measure again")

    print(f"sweep engine cost per empty task, {n} tasks (ms per task; ratio to in-process)")
    print(f"{'path':<44} {'ms/task':>9} {'ratio':>8}")
    rows = [("in process (workers=0)", serial), ("in process + result store", stored),
            (f"LocalCluster, {w} process workers", dask),
            ("time limit, persistent child", child),
            (f"time limit, new child per task ({args.child_tasks} tasks)", new_child)]
    for name, ms in rows:
        print(f"{name:<44} {ms:9.3f} {ms / serial:8.1f}")
    print(f"LocalCluster start-up {start:.2f} s, shutdown {close:.2f} s ({w} workers, "
          f"{os.cpu_count()} cores); persistent child start-up {child_start:.2f} s")
    print("\nRESULTS.md row:")
    print("| date | tasks | in process ms | + store ms | LocalCluster ms | ratio | start-up s "
          "| time limit ms (persistent child) | time limit ms (new child per task) |")
    print(f"| {date.today()} | {n} | {serial:.3f} | {stored:.3f} | {dask:.2f} | "
          f"{dask / serial:.0f} | {start:.2f} | {child:.2f} | {new_child:.0f} |")


if __name__ == "__main__":
    main()
