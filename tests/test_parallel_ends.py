"""The two ends of an MPEC interval as parallel tasks (bilevel.equilibria.parallel_ends): the
settled document is the serial one, on IPOPT and on SCIP, in process and on a 2-worker
LocalCluster, and when an end beats the leader optimum (the hand-over to the serial restart)."""
from __future__ import annotations

import pytest

import bilevel.equilibria.mpec_interval as mpec_interval
from bilevel.equilibria.document import solve_task, solve_task_of
from bilevel.mdp.garnet import garnet
from bilevel.mdp.io import mdp_to_arrays
from bilevel.mpec import MPECResult
from bilevel.sweep import run_sweep
from solvers.base import Status

from conftest import without_seconds


def split_in_process(mdp, formulation, **options) -> tuple[dict, list]:
    """The split solve run by the engine in this process; the record and the labels it ran."""
    ran = []
    task = solve_task_of(mdp, formulation, None, split_ends=True, **options)
    [record] = run_sweep([task], workers=0, progress=False, log=ran.append)
    assert record["status"] == "ok", record
    return record["result"], ran


SLOW = pytest.mark.slow


@pytest.mark.parametrize("solver,formulation,seed,mode", [
    ("mpec-ipopt", "PAL", 0, "polish"), ("mpec-ipopt", "MAL_random_noise", 2, "polish"),
    pytest.param("mpec-ipopt", "MAL", 1, "homotopy", marks=SLOW),
    pytest.param("mpec-ipopt", "PAL", 0, "homotopy", marks=SLOW),
    pytest.param("mpec-scip", "MAL", 3, "auto", marks=SLOW)])
def test_split_ends_give_the_serial_interval(solver, formulation, seed, mode):
    mdp = garnet(3, 2, 2, seed=seed, gamma=0.9)
    options = {"solver": solver, "starts": 2, "ipopt_mode": mode}
    serial = solve_task(mdp_to_arrays(mdp), formulation, **options)
    split, ran = split_in_process(mdp, formulation, **options)
    assert serial["status"] == "solved"
    assert without_seconds(split) == without_seconds(serial)
    assert "5 tasks" not in ran[-1] and "3 done" in ran[-1]     # the lead task and two ends


def test_an_end_that_beats_the_leader_optimum_hands_over_to_the_serial_restart(monkeypatch,
                                                                                hidden_goal):
    """The leader step of IPOPT is planted at a poor local point (PAL's decoy with an
    over-promising model; every solve of the leader objective without the band returns it) and
    the min step finds nothing: the max step beats L*, so the split solve hands over to the
    serial path, which restarts from the better point. Same document as the serial run."""
    from test_mpec_certificates import leader_point, over_promising
    real = mpec_interval._ipopt_best

    def planted(m, backend, reduction, kw, warm_points, sense, warm_schedule):
        if m.component("eq_leader_bound") is None:          # the leader step
            return leader_point(hidden_goal, m, "PAL", over_promising(hidden_goal))
        if sense == mpec_interval.pyo.minimize:
            return MPECResult(Status.INFEASIBLE, None, None, message="forced failure")
        return real(m, backend, reduction, kw, warm_points, sense, warm_schedule)

    monkeypatch.setattr(mpec_interval, "_ipopt_best", planted)
    options = {"solver": "mpec-ipopt", "starts": 1, "ipopt_mode": "polish"}
    serial = solve_task(mdp_to_arrays(hidden_goal), "PAL", **options)
    split, ran = split_in_process(hidden_goal, "PAL", **options)
    # the planted decoy did not stand: the restart reached PAL's interval [J*, J*]
    assert serial["status"] == "solved"
    assert serial["J"]["min"] == pytest.approx(73.9603960396, abs=1e-4) == serial["J"]["max"]
    assert without_seconds(split) == without_seconds(serial)
    assert "4 done" in ran[-1]               # lead, two ends, the serial hand-over


def test_two_local_workers_split_the_ends_and_give_the_serial_document(hidden_goal):
    task_of, run = solve_task_of, run_sweep
    tasks = [task_of(hidden_goal, f, None, solver="mpec-ipopt", starts=1, ipopt_mode="polish")
             for f in ("PAL", "MAL")]
    serial = run(tasks, workers=0, progress=False)
    split = [task_of(hidden_goal, f, None, solver="mpec-ipopt", starts=1, ipopt_mode="polish",
                     split_ends=True) for f in ("PAL", "MAL")]
    parallel = run(split, workers=2, progress=False)
    assert [r["status"] for r in parallel] == [r["status"] for r in serial] == ["ok", "ok"]
    assert without_seconds(list(parallel)) == without_seconds(list(serial))
    assert all(r["result"]["status"] == "solved" for r in serial)


def test_solve_to_dict_splits_the_ends_only_on_workers(hidden_goal):
    from bilevel.equilibria.document import _parallel
    assert _parallel(None) == _parallel({"workers": 0}) == {}
    assert _parallel({"workers": 2}) == _parallel({"scheduler": "tcp://x:1"}) == {"split_ends": True}

