"""How a study runs: its independent tasks on the sweep engine (bilevel.sweep), one stored record
per task under OUT/tasks, and its results rebuilt from the records in task order.

    task time limit = SLACK_FACTOR * (the solver's own limits in the task) + SLACK_SECONDS

A solver that stops at its own limit returns well within the task's; one stuck in C past it is
killed with its process, and its record is failed ("time limit of N s exceeded"), so the study
goes on. A task's result is strict JSON: a float stored as null (NaN or an infinity) reads back
as NaN, or as the value a study names for that field (restore).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from bilevel.sweep import ResultStore, SweepRecords, run_sweep

SLACK_FACTOR = 4.0
SLACK_SECONDS = 60.0


def task_time_limit(solver_seconds: float) -> float:
    """SLACK_FACTOR * solver_seconds + SLACK_SECONDS: the wall-clock limit of a task whose
    solver calls are limited to `solver_seconds` in all."""
    return SLACK_FACTOR * float(solver_seconds) + SLACK_SECONDS


def route_seconds(mdp, solver: str, time_limit: float) -> float:
    """An upper bound of the solver limits of one solve with `time_limit`: time_limit for "scip"
    and "ipopt"; max(2, n_policies) * time_limit for "enumerate" (time_limit per deterministic
    follower policy) and "auto" (SCIP then IPOPT, or the enumeration where it routes to it)."""
    from bilevel.mdp.graph import n_policies
    n = max(2, n_policies(mdp)) if solver in ("auto", "enumerate") else 1
    return n * float(time_limit)


def restore(cls, fields: dict, **non_finite):
    """cls(**fields) from a record's result: a field annotated `float` that is null is
    non_finite[name] (default NaN), e.g. tightness=math.inf where only an infinity is possible."""
    fields = dict(fields)
    for f in dataclasses.fields(cls):
        if f.type == "float" and f.name in fields and fields[f.name] is None:
            fields[f.name] = non_finite.get(f.name, math.nan)
    return cls(**fields)


def study_sweep(tasks: list, out: Path, name: str, sweep: dict | None = None,
                fresh: bool = False) -> SweepRecords:
    """run_sweep(tasks) with the store OUT/tasks. sweep: run_sweep's scheduler / workers /
    progress (bilevel.sweep.sweep_options; None: in this process, workers=0); fresh: run every
    task and overwrite its stored record."""
    return run_sweep(tasks, store=ResultStore(Path(out) / "tasks"), name=name, fresh=fresh,
                     **({"workers": 0} if sweep is None else sweep))
