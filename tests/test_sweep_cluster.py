"""The sweep engine on a real Dask cluster (`dask scheduler` and two `dask worker` processes):
a worker killed mid-task loses no result and duplicates none, the results equal direct calls
of the solver, and a worker on other code refuses tasks without storing anything; the fixes
study through the command line on such a cluster, with a worker killed mid-task, gives the
results of the in-process run, each once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from bilevel.equilibria import solve_formulation
from bilevel.mdp.garnet import garnet
from bilevel.sweep import ResultStore, Task, run_sweep

ROOT = Path(__file__).resolve().parent.parent
DASK = Path(sys.executable).with_name("dask")
PROBES = "bilevel.sweep.probes:"
SEEDS = range(8)


class CountingStore(ResultStore):
    """A ResultStore that counts its writes per key."""

    def __init__(self, directory):
        super().__init__(directory)
        self.writes: dict[str, int] = {}

    def put(self, key, record):
        self.writes[key] = self.writes.get(key, 0) + 1
        super().put(key, record)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([str(DASK), *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process, SIGKILL what is left of it and its children after 10 s, reap all."""
    family = []
    for p in procs:
        try:
            family += psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _, left = psutil.wait_procs(family, timeout=5)
    for child in left:
        child.kill()
    psutil.wait_procs(left, timeout=5)


def executions(trace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in trace.glob("*.json")]


def mal_task(trace: Path, seed: int) -> Task:
    """MAL's interval of a seeded 4-state Garnet, traced, ~1.5 s per run."""
    inner = {"n_states": 4, "n_actions": 2, "branching": 2, "seed": seed}
    return Task(PROBES + "traced", {"trace": str(trace), "fn": PROBES + "mal_interval",
                                    "kwargs": inner, "sleep": 1.5}, label=f"mal-seed{seed}")


def start_cluster(tmp_path: Path, procs: list) -> str:
    """`dask scheduler` and two `dask worker` processes (one thread each), appended to procs;
    the scheduler's address once both workers are connected."""
    from distributed import Client
    address = f"tcp://127.0.0.1:{free_port()}"
    procs.append(start(["scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":")[-1],
                        "--no-dashboard"], tmp_path / "scheduler.log"))
    for i in range(2):
        procs.append(start(["worker", address, "--nworkers", "1", "--nthreads", "1",
                            "--no-dashboard"], tmp_path / f"worker{i}.log"))
    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=60)
    return address


@pytest.mark.slow      # the engine-level twin of the command-line test below (the default suite's)
def test_a_worker_killed_mid_task_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    trace.mkdir()
    procs = []
    try:
        address = start_cluster(tmp_path, procs)

        tasks = [mal_task(trace, s) for s in SEEDS]
        store = CountingStore(tmp_path / "store")
        out = {}

        # no code check in this sweep (it has its own below): the worker that the nanny
        # restarts after the kill reads the source tree again, later than this process
        def sweep():
            out["records"] = run_sweep(tasks, store=store, scheduler=address, progress=False,
                                       check_code=False)
        runner = threading.Thread(target=sweep)
        runner.start()
        workers = {c.pid for p in procs[1:] for c in psutil.Process(p.pid).children(True)}
        deadline = time.monotonic() + 60
        while not (started := [e for e in executions(trace) if e["pid"] in workers]):
            assert time.monotonic() < deadline and runner.is_alive(), "no task started"
            time.sleep(0.05)
        victim = started[0]
        os.kill(victim["pid"], signal.SIGKILL)         # mid-task: it sleeps 1.5 s after the trace
        runner.join(timeout=180)
        assert not runner.is_alive()

        records = out["records"]
        assert records.counts == {"done": 8, "failed": 0, "reused": 0}
        for seed, r in zip(SEEDS, records):
            iv = solve_formulation(garnet(4, 2, 2, seed=seed), "MAL")
            assert r == {"status": "ok", "result": {"status": iv.status,
                                                    "certificate": iv.certificate,
                                                    "J_low": iv.low.J, "J_high": iv.high.J}}
        assert store.writes == {t.key: 1 for t in tasks}
        assert store.keys() == sorted(t.key for t in tasks)
        assert all(store.get(t.key) == r for t, r in zip(tasks, records))
        runs = executions(trace)
        again = [e for e in runs if e["kwargs"] == victim["kwargs"]]
        assert len(again) == 2 and victim["pid"] not in {e["pid"] for e in again if e != victim}
        assert len(runs) >= len(tasks) + 1 and not psutil.pid_exists(victim["pid"])

        # workers whose code differs from the keys' refuse every task: failed, nothing stored
        monkeypatch.setattr("bilevel.sweep.engine.code_version", lambda: "0" * 16)
        stale_store = ResultStore(tmp_path / "stale")
        stale = run_sweep([Task(PROBES + "empty")], store=stale_store, scheduler=address,
                          retries=0, progress=False)
        assert stale[0]["status"] == "failed" and stale[0]["reason"].startswith("StaleCode:")
        assert stale_store.keys() == []
    finally:
        stop(procs[1:])
        stop(procs[:1])


