"""run_sweep: independent tasks on Dask distributed (or in this process), one record per task.

    records[i] = stored record of tasks[i].key            if the store holds a reusable one
                                                           (and not fresh)
               = run_task(tasks[i])                        otherwise, on a worker, then stored

Where the tasks run:
    scheduler="tcp://host:port"   an existing cluster (`dask scheduler`, `dask worker ADDRESS`)
    scheduler=None, workers=N     an embedded LocalCluster of N process workers with one thread
                                  each (default: one per core), closed at the end
    workers=0                     a plain loop in this process (no Dask)

Records are stored by the client as each task finishes (distributed.as_completed), once per
key, so a stopped sweep resumes where it stopped. A worker lost mid-task loses nothing: the
scheduler reschedules the tasks it held, and the client takes one result per future.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from contextlib import ExitStack

from bilevel.cache import code_version
from bilevel.cli.output import logger, progress as progress_bar, say as log_to
from bilevel.sweep.store import ResultStore
from bilevel.sweep.record import failed
from bilevel.sweep.task import Task, run_task


class SweepRecords(list):
    """The records in task order; `counts`: done (ok, run now), failed (failed, run now) and
    reused (read from the store), over distinct keys."""
    counts: dict


def reusable(record: dict, task: Task, retry_failed: bool = False) -> bool:
    """A stored record stands for `task` when it is ok, or failed and neither `retry_failed` nor
    a time limit shorter than the task's now (None: no limit) is why it failed."""
    if record.get("status") == "ok":
        return True
    if record.get("status") != "failed" or retry_failed:
        return False
    limit = record.get("time_limit")
    return limit is None or (task.time_limit is not None and task.time_limit <= limit)


def dask_key(task: Task) -> str:
    """The task's name on the cluster: label and the first 12 hex digits of its key."""
    return f"{task.label}-{task.key[:12]}"


def local_cluster(n_workers: int):
    """distributed.LocalCluster of `n_workers` processes with one thread each (SCIP and IPOPT
    are not thread-safe); a dashboard on a free port when bokeh is installed."""
    from distributed import LocalCluster
    dashboard = ":0" if importlib.util.find_spec("bokeh") else None
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                        dashboard_address=dashboard, silence_logs=logging.WARNING)


def run_sweep(tasks, store=None, scheduler: str | None = None, workers: int | None = None,
              retries: int = 2, progress: bool = True, log=None, retry_failed: bool = False,
              check_code: bool | None = None, name: str = "sweep",
              fresh: bool = False) -> SweepRecords:
    """One record per task, in task order (see the module docstring).

    store         ResultStore or directory; None: nothing is stored or reused
    scheduler     address of an existing Dask scheduler; excludes `workers`
    workers       local worker processes (None: os.cpu_count(); 0: this process, no Dask)
    retries       Dask retries of a run that raised outside the task's own wrapper (which
                  turns the task's exceptions into failed records): StaleCode, a worker that
                  cannot unpickle the task. A worker that dies is not a retry: the scheduler
                  reschedules its tasks, up to distributed.scheduler.allowed-failures times
    retry_failed  run again the tasks whose stored record failed
    fresh         run every task: the store is not read, and each record overwrites the stored one
    check_code    workers refuse a task (StaleCode: a failed record, not stored) when their
                  code version differs from this process's, the one in the keys (default: on
                  an existing scheduler, whose workers may predate a change of the code)
    log           callable(message) for progress messages (default: bilevel.cli.output.say(name))
    name          the sweep's name on the progress bar and in the default log
    Tasks with equal keys run once and share the record."""
    tasks = list(tasks)
    say = log or log_to(name)
    if scheduler is not None and workers is not None:
        raise ValueError("give a scheduler address or a number of local workers, not both")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if store is not None and not isinstance(store, ResultStore):
        store = ResultStore(store)
    distinct: dict[str, Task] = {}                          # the first task of each key
    for task in tasks:
        distinct.setdefault(task.key, task)
    records: dict[str, dict] = {}
    for key, task in distinct.items():
        record = store.get(key) if store is not None and not fresh else None
        if record is not None and reusable(record, task, retry_failed):
            records[key] = record
    counts = {"done": 0, "failed": 0, "reused": len(records)}
    # the costliest tasks first (their `cost`, then the time-limited solver tasks), so that no
    # long task starts last while the other workers idle; records come back in task order
    pending = sorted((t for key, t in distinct.items() if key not in records),
                     key=lambda t: (-t.cost, t.time_limit is None))
    t0 = time.perf_counter()
    bar = progress_bar(total=len(pending), desc=name, quiet=not progress)

    def finish(task: Task, record: dict, keep: bool = True) -> None:
        if task.key in records:                              # one record per key, stored once
            return
        records[task.key] = record
        if keep and store is not None:
            store.put(task.key, record)
        ok = record.get("status") == "ok"
        counts["done" if ok else "failed"] += 1
        if not ok:
            say(f"{task.label} failed: {record.get('reason')}")
        bar.update(1)

    try:
        if not pending:
            where = "nothing to run"
        elif workers == 0:
            where = "in process"
            for task in pending:
                finish(task, run_task(task))
        else:
            check = scheduler is not None if check_code is None else check_code
            where = _run_distributed(pending, finish, scheduler, workers, retries,
                                     code_version() if check else None)
    finally:
        bar.close()
    n = f"{len(tasks)} tasks" + (f" ({len(distinct)} distinct)" if len(distinct) < len(tasks)
                                 else "")
    say(f"{n}: {counts['done']} done, {counts['failed']} failed, {counts['reused']} "
        f"reused; {time.perf_counter() - t0:.1f} s, {where}")
    out = SweepRecords(dict(records[t.key]) for t in tasks)
    out.counts = counts
    return out


def _run_distributed(pending: list[Task], finish, scheduler, workers, retries, code) -> str:
    """Submit `pending` to a Dask cluster and finish() each as it completes; where it ran.
    `code`: the code version the workers must run (None: no check).
    A future that errs (KilledWorker: the workers running it died more than allowed-failures
    times; a lost scheduler; StaleCode) gives a failed record that is not stored."""
    from distributed import Client, as_completed
    with ExitStack() as stack:
        if scheduler is None:
            n = min(workers or os.cpu_count() or 1, len(pending))
            cluster = stack.enter_context(local_cluster(n))
            logger("sweep").debug(f"dashboard: {cluster.dashboard_link or 'none'}")
            client, where = stack.enter_context(Client(cluster)), f"{n} local worker processes"
        else:
            client, where = stack.enter_context(Client(scheduler)), f"on {scheduler}"
        futures = {client.submit(run_task, t, code, key=dask_key(t), pure=False,
                                 retries=retries): t for t in pending}
        for future in as_completed(list(futures)):
            task = futures.pop(future)
            try:
                record, keep = future.result(), True
            except Exception as e:
                from bilevel.cli.common import failure_reason
                record, keep = failed(failure_reason(e)), False
            finish(task, record, keep)
            future.release()
    return where
