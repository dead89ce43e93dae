"""The sweep engine (bilevel.sweep): records against independent computations (J* of small
Garnet MDPs as the best of all deterministic policies, each evaluated by a linear solve), the
Dask path against the in-process loop, failures, time limits and the child processes that
enforce them, resume from the store, keys."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bilevel.cache import cache_key, code_version
from bilevel.mdp.garnet import garnet
from bilevel.sweep import (ResultStore, StaleCode, Task, add_sweep_args, run_sweep, run_task,
                           sweep_options, task_key)

PROBES = "bilevel.sweep.probes:"
GARNET = {"n_states": 3, "n_actions": 2, "branching": 2}


def brute_force_optimum(seed: int) -> float:
    """J* = max over the A^S deterministic policies of rho0 . (I - gamma P_pi)^{-1} r_pi."""
    mdp = garnet(**GARNET, seed=seed)
    S, A = mdp.n_states, mdp.n_actions
    r = (mdp.P * mdp.R).sum(axis=-1)
    best = -np.inf
    for acts in itertools.product(range(A), repeat=S):
        rows = np.arange(S), np.array(acts)
        V = np.linalg.solve(np.eye(S) - mdp.gamma * mdp.P[rows], r[rows])
        best = max(best, float(mdp.rho0 @ V))
    return best


def optimum(seed: int, **task) -> Task:
    return Task(PROBES + "value_optimum", {**GARNET, "seed": seed}, **task)


def traced(trace: Path, fn: str, kwargs: dict | None = None, sleep: float = 0.0, **task) -> Task:
    """A task that writes one file per execution under `trace`, then runs fn(**kwargs)."""
    return Task(PROBES + "traced", {"trace": str(trace), "fn": fn, "kwargs": kwargs or {},
                                    "sleep": sleep}, **task)


def executions(trace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in trace.glob("*.json")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_value_optimum_task_is_the_best_deterministic_policy():
    records = run_sweep([optimum(s) for s in range(6)], workers=0, progress=False)
    assert [r["status"] for r in records] == ["ok"] * 6
    for seed, r in enumerate(records):
        assert r["result"]["J_star"] == pytest.approx(brute_force_optimum(seed), abs=1e-9)


def test_local_cluster_gives_the_serial_records(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    tasks = [optimum(s) for s in range(6)]
    tasks += [Task(PROBES + "fail", {"message": "boom"}),
              traced(trace, PROBES + "empty", sleep=60, time_limit=2),
              optimum(7, time_limit=60)]
    serial = run_sweep(tasks, workers=0, progress=False)
    store = ResultStore(tmp_path / "store")
    cluster = run_sweep(tasks, store=store, workers=2, progress=False)
    assert list(cluster) == list(serial)
    assert cluster.counts == {"done": 7, "failed": 2, "reused": 0}
    assert [r["result"]["J_star"] for r in cluster[:6]] == pytest.approx(
        [brute_force_optimum(s) for s in range(6)], abs=1e-9)
    assert cluster[6] == {"status": "failed", "reason": "RuntimeError: boom"}
    assert cluster[7] == {"status": "failed", "reason": "time limit of 2 s exceeded",
                          "time_limit": 2}
    assert cluster[8]["result"]["J_star"] == pytest.approx(brute_force_optimum(7), abs=1e-9)
    assert store.keys() == sorted(t.key for t in tasks)
    assert all(store.get(t.key) == r for t, r in zip(tasks, cluster))
    pids = [e["pid"] for e in executions(trace)]
    assert len(pids) == 2 and not any(alive(p) for p in pids)     # killed, serial and cluster


def test_a_raising_task_is_a_failed_record_and_the_others_finish():
    tasks = [optimum(0), Task(PROBES + "fail", {"message": "boom"}), Task(PROBES + "no_such"),
             Task("uuid:uuid4"), Task("sys:exit"), Task("numpy:linspace", {"num": 3, "start": 0,
                                                                         "stop": 1}), optimum(1)]
    records = run_sweep(tasks, workers=0, progress=False)
    assert records[1] == {"status": "failed", "reason": "RuntimeError: boom"}
    assert records[2]["status"] == "failed"
    assert records[2]["reason"].startswith("AttributeError:")
    assert records[3]["reason"].startswith("TypeError: the result has no JSON form")
    assert records[4] == {"status": "failed", "reason": "SystemExit"}
    assert records[5] == {"status": "ok", "result": [0.0, 0.5, 1.0]}
    for i, seed in ((0, 0), (6, 1)):
        assert records[i]["result"]["J_star"] == pytest.approx(brute_force_optimum(seed), abs=1e-9)
    assert records.counts == {"done": 3, "failed": 4, "reused": 0}


def test_time_limit_kills_the_task_and_the_sweep_goes_on(tmp_path):
    slow, fast, inline = tmp_path / "slow", tmp_path / "fast", tmp_path / "inline"
    for d in (slow, fast, inline):
        d.mkdir()
    tasks = [traced(slow, PROBES + "empty", sleep=60, time_limit=1),
             traced(fast, PROBES + "value_optimum", {**GARNET, "seed": 2}, time_limit=60),
             Task("builtins:print", {"end": "written to stdout by the task\n"}, time_limit=60),
             traced(inline, PROBES + "value_optimum", {**GARNET, "seed": 2}),
             Task(PROBES + "die", time_limit=60)]
    t0 = time.perf_counter()
    records = run_sweep(tasks, workers=0, progress=False)
    assert time.perf_counter() - t0 < 30
    assert records[0] == {"status": "failed", "reason": "time limit of 1 s exceeded",
                          "time_limit": 1}
    [killed] = executions(slow)
    assert not alive(killed["pid"])
    assert records[1]["result"]["J_star"] == pytest.approx(brute_force_optimum(2), abs=1e-9)
    assert records[1] == records[3]
    assert records[2] == {"status": "ok", "result": None}
    assert records[4] == {"status": "failed", "reason": "ChildProcessError: the task's "
                          "process was killed by signal SIGKILL without a record"}
    [child], [here] = executions(fast), executions(inline)
    assert child["pid"] != os.getpid() and here["pid"] == os.getpid()


@pytest.fixture
def tree_code(monkeypatch) -> str:
    """This process on the code version of the source tree now, as the child processes it
    starts compute theirs (its own was computed earlier, and the tree may have changed since:
    a child on other code than this process's serves no second task)."""
    now = code_version.__wrapped__()
    monkeypatch.setattr("bilevel.sweep.server.code_version", lambda: now)
    return now


def in_child(fn: str, kwargs: dict | None = None, time_limit: float = 60) -> dict:
    """The record of a time-limited probe task."""
    return run_task(Task(PROBES + fn, kwargs or {}, time_limit=time_limit))


def child_pid() -> int:
    return in_child("process")["result"]["pid"]


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_optimum_in_child(seed: int) -> None:
    record = in_child("value_optimum", {**GARNET, "seed": seed})
    assert record["result"]["J_star"] == pytest.approx(brute_force_optimum(seed), abs=1e-9)


def test_consecutive_time_limited_tasks_share_one_child_process(tree_code):
    first = in_child("process")["result"]
    assert_optimum_in_child(4)
    later = [in_child("process", {"i": i})["result"] for i in range(3)]
    assert first["code"] == tree_code and first["pid"] != os.getpid() and running(first["pid"])
    assert later == [first] * 3


def test_a_child_on_other_code_than_the_keys_serves_no_further_task(tree_code, monkeypatch):
    old = child_pid()
    assert child_pid() == old
    monkeypatch.setattr("bilevel.sweep.server.code_version", lambda: "0" * 16)
    new = [child_pid() for _ in range(2)]
    assert len({old, *new}) == 3 and not running(old) and not running(new[0])


def test_a_task_past_its_limit_kills_its_child_and_the_next_task_gets_a_new_one(tmp_path,
                                                                               tree_code):
    before = child_pid()
    t0 = time.perf_counter()
    record = run_task(traced(tmp_path, PROBES + "empty", sleep=60, time_limit=1))
    assert time.perf_counter() - t0 < 10
    assert record == {"status": "failed", "reason": "time limit of 1 s exceeded",
                      "time_limit": 1}
    [killed] = executions(tmp_path)
    assert killed["pid"] == before and not running(before)
    assert_optimum_in_child(5)
    after = child_pid()
    assert after != before and running(after)


@pytest.mark.parametrize("fn, kwargs, cause", [
    ("die", {"signal_name": "SIGKILL"}, "was killed by signal SIGKILL"),
    ("die", {"signal_name": "SIGTERM"}, "was killed by signal SIGTERM"),
    ("exits", {"code": 3}, "exited with code 3")])
def test_a_task_that_ends_its_process_is_a_failed_record_and_the_next_succeeds(fn, kwargs, cause,
                                                                               tree_code):
    before = child_pid()
    assert in_child(fn, kwargs) == {"status": "failed", "reason": "ChildProcessError: the "
                                    f"task's process {cause} without a record"}
    assert not running(before)
    assert_optimum_in_child(6)
    assert child_pid() != before


def test_what_a_task_prints_or_reads_leaves_the_records_intact(tree_code):
    before = child_pid()
    forged = json.dumps({"status": "ok", "result": "forged"})
    assert in_child("prints", {"text": forged}) == {"status": "ok", "result": forged}
    assert in_child("prints", {"text": "no newline at the end"}) == {
        "status": "ok", "result": "no newline at the end"}
    assert in_child("reads_stdin", time_limit=10) == {"status": "ok", "result": ""}
    assert_optimum_in_child(7)
    assert child_pid() == before


def test_concurrent_threads_get_a_child_each(tmp_path, tree_code):
    records = {}

    def run(i):
        records[i] = run_task(traced(tmp_path, PROBES + "process", {"i": i}, sleep=1.0,
                                     time_limit=60))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = {records[i]["result"]["pid"] for i in range(2)}
    assert len(pids) == 2 and pids == {e["pid"] for e in executions(tmp_path)}
    assert child_pid() in pids


def test_a_child_exits_when_its_parent_dies(tmp_path):
    task = traced(tmp_path, PROBES + "empty", sleep=60, time_limit=120)
    script = ("from bilevel.sweep import Task, run_task\n"
              f"run_task(Task({task.fn!r}, {task.kwargs!r}, time_limit=120))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (started := executions(tmp_path)):
            assert time.monotonic() < deadline and parent.poll() is None, "no task started"
            time.sleep(0.05)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    child = started[0]["pid"]
    assert child != parent.pid
    deadline = time.monotonic() + 10
    while running(child):
        assert time.monotonic() < deadline, "the child outlived its parent by 10 s"
        time.sleep(0.05)


def test_resume_runs_only_the_missing_task(tmp_path):
    trace, store = tmp_path / "trace", ResultStore(tmp_path / "store")
    trace.mkdir()
    tasks = [traced(trace, PROBES + "value_optimum", {**GARNET, "seed": s}) for s in range(4)]
    first = run_sweep(tasks, store=store, workers=0, progress=False)
    assert len(executions(trace)) == 4 and store.keys() == sorted(t.key for t in tasks)
    store.path(tasks[2].key).unlink()
    messages = []
    again = run_sweep(tasks, store=store, workers=0, progress=False, log=messages.append)
    runs = executions(trace)
    assert len(runs) == 5
    assert sum(e["kwargs"]["seed"] == 2 for e in runs) == 2
    assert list(again) == list(first)
    assert again.counts == {"done": 1, "failed": 0, "reused": 3}
    assert "4 tasks: 1 done, 0 failed, 3 reused" in messages[-1]
    assert store.keys() == sorted(t.key for t in tasks)


def test_stored_failures_are_reused_unless_retried_or_given_more_time(tmp_path):
    trace, store = tmp_path / "trace", ResultStore(tmp_path / "store")
    trace.mkdir()
    crash = traced(trace, PROBES + "fail", {"message": "boom"})
    run_sweep([crash], store=store, workers=0, progress=False)
    again = run_sweep([crash], store=store, workers=0, progress=False)
    assert again.counts["reused"] == 1 and len(executions(trace)) == 1
    retried = run_sweep([crash], store=store, workers=0, progress=False, retry_failed=True)
    assert retried.counts["failed"] == 1 and len(executions(trace)) == 2

    kwargs = {"trace": str(trace), "fn": PROBES + "empty", "kwargs": {}, "sleep": 2.0}
    short, long = (Task(PROBES + "traced", kwargs, time_limit=t) for t in (0.5, 60))
    assert short.key == long.key                   # the limit is not part of the content
    assert run_sweep([short], store=store, workers=0, progress=False)[0]["status"] == "failed"
    assert run_sweep([short], store=store, workers=0, progress=False).counts["reused"] == 1
    assert run_sweep([long], store=store, workers=0, progress=False)[0] == {
        "status": "ok", "result": None}
    assert store.get(long.key) == {"status": "ok", "result": None}


def test_fresh_runs_every_task_again_and_overwrites_the_store(tmp_path):
    trace, store = tmp_path / "trace", ResultStore(tmp_path / "store")
    trace.mkdir()
    tasks = [traced(trace, PROBES + "value_optimum", {**GARNET, "seed": s}) for s in range(2)]
    run_sweep(tasks, store=store, workers=0, progress=False)
    poisoned = {"status": "ok", "result": {"J_star": 123.0}}
    store.put(tasks[0].key, poisoned)
    assert run_sweep(tasks, store=store, workers=0, progress=False)[0] == poisoned
    assert len(executions(trace)) == 2
    fresh = run_sweep(tasks, store=store, workers=0, progress=False, fresh=True)
    assert len(executions(trace)) == 4 and fresh.counts == {"done": 2, "failed": 0, "reused": 0}
    assert fresh[0]["result"]["J_star"] == pytest.approx(brute_force_optimum(0), abs=1e-9)
    assert store.get(tasks[0].key) == fresh[0] != poisoned


def test_equal_keys_run_once(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    t = traced(trace, PROBES + "value_optimum", {**GARNET, "seed": 0})
    twin = Task(t.fn, dict(reversed(list(t.kwargs.items()))), label="twin")
    records = run_sweep([t, twin], workers=0, progress=False)
    assert len(executions(trace)) == 1
    assert records[0] == records[1] and records.counts == {"done": 1, "failed": 0, "reused": 0}


def test_keys_follow_fn_kwargs_mdp_and_code(monkeypatch):
    fn, kw = PROBES + "value_optimum", {**GARNET, "seed": 0}
    key = task_key(fn, kw)
    assert len(key) == 64 and int(key, 16) >= 0
    assert task_key(fn, dict(reversed(list(kw.items())))) == key
    assert Task(fn, kw).key == key
    assert task_key(fn, {**kw, "seed": 1}) != key
    assert task_key(fn, {**kw, "gamma": 0.9}) != key
    assert task_key(PROBES + "mal_interval", kw) != key
    m0, m1 = garnet(3, 2, 2, seed=0), garnet(3, 2, 2, seed=1)
    k0 = task_key(fn, kw, m0)
    assert k0 == cache_key(m0, fn=fn, kwargs=kw) and k0 != key
    assert task_key(fn, kw, m1) != k0
    assert task_key(fn, kw, garnet(3, 2, 2, seed=0, gamma=0.95)) != k0
    monkeypatch.setattr("bilevel.sweep.task.code_version", lambda: "0" * 16)
    assert task_key(fn, kw) != key


def test_task_and_store_reject_bad_input(tmp_path):
    for bad in ({"fn": "no_colon"}, {"fn": "m:f", "kwargs": {"x": object()}},
                {"fn": "m:f", "kwargs": {"x": float("nan")}}, {"fn": "m:f", "time_limit": 0}):
        with pytest.raises(ValueError):
            Task(**bad)
    with pytest.raises(ValueError):
        ResultStore(tmp_path).path("../escape")
    with pytest.raises(ValueError):
        run_sweep([], scheduler="tcp://127.0.0.1:1", workers=2)


def test_store_round_trip_is_atomic(tmp_path):
    store = ResultStore(tmp_path / "s")
    assert store.get("a" * 64) is None and store.keys() == []
    store.put("a" * 64, {"status": "ok", "result": [1, 2.5, None]})
    store.put("a" * 64, {"status": "ok", "result": 3})
    store.put("b" * 64, {"status": "failed", "reason": "x"})
    assert store.get("a" * 64) == {"status": "ok", "result": 3}
    assert store.keys() == ["a" * 64, "b" * 64] and len(store) == 2 and "b" * 64 in store
    assert sorted(p.name for p in store.directory.iterdir()) == [f"{k * 64}.json" for k in "ab"]
    store.path("c" * 64).write_text('{"status": "ok", "res')      # a torn file reads as missing
    assert store.get("c" * 64) is None
    with pytest.raises(ValueError):
        store.put("d" * 64, {"result": float("nan")})
    assert "d" * 64 not in store and not list(store.directory.glob(".*"))


def test_a_worker_on_other_code_refuses_the_task():
    task = optimum(0)
    with pytest.raises(StaleCode):
        run_task(task, code="0" * 16)
    assert run_task(task, code=code_version())["status"] == "ok"


def test_sweep_flags():
    parser = argparse.ArgumentParser()
    add_sweep_args(parser)
    assert sweep_options(parser.parse_args([])) == {"scheduler": None, "workers": None,
                                                    "progress": True}
    assert sweep_options(parser.parse_args(["--workers", "0"]))["workers"] == 0
    assert sweep_options(parser.parse_args(["--scheduler", "tcp://h:8786"]))["scheduler"] == \
        "tcp://h:8786"
    for bad in (["--workers", "-1"], ["--workers", "x"],
                ["--workers", "2", "--scheduler", "tcp://h:8786"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
