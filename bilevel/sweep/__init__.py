"""The sweep engine: every sweep (studies over many MDPs, formulations x alphas, RL seeds) as a
list of independent tasks run on Dask distributed, with one stored record per task.

    task.py     Task (fn "module:function", JSON kwargs, content-address key, time limit),
                task_key, run_task (the wrapper: ok/failed record, time limit in a child process)
    server.py   the caller's side of time-limited tasks: a kept child process per caller, killed
                (process group, SIGKILL) past a task's limit and replaced
    child.py    `python -m bilevel.sweep.child PARENT_PID`: serves time-limited tasks one at a time
    store.py    ResultStore: one JSON file per key, written atomically
    engine.py   run_sweep: reuse stored records, run the rest (LocalCluster, an existing
                scheduler, or in process), store each as it finishes
    continuation.py  a task that finishes through child tasks and a combine step
    options.py  --scheduler / --workers for the commands
    probes.py   small task functions with known answers (tests, benchmarks)

    from bilevel.sweep import Task, run_sweep
    tasks = [Task("bilevel.sweep.probes:value_optimum",
                  {"n_states": 5, "n_actions": 2, "branching": 2, "seed": s}) for s in range(100)]
    records = run_sweep(tasks, store="out/sweep")     # [{"status": "ok", "result": {...}}, ...]

(The embedded cluster spawns its workers: a script that calls run_sweep without workers=0 or a
scheduler needs an `if __name__ == "__main__":` guard.) docs/DESIGN.md describes keys, the
store, resume, failures, time limits and worker loss.
"""
from bilevel.sweep.engine import SweepRecords, reusable, run_sweep
from bilevel.sweep.options import add_sweep_args, sweep_options
from bilevel.sweep.store import ResultStore
from bilevel.sweep.task import StaleCode, Task, run_task, task_key

__all__ = ["Task", "task_key", "run_task", "StaleCode", "ResultStore", "run_sweep", "SweepRecords",
           "reusable", "add_sweep_args", "sweep_options"]
