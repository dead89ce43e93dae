"""Continuations (bilevel.sweep.continuation): a task that finishes through child tasks and a
combine step, in process and on a 2-worker LocalCluster, resumed from the store, with failing
children. The probe is the sum of squares, checked against the numbers themselves."""
from __future__ import annotations

import json
from pathlib import Path

from bilevel.sweep import ResultStore, Task, run_sweep
from bilevel.sweep.continuation import is_continuation
from bilevel.sweep.engine import _Graph

PROBES = "bilevel.sweep.probes:"


def split(values, trace=None, **kw) -> Task:
    return Task(PROBES + "split_sum", {"values": values, "trace": None if trace is None else str(trace),
                                       **kw}, label="split")


def executions(trace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in trace.glob("*.json")]


def test_a_continuation_runs_its_children_then_combines_in_process(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    records = run_sweep([split([1, 2, 3], trace), Task(PROBES + "square", {"value": 5})],
                        workers=0, progress=False)
    assert [r["result"] for r in records] == [14, 25]
    assert sorted(e["kwargs"]["value"] for e in executions(trace)) == [1, 2, 3]
    # the parent, its three children and the plain task ran; the combine counts with the parent
    assert records.counts == {"done": 5, "failed": 0, "reused": 0}


def test_children_run_in_parallel_on_two_local_workers(tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    t = split([1.5, 2.5], trace, sleep=1.0)
    serial = run_sweep([t], workers=0, progress=False)
    for f in trace.glob("*.json"):
        f.unlink()
    # one parent task: the cluster still has two workers, and each child sleeps 1 s on its own
    parallel = run_sweep([t], workers=2, progress=False)
    assert list(parallel) == list(serial) == [{"status": "ok", "result": 1.5 ** 2 + 2.5 ** 2}]
    runs = executions(trace)
    assert len(runs) == 2 and len({e["pid"] for e in runs}) == 2


def test_a_stopped_continuation_resumes_with_the_missing_children_only(tmp_path):
    trace, store = tmp_path / "trace", ResultStore(tmp_path / "store")
    trace.mkdir()
    t = split([1, 2, 3], trace)
    first = run_sweep([t], store=store, workers=0, progress=False)
    assert first[0]["result"] == 14 and len(executions(trace)) == 3
    # the final record replaced the continuation under the parent's key: nothing runs again
    assert not is_continuation(store.get(t.key))
    again = run_sweep([t], store=store, workers=0, progress=False)
    assert again[0] == first[0] and again.counts == {"done": 0, "failed": 0, "reused": 1}
    assert len(executions(trace)) == 3
    # a sweep stopped while the children ran: the parent's key holds the continuation, one
    # child's record is missing; the resumed sweep runs that child only, then combines
    from bilevel.sweep.task import call
    store.put(t.key, call(t.fn, t.kwargs))
    child_keys = sorted(k for k in store.keys() if k != t.key)
    store.path(child_keys[0]).unlink()
    resumed = run_sweep([t], store=store, workers=0, progress=False)
    assert resumed[0] == first[0] and len(executions(trace)) == 4
    assert resumed.counts == {"done": 2, "failed": 0, "reused": 2}


def test_a_failing_child_fails_the_combine_with_its_reason_and_the_rest_finish():
    records = run_sweep([split([1, 2, 3], fail_at=2), split([4])], workers=0, progress=False)
    assert records[0]["status"] == "failed"
    assert "a child failed: RuntimeError: task failed" in records[0]["reason"]
    assert records[1] == {"status": "ok", "result": 16}


def test_a_combine_over_a_lost_child_is_not_stored(tmp_path):
    """A child whose failure came from outside the task (a lost worker: keep=False) makes the
    combined record transient too, so the next sweep tries again."""
    store = ResultStore(tmp_path / "store")
    graph = _Graph(store, fresh=False, retry_failed=False, say=lambda m: None,
                   bar=type("Bar", (), {"total": 0, "update": lambda s, n: None,
                                        "refresh": lambda s: None})())
    from bilevel.sweep.task import call
    t = split([1, 2])
    graph.want(t)
    parent = graph.next()
    graph.settle(parent, call(parent.fn, parent.kwargs), ran=True)
    a, b = graph.next(), graph.next()
    graph.settle(a, {"status": "ok", "result": 1}, ran=True)
    graph.settle(b, {"status": "failed", "reason": "KilledWorker: lost"}, ran=True, keep=False)
    assert graph.final[t.key]["status"] == "failed"
    assert is_continuation(store.get(t.key))        # the continuation, not the failure
    assert store.get(b.key) is None