FIXES = ["fixes", "--mdps", "3", "--alphas", "0.5", "--no-pal", "--agent-mdps", "0",
         "--solver", "auto", "--time-limit", "5", "-q"]      # time-limited solve tasks (a kept child process)


def fixes_cli(out: Path, *where: str) -> subprocess.Popen:
    """`python -m bilevel.studies fixes ...` with FIXES into `out`, its tasks run where `where`
    says (--workers N or --scheduler ADDRESS), started."""
    return subprocess.Popen([sys.executable, "-m", "bilevel.studies", *FIXES, "--out", str(out),
                             *where], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def running_task(worker_pids: set[int]) -> tuple[int, int] | None:
    """(worker pid, pid of its task's child process) for a worker running a time-limited task."""
    for pid in worker_pids:
        try:
            for c in psutil.Process(pid).children():
                if "bilevel.sweep.child" in c.cmdline():
                    return pid, c.pid
        except psutil.NoSuchProcess:
            pass
    return None


def test_fixes_cli_on_a_cluster_with_a_killed_worker_gives_each_result_once(tmp_path):
    from bilevel.studies import fixes as st
    out0, out = tmp_path / "serial", tmp_path / "cluster"
    procs, study = [], fixes_cli(out0, "--workers", "0")
    try:
        _, err = study.communicate(timeout=600)
        assert study.returncode == 0, err
        address = start_cluster(tmp_path, procs)
        workers = {c.pid for p in procs[1:] for c in psutil.Process(p.pid).children(True)}
        study = fixes_cli(out, "--scheduler", address)
        deadline = time.monotonic() + 120
        while (hit := running_task(workers)) is None:
            assert time.monotonic() < deadline and study.poll() is None, "no task started"
            time.sleep(0.05)
        victim, its_task = hit
        os.kill(victim, signal.SIGKILL)                   # mid-task: its solve is still running
        _, err = study.communicate(timeout=600)
        assert study.returncode == 0, err
        assert not psutil.pid_exists(victim) and not psutil.pid_exists(its_task)
    finally:
        if study.poll() is None:
            study.kill()
            study.wait()
        stop(procs[1:])
        stop(procs[:1])

    serial, cluster = (json.loads((d / "fixes.json").read_text()) for d in (out0, out))
    settings = st.fixes_settings(0, [0.5], "auto", 5.0, False, "ipopt", [0.5])
    expected = [st.unit_task(st.fixes_mdp(i, 0), i, 0, u) for i in range(3)
                for u in st.fixes_units(settings, False)]
    expected += [st.named_task(f, "auto", 30.0)[0] for f in ("hidden_goal_deterministic.yaml",
                                                             "hidden_goal_ergodic.yaml")]
    store = ResultStore(out / "tasks")
    assert store.keys() == sorted(t.key for t in expected)        # one record per key
    assert all(store.get(t.key)["status"] == "ok" for t in expected)
    units = [(r["mdp"], r["formulation"], r["alpha"]) for r in cluster["results"]]
    assert len(units) == len(set(units)) == 9                      # one result per unit

    def unseconded(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    assert cluster["table"] == serial["table"] and cluster["failed"] == [] == serial["failed"]
    for part in ("results", "named"):
        assert unseconded(cluster[part]) == unseconded(serial[part])
    assert unseconded(cluster["results"]) == unseconded(
        [store.get(t.key)["result"] for t in expected[:9]])
