"""run_sweep: independent tasks on Dask distributed (or in this process), one record per task.

    records[i] = stored record of tasks[i].key            if the store holds a reusable one
                                                           (and not fresh)
               = run_task(tasks[i])                        otherwise, on a worker, then stored
A task whose result is a continuation (bilevel.sweep.continuation) finishes through child
tasks, run like the others, and a combine step in this process.

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

import heapq
import importlib.util
import logging
import os
import time
from contextlib import ExitStack

from bilevel.cache import code_version
from bilevel.cli.output import logger, progress as progress_bar, say as log_to
from bilevel.sweep.store import ResultStore
from bilevel.sweep.continuation import children, combined, is_continuation
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
    t0 = time.perf_counter()
    bar = progress_bar(total=0, desc=name, quiet=not progress)
    graph = _Graph(store, fresh, retry_failed, say, bar)
    for task in tasks:
        graph.want(task)
    distinct = len({t.key for t in tasks})
    try:
        if not graph.queued:
            where = "nothing to run"
        elif workers == 0:
            where = "in process"
            while graph.queued:
                task = graph.next()
                graph.settle(task, run_task(task), ran=True)
        else:
            check = scheduler is not None if check_code is None else check_code
            where = _run_distributed(graph, scheduler, workers, retries,
                                     code_version() if check else None)
    finally:
        bar.close()
    counts = graph.counts
    n = f"{len(tasks)} tasks" + (f" ({distinct} distinct)" if distinct < len(tasks) else "")
    say(f"{n}: {counts['done']} done, {counts['failed']} failed, {counts['reused']} "
        f"reused; {time.perf_counter() - t0:.1f} s, {where}")
    out = SweepRecords(dict(graph.final[t.key]) for t in tasks)
    out.counts = counts
    return out


class _Graph:
    """The records of a sweep's tasks and of their continuations' children
    (bilevel.sweep.continuation): which tasks still have to run (`queued`, the costliest first:
    their `cost`, then the time-limited solver tasks), which wait for children (`waiting`), and
    the final records (`final`), stored as they come, once per key."""

    def __init__(self, store, fresh, retry_failed, say, bar):
        self.store, self.fresh, self.retry_failed, self.say, self.bar = store, fresh, retry_failed, say, bar
        self.final: dict[str, dict] = {}
        self.queued: list[tuple] = []           # heap of (order key, arrival, task)
        self.waiting: dict[str, tuple[Task, dict, list[Task]]] = {}
        self.parents: dict[str, list[str]] = {}
        self.transient: set[str] = set()        # keys whose final record is not stored
        self.seen: set[str] = set()
        self.counts = {"done": 0, "failed": 0, "reused": 0}

    def want(self, task: Task) -> None:
        """`task` needs a record: from the store when it holds a reusable one, else run it."""
        if task.key in self.seen:
            return
        self.seen.add(task.key)
        record = None
        if self.store is not None and not self.fresh:
            record = self.store.get(task.key)
        if record is not None and (is_continuation(record) or reusable(record, task, self.retry_failed)):
            self.settle(task, record, ran=False)
            return
        # the costliest first, then the time-limited ones, then in arrival order (a stable sort)
        heapq.heappush(self.queued, (-task.cost, task.time_limit is None, len(self.seen), task))
        self.bar.total = (self.bar.total or 0) + 1
        self.bar.refresh()

    def next(self) -> Task:
        """The costliest queued task, taken off the queue."""
        return heapq.heappop(self.queued)[-1]

    def settle(self, task: Task, record: dict, ran: bool, keep: bool = True) -> None:
        """Take `record` as `task`'s: store it (when it ran and is `keep`), then either start its
        continuation's children or make it final and combine the parents it completes."""
        if ran:
            if keep and self.store is not None:
                self.store.put(task.key, record)
            if not keep:
                self.transient.add(task.key)
            self.bar.update(1)
        if is_continuation(record):
            kids = children(record)
            self.waiting[task.key] = (task, record, kids)
            for kid in kids:
                self.parents.setdefault(kid.key, []).append(task.key)
            for kid in kids:
                self.want(kid)
            self._combine(task.key)
            return
        if task.key in self.final:
            return
        self.final[task.key] = record
        ok = record.get("status") == "ok"
        self.counts["done" if ok and ran else "failed" if ran else "reused"] += 1
        if ran and not ok:
            self.say(f"{task.label} failed: {record.get('reason')}")
        for parent in self.parents.pop(task.key, []):
            self._combine(parent)

    def _combine(self, key: str) -> None:
        """Combine the continuation of `key` once all its children are final."""
        if key not in self.waiting:
            return
        task, record, kids = self.waiting[key]
        if any(kid.key not in self.final for kid in kids):
            return
        del self.waiting[key]
        keep = not any(kid.key in self.transient for kid in kids)
        self.bar.total = (self.bar.total or 0) + 1      # the combine counts as a step
        self.settle(task, combined(record, [self.final[kid.key] for kid in kids]), ran=True, keep=keep)


def _run_distributed(graph: _Graph, scheduler, workers, retries, code) -> str:
    """Submit the graph's queued tasks to a Dask cluster, settle each as it completes (which
    may queue continuation children, submitted at once); where it ran.
    `code`: the code version the workers must run (None: no check).
    A future that errs (KilledWorker: the workers running it died more than allowed-failures
    times; a lost scheduler; StaleCode) gives a failed record that is not stored."""
    from distributed import Client, as_completed
    with ExitStack() as stack:
        if scheduler is None:
            # one worker per core (not fewer for a short sweep: its tasks may continue into more)
            n = workers or os.cpu_count() or 1
            cluster = stack.enter_context(local_cluster(n))
            logger("sweep").debug(f"dashboard: {cluster.dashboard_link or 'none'}")
            client, where = stack.enter_context(Client(cluster)), f"{n} local worker processes"
        else:
            client, where = stack.enter_context(Client(scheduler)), f"on {scheduler}"
        futures, running = {}, as_completed()

        def submit_queued():
            while graph.queued:
                task = graph.next()
                future = client.submit(run_task, task, code, key=dask_key(task), pure=False,
                                       retries=retries)
                futures[future] = task
                running.add(future)

        submit_queued()
        for future in running:
            task = futures.pop(future)
            try:
                record, keep = future.result(), True
            except Exception as e:
                from bilevel.cli.common import failure_reason
                record, keep = failed(failure_reason(e)), False
            graph.settle(task, record, ran=True, keep=keep)
            future.release()
            submit_queued()
    return where
