"""One task of a sweep and its record: what runs, under which content address, and how.

    record = {"status": "ok", "result": fn(**kwargs)}                 (result as strict JSON)
           | {"status": "failed", "reason": "ExceptionType: message"}
           | {"status": "failed", "reason": "time limit of N s exceeded", "time_limit": N}

    key = sha256(mdp_fingerprint(mdp) or null, code_version(), {"fn": fn, "kwargs": kwargs})

the key of bilevel.cache.cache_key(mdp, fn=fn, kwargs=kwargs) (the same document with a null
MDP when the task has none). A task without a time limit runs in the calling process; with one
it runs in a child process of it (bilevel.sweep.server), killed past the limit.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
from dataclasses import dataclass, field

from bilevel.cache import cache_key, code_version
from bilevel.sweep.record import failed

FN_FORMAT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class StaleCode(RuntimeError):
    """The process that would run a task runs other code than the one its key was made with."""


def task_key(fn: str, kwargs: dict, mdp=None) -> str:
    """sha256 (64 hex digits) of the MDP's content (if any), the code version and (fn, kwargs):
    cache_key(mdp, fn=fn, kwargs=kwargs), with "mdp": null when no MDP is given. Give `mdp` when
    kwargs name an MDP by something other than its content (a file path, a seed of a generator
    whose code may change), so the key follows the numbers."""
    settings = {"fn": fn, "kwargs": kwargs}
    if mdp is not None:
        return cache_key(mdp, **settings)
    doc = {"mdp": None, "code": code_version(), "settings": settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Task:
    """fn(**kwargs) as an independent unit of a sweep.

    fn          "package.module:function", importable in any worker process
    kwargs      strict-JSON keyword arguments
    key         content address (default: task_key(fn, kwargs); pass task_key(fn, kwargs, mdp)
                when an MDP defines the task)
    label       name in messages and on the Dask dashboard (default: the function's name)
    time_limit  wall-clock seconds it may take in a child process (killed past them), or None
                (run in the calling process)
    cost        expected work, relative to the sweep's other tasks (not part of the key): the
                costliest run first, so that no long task starts last while workers idle"""
    fn: str
    kwargs: dict = field(default_factory=dict)
    key: str = ""
    label: str = ""
    time_limit: float | None = None
    cost: float = 0.0

    def __post_init__(self):
        if not FN_FORMAT.fullmatch(self.fn):
            raise ValueError(f"fn must be 'package.module:function', got {self.fn!r}")
        try:
            json.dumps(self.kwargs, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.fn}: kwargs must be strict JSON ({e})") from None
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds or None, got {self.time_limit}")
        if not self.key:
            object.__setattr__(self, "key", task_key(self.fn, self.kwargs))
        if not self.label:
            object.__setattr__(self, "label", self.fn.rpartition(":")[2])


def resolve(fn: str):
    """The callable named by "package.module:attribute[.attribute...]"."""
    module, _, name = fn.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def jsonable(value):
    """`value` as it reads back from strict JSON (tuples become lists, numpy scalars and arrays
    plain Python through bilevel.cli.common.json_clean, NaN and infinities null); TypeError if
    it has no JSON form."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        from bilevel.cli.common import json_clean
        try:
            return json.loads(json.dumps(json_clean(value), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise TypeError(f"the result has no JSON form ({e})") from None


def tagged(obj):
    """`obj` with every non-finite float x written {"float": repr(x)} (strict JSON has none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"float": repr(obj)}
    if isinstance(obj, dict):
        return {k: tagged(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [tagged(v) for v in obj]
    return obj


def untagged(obj):
    """The inverse of `tagged`."""
    if isinstance(obj, dict):
        if set(obj) == {"float"}:
            return float(obj["float"])
        return {k: untagged(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [untagged(v) for v in obj]
    return obj


def call(fn: str, kwargs: dict) -> dict:
    """The record of fn(**kwargs) in this process: ok with its JSON result, or failed with
    "ExceptionType: message" when anything (import, call, JSON conversion) raises."""
    try:
        return {"status": "ok", "result": jsonable(resolve(fn)(**kwargs))}
    except (Exception, SystemExit) as e:
        from bilevel.cli.common import failure_reason
        return failed(failure_reason(e))


def call_in_child(fn: str, kwargs: dict, time_limit: float) -> dict:
    """The record of fn(**kwargs) in a child process of this one (bilevel.sweep.server: a
    persistent `python -m bilevel.sweep.child`), whose process group is killed after
    `time_limit` wall-clock seconds: failed "time limit of N s exceeded", with "time_limit"."""
    from bilevel.sweep.server import call_with_limit
    return call_with_limit(fn, kwargs, time_limit)


def run_task(task: Task, code: str | None = None) -> dict:
    """The record of `task`: in this process without a time limit, else in a killable child.
    `code`: the code version the key was made with; StaleCode if this process's differs (a
    result of other code must not be stored under the key)."""
    if code is not None and code != code_version():
        raise StaleCode(f"this worker runs code {code_version()}, the sweep's keys were made "
                        f"with {code}: restart the workers")
    if task.time_limit is None:
        return call(task.fn, task.kwargs)
    return call_in_child(task.fn, task.kwargs, task.time_limit)
