"""Small task functions that exercise the engine: real computations with known answers, a
failure, a trace of executions, an empty task (the engine's overhead).

    value_optimum   J* = rho0 . V*, V*(s) = max_a r(s,a) + gamma sum_s' P(s'|s,a) V*(s')
                    (value iteration), of a seeded Garnet MDP
    mal_interval    MAL's equilibrium interval [J_low, J_high] of a seeded Garnet MDP
    traced          writes a file per execution (its process id), then runs another task
    fail, die       raises; ends its process with a signal
    exits           ends its process with os._exit(code)
    process         the process that runs it: process id and code version
    prints          writes to stdout (print and file descriptor 1), returns what it wrote
    reads_stdin     what the task reads from its standard input
    split_sum       sum of squares through a continuation: one child task per square (through
                    `traced` when a trace directory is given), summed by `sum_results`
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from bilevel.cache import code_version
from bilevel.sweep.task import resolve


def value_optimum(n_states: int, n_actions: int, branching: int, seed: int,
                  gamma: float = 0.9) -> dict:
    """J* = rho0 . V* and the greedy optimal policy (action per state) of
    garnet(n_states, n_actions, branching, seed, gamma), V* by value iteration."""
    from bilevel.mdp.garnet import garnet
    from bilevel.tabular.evaluation import value_iteration
    mdp = garnet(n_states, n_actions, branching, seed=seed, gamma=gamma)
    V, pi = value_iteration(mdp.P, mdp.r, mdp.gamma)
    return {"J_star": float(mdp.rho0 @ V), "policy": [int(a) for a in pi.argmax(axis=1)]}


def mal_interval(n_states: int, n_actions: int, branching: int, seed: int) -> dict:
    """MAL's equilibrium interval of garnet(n_states, n_actions, branching, seed)
    (bilevel.equilibria.solve_formulation, solver auto): status, certificate, J at both ends."""
    from bilevel.equilibria import solve_formulation
    from bilevel.mdp.garnet import garnet
    iv = solve_formulation(garnet(n_states, n_actions, branching, seed=seed), "MAL")
    return {"status": iv.status, "certificate": iv.certificate, "J_low": iv.low.J,
            "J_high": iv.high.J}


def traced(trace: str, fn: str, kwargs: dict | None = None, sleep: float = 0.0):
    """Write `<trace>/<random>.json` = {"pid", "fn", "kwargs"} (one file per execution), sleep
    `sleep` seconds, then return fn(**kwargs)."""
    doc = {"pid": os.getpid(), "fn": fn, "kwargs": kwargs or {}}
    Path(trace, f"{uuid.uuid4().hex}.json").write_text(json.dumps(doc))
    time.sleep(sleep)
    return resolve(fn)(**(kwargs or {}))


def fail(message: str = "task failed") -> None:
    """Raise RuntimeError(message)."""
    raise RuntimeError(message)


def die(signal_name: str = "SIGKILL") -> None:
    """End this process with a signal, as a crashing solver would."""
    os.kill(os.getpid(), getattr(signal, signal_name))


def exits(code: int = 3) -> None:
    """End this process with os._exit(code): no exception, no clean-up, as a C abort would."""
    os._exit(code)


def process(**kwargs) -> dict:
    """{"pid": os.getpid(), "code": bilevel.cache.code_version()} of the process running it."""
    return {"pid": os.getpid(), "code": code_version()}


def prints(text: str) -> str:
    """print(text) (buffered by Python), os.write(1, text) (unbuffered, as C code writes),
    then text."""
    print(text)
    os.write(1, text.encode() + b"\n")
    return text


def reads_stdin() -> str:
    """Everything on this process's standard input."""
    return sys.stdin.read()


def empty(**kwargs) -> None:
    """Nothing: the engine's own cost per task."""
    return None


def split_sum(values: list, trace: str | None = None, fail_at=None, sleep: float = 0.0) -> dict:
    """sum(v**2 for v in values), as a continuation (bilevel.sweep.continuation): a child task
    square(v) per value (traced into `trace` when given, after `sleep` seconds; `fail_at`: that
    value's child raises), combined by sum_results."""
    from bilevel.sweep.continuation import continuation
    from bilevel.sweep.task import Task

    def child(v):
        fn, kwargs = ("bilevel.sweep.probes:fail", {}) if v == fail_at else \
            ("bilevel.sweep.probes:square", {"value": v})
        if trace is not None:
            fn, kwargs = "bilevel.sweep.probes:traced", {"trace": trace, "fn": fn, "kwargs": kwargs,
                                                       "sleep": sleep}
        return Task(fn, kwargs, label=f"square-{v}")

    return continuation([child(v) for v in values], "bilevel.sweep.probes:sum_results",
                        {"n": len(values)})


def square(value: float) -> float:
    """value ** 2."""
    return value * value


def sum_results(context: dict, records: list) -> float:
    """The sum of the children's results (RuntimeError naming the first failed child)."""
    assert len(records) == context["n"]
    bad = [r for r in records if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"a child failed: {bad[0]['reason']}")
    return sum(r["result"] for r in records)
