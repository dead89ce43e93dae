"""Studies: the PAL theorem check, the scaled counterexample, the fixes study (its tasks on the
sweep engine: resume, extension, time limits, a local cluster against this process)."""
import json
import math
from dataclasses import asdict

import numpy as np
import pytest

from bilevel.mdp.garnet import garnet
from bilevel.tabular import kl_fit, model_loss, occupancy, policy_return
from bilevel.studies.common import model_return, optimal_return, pal_closed_form_gap
from bilevel.studies.theorem import (check_instance, pal_bound, random_study_mdp,
                                     theorem_instances, worst_case_loss)


def test_theorem_holds_on_random_mdps_and_is_not_vacuous():
    rows = []
    for i in range(8):
        mdp = random_study_mdp(i, seed=123)
        rows += theorem_instances(mdp, np.random.default_rng(i))
    assert not [r for r in rows if r.violation]
    assert max(r.tightness for r in rows) > 1e-3
    assert len({r.model_kind for r in rows}) == 2


def test_worst_case_loss_dominates_the_loss_of_every_policy():
    """eps_M = sup_pi l(Q, mu_M^pi) (value iteration) >= l(Q, mu_M^pi) for random pi."""
    mdp = garnet(5, 3, 2, seed=4, gamma=0.9)
    rng = np.random.default_rng(0)
    Q = 0.7 * kl_fit(mdp.P, mdp.K, mdp.floor) + 0.3 * rng.dirichlet(np.ones(5), size=(5, 3))
    eps = worst_case_loss(mdp, Q)
    losses = [model_loss(mdp.P, Q, occupancy(mdp.P, mdp.rho0, mdp.gamma,
                                               rng.dirichlet(np.ones(3), size=5)))
              for _ in range(200)]
    assert max(losses) <= eps + 1e-12
    assert max(losses) > 0.5 * eps       # and it is attained nearly by some policy


def test_mismeasured_eps_pi_gives_a_violation():
    """With an exact model (support "true", no floor effect) eps_M = 0 and the bound is
    eps_pi = J*(M) - J(pi, M): tight. Under-reporting eps_pi must be caught."""
    mdp = garnet(4, 2, 2, seed=2, gamma=0.9, support="true")
    Q = kl_fit(mdp.P, mdp.K, mdp.floor)
    assert np.allclose(Q, mdp.P)
    J_star, pi_star = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    pi = 0.5 * pi_star + 0.5 / mdp.n_actions
    ok = check_instance(mdp, Q, pi, J_star, model_kind="exact", model_param=0,
                        policy_kind="mixture", policy_param=0.5)
    assert not ok.violation and ok.gap > 1e-3 and math.isclose(ok.tightness, 1.0, rel_tol=1e-6)
    bad = check_instance(mdp, Q, pi, J_star, eps_pi=0.5 * ok.eps_pi, model_kind="exact",
                         model_param=0, policy_kind="mixture", policy_param=0.5)
    assert bad.violation


def test_bound_without_the_model_term_would_be_violated():
    """A wrong bound (eps_M reported as 0) fails on some instance: the check has teeth."""
    rows = theorem_instances(random_study_mdp(0, seed=5), np.random.default_rng(1))
    assert [r for r in rows if r.gap > pal_bound(r.eps_pi, 0.0, r.gamma, r.r_max) + 1e-9]
    assert not [r for r in rows if r.violation]


def test_pal_bound_formula():
    assert pal_bound(0.1, 0.04, 0.9, 2.0) == pytest.approx(0.1 + 4 * 0.9 * 0.2 * 2.0 / 0.01)


def test_model_return_equals_true_return_for_the_true_model():
    mdp = garnet(4, 2, 3, seed=1)
    pi = np.full((4, 2), 0.5)
    assert model_return(mdp, mdp.P, pi) == pytest.approx(
        policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, pi))
    assert np.allclose(mdp.model_reward(mdp.P), mdp.r)


def test_model_return_is_the_discounted_sum_of_model_rewards():
    """J(pi, Mhat) against a truncated rollout sum_t gamma^t E[rhat] in a random model, with
    rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s') summed term by term."""
    mdp = garnet(4, 2, 4, seed=3, gamma=0.8)
    rng = np.random.default_rng(2)
    Phat = np.where(mdp.K, rng.dirichlet(np.ones(4), size=(4, 2)), 0.0)
    Phat /= Phat.sum(-1, keepdims=True)
    pi = rng.dirichlet(np.ones(2), size=4)
    rhat = np.array([[sum(Phat[s, a, t] * mdp.R[s, a, t] for t in range(4)) for a in range(2)]
                     for s in range(4)])
    d, J = mdp.rho0.copy(), 0.0
    for t in range(400):
        J += mdp.gamma ** t * sum(d[s] * pi[s, a] * rhat[s, a] for s in range(4) for a in range(2))
        d = np.einsum("s,sa,sat->t", d, pi, Phat)
    assert model_return(mdp, Phat, pi) == pytest.approx(J, rel=1e-9)


def test_counterexample_gap_scales_with_k():
    from bilevel.studies.counterexample import counterexample_row
    r1 = counterexample_row(1, solver="scip", time_limit=20)
    r10 = counterexample_row(10, solver="scip", time_limit=20)
    assert r1.mal_certificate == "global" and r10.mal_certificate == "global"
    assert r10.mal_gap / r1.mal_gap == pytest.approx(10.0, rel=0.02)
    assert abs(r1.pal_closed_form_gap) < 1e-6 and abs(r10.pal_closed_form_gap) < 1e-6
    assert r1.pal_certificate == "global" and abs(r1.pal_gap) < 1e-4


def test_scaled_hidden_goal_scales_only_the_hidden_rewards():
    from bilevel.studies.counterexample import scaled_hidden_goal
    m1, m5 = scaled_hidden_goal(1), scaled_hidden_goal(5)
    assert np.allclose(m1.P, m5.P)
    A, B, X, Y = 0, 1, 0, 1
    assert m5.R[A, Y, A] == pytest.approx(5 * 0.75) and m5.R[B, Y, A] == pytest.approx(5 * 0.5)
    assert m5.R[B, X, 2] == pytest.approx(m1.R[B, X, 2])


@pytest.mark.slow
def test_theorem_cli_200_mdps_no_violation(tmp_path):
    from bilevel.studies.theorem import run_theorem
    res = run_theorem(200, 0, tmp_path, mal_mdps=0)
    assert res["violations"] == [] and res["n_instances"] >= 200


def test_early_stopped_mpec_iterates_are_checked_and_approach_the_optimum():
    """Early-stopped IPOPT iterates on PAL's MPEC: every one satisfies the bound with measured
    premises, and more iterations bring the policy closer to J* (the instances are not all alike)."""
    from bilevel.studies.theorem import early_stopped_instances
    rows = early_stopped_instances(random_study_mdp(0, 0), iters=(1, 200))
    assert [r.model_param for r in rows] == [1.0, 200.0]
    assert not any(r.violation for r in rows)
    assert all(r.bound > 0 and r.eps_M > 0 for r in rows)
    assert rows[1].gap < rows[0].gap


@pytest.fixture
def in_process(monkeypatch):
    """The studies' time-limited tasks run in this process (no child process), so a
    monkeypatched solver applies."""
    import bilevel.sweep.task as task
    monkeypatch.setattr(task, "call_in_child",
                        lambda fn, kwargs, time_limit: task.call(fn, kwargs))


IN_PROCESS = {"workers": 0, "progress": False}


def test_fixes_tasks_resume_extend_and_summary(tmp_path, monkeypatch, in_process):
    """Every unit is a stored task: a second run solves nothing, a new alpha only its units, a
    changed solver only the units that use it, --fresh everything; the table counts from the
    results."""
    import bilevel.studies.fixes as st
    calls = []

    def fake_gap(mdp, f, a=None, solver="scip", time_limit=10.0, starts=8):
        calls.append((mdp.name, f, a))
        return st.FixResult(mdp=mdp.name, formulation=f, alpha=a, ok=f != "MAL_random_noise",
                            gap=2.0 if f == "MAL" else 0.1, solver=solver,
                            certificate="global", seconds=0.0)

    monkeypatch.setattr(st, "worst_gap", fake_gap)
    kw = dict(with_pal=False, agent_mdps=1, agent_alphas=[0.9], sweep=IN_PROCESS)
    pay = st.run_fixes(3, 0, [0.5], tmp_path, **kw)
    assert sorted(c[0].split("_")[0] for c in calls) == sorted(
        ["fixes0"] * 3 + ["fixes1"] * 2 + ["fixes2"] * 2 + ["hidden", "hidden"])
    assert len(list((tmp_path / "tasks").glob("*.json"))) == len(calls) + 3   # + closed forms
    rows = {(e["formulation"], e["alpha"]): e for e in pay["table"]}
    assert rows[("MAL", None)]["max_gap"] == 2.0 and rows[("MAL", None)]["n_bad"] == 3
    assert rows[("MAL_agent_reward", 0.9)]["solved"] == 1          # first MDP only
    assert rows[("MAL_random_noise", 0.5)]["failed"] == 3          # failed ones are not counted
    assert rows[("MAL", None)]["max_gap_global"] == 2.0 and rows[("MAL", None)]["n_global"] == 3
    assert rows[("MAL_random_noise", 0.5)]["max_gap_global"] is None
    assert rows[("PAL_closed_form", None)]["max_gap"] == pytest.approx(
        max(pal_closed_form_gap(st.fixes_mdp(i, 0)) for i in range(3)), abs=1e-12)
    calls.clear()
    first = (tmp_path / "fixes.json").read_text()
    st.run_fixes(3, 0, [0.5], tmp_path, **kw)
    assert calls == [] and (tmp_path / "fixes.json").read_text() == first
    st.run_fixes(3, 0, [0.5, 0.9], tmp_path, **kw)                # a new alpha: only it is solved
    assert sorted(calls) == [(f"fixes{i}_S4_A2", "MAL_random_noise", 0.9) for i in range(3)]
    calls.clear()
    st.run_fixes(3, 0, [0.5], tmp_path, solver="ipopt", **kw)
    assert len(calls) == 8 and all(c[1] != "MAL_agent_reward" for c in calls)  # its solver is kept
    calls.clear()
    st.run_fixes(3, 0, [0.5], tmp_path, solver="ipopt", fresh=True, **kw)
    assert len(calls) == 9


def test_fixes_recheck_replaces_an_unproved_bad_gap_by_a_global_one(tmp_path, monkeypatch,
                                                                    in_process):
    import bilevel.studies.fixes as st
    calls = []

    def fake_gap(mdp, f, a=None, solver="scip", time_limit=10.0, starts=8):
        recheck = solver == "enumerate" and time_limit == 9.0
        calls.append((f, recheck))
        return st.FixResult(mdp=mdp.name, formulation=f, alpha=a, ok=True,
                            gap=0.0 if recheck else 0.5, solver=solver,
                            certificate="global" if recheck else "local", seconds=0.0)

    monkeypatch.setattr(st, "worst_gap", fake_gap)
    pay = st.run_fixes(1, 0, [0.5], tmp_path, "auto", 5.0, False, 1, "enumerate", [0.9],
                       agent_time_limit=1.0, recheck=9.0, sweep=IN_PROCESS)
    res = {(r["formulation"], r["alpha"]): r for r in pay["results"]}
    assert res[("MAL", None)]["gap"] == 0.5                       # plain MAL is not rechecked
    for k in (("MAL_random_noise", 0.5), ("MAL_agent_reward", 0.9)):
        assert res[k]["certificate"] == "global" and res[k]["gap"] == 0.0
    assert sorted(c for c in calls if c[1]) == [("MAL_agent_reward", True),
                                               ("MAL_random_noise", True)]


def test_fixes_task_past_its_time_limit_is_a_failed_result(tmp_path, monkeypatch, capsys):
    """A solve killed at its task's time limit is a failed result with that reason: counted
    as failed in the table and in the exit status; the untimed closed form is still solved."""
    import bilevel.studies.fixes as st
    from bilevel.studies.cli import main
    monkeypatch.setattr(st, "task_time_limit", lambda seconds: 0.05)
    assert main(["fixes", "--mdps", "2", "--alphas", "0.5", "--agent-mdps", "0", "--no-pal",
                 "--out", str(tmp_path), "--workers", "0", "-q"]) == 1
    assert "6 task(s) failed" in capsys.readouterr().err
    pay = json.loads((tmp_path / "fixes.json").read_text())
    rows = {e["formulation"]: (e["solved"], e["failed"]) for e in pay["table"]}
    assert rows == {"MAL": (0, 2), "MAL_random_noise": (0, 2), "PAL_closed_form": (2, 0)}
    assert all(r["reason"] == "time limit of 0.05 s exceeded" and r["gap"] is None
               for r in pay["results"] + pay["named"] if r["formulation"] != "PAL_closed_form")


def test_fixes_on_a_local_cluster_equals_in_process_and_resumes(tmp_path, capsys):
    """The same fixes.json (table and results, solver times aside) from 2 Dask workers as in
    this process, equal to direct solves; a second run reuses every record, and a deleted
    record is the only one computed again."""
    import bilevel.studies.fixes as st
    from bilevel.equilibria.routing import solve_formulation
    from bilevel.studies.cli import main
    from bilevel.sweep import ResultStore
    args = ["fixes", "--mdps", "2", "--alphas", "0.5", "--no-pal", "--agent-mdps", "0",
            "--solver", "auto", "--time-limit", "5"]
    pays = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        assert main(args + ["--out", str(out), "--workers", workers]) == 0
        pays[workers] = json.loads((out / "fixes.json").read_text())
    assert "8 tasks: 8 done, 0 failed, 0 reused" in capsys.readouterr().err

    def unseconded(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    serial, cluster = pays["0"], pays["2"]
    assert cluster["table"] == serial["table"]
    for part in ("results", "named"):
        assert unseconded(cluster[part]) == unseconded(serial[part])
    for r in serial["results"]:
        mdp = st.fixes_mdp(int(r["mdp"][5]), 0)
        if r["formulation"] == "PAL_closed_form":
            assert r["gap"] == pal_closed_form_gap(mdp)
        else:
            iv = solve_formulation(mdp, r["formulation"], alpha=r["alpha"], solver="auto")
            assert r["gap"] == pytest.approx(optimal_return(mdp.P, mdp.r, mdp.rho0,
                                                            mdp.gamma)[0] - iv.low.J, abs=1e-9)
    out = tmp_path / "w2"
    store = ResultStore(out / "tasks")

    def results():
        return {k: unseconded([store.get(k)["result"]]) for k in store.keys()}

    before = results()
    assert main(args + ["--out", str(out), "--workers", "2"]) == 0
    assert "8 tasks: 0 done, 0 failed, 8 reused" in capsys.readouterr().err
    key = st.unit_task(st.fixes_mdp(1, 0), 1, 0, ("MAL", None, "auto", 5.0)).key
    store.path(key).unlink()
    assert main(args + ["--out", str(out), "--workers", "2"]) == 0
    assert "8 tasks: 1 done, 0 failed, 7 reused" in capsys.readouterr().err
    assert results() == before
    assert json.loads((out / "fixes.json").read_text())["table"] == serial["table"]


def test_theorem_study_records_are_the_direct_instances(tmp_path):
    """run_theorem's instances, from its tasks' records, are theorem_instances of each MDP in
    order (an infinite tightness survives the JSON record)."""
    from bilevel.studies.theorem import TheoremInstance, instances_from_record, run_theorem
    pay = run_theorem(3, 7, tmp_path, mal_mdps=0, early_mdps=0)
    direct = [asdict(r) for i in range(3) for r in theorem_instances(
        random_study_mdp(i, 7), np.random.default_rng([7, i, 1]))]
    assert pay["instances"] == json.loads(json.dumps(direct)) and pay["failed"] == []
    assert len(list((tmp_path / "tasks").glob("*.json"))) == 3
    row = dict(direct[0], gap=1.0, bound=0.0, tightness=None, violation=True)
    assert instances_from_record({"status": "ok", "result": [row]}) == [
        TheoremInstance(**dict(row, tightness=math.inf))]


def test_fixes_progress_goes_to_stderr_and_q_drops_it(tmp_path, monkeypatch, capsys, in_process):
    """stdout holds the table; the per-MDP progress lines and the sweep's count are messages on
    stderr, and -q drops them."""
    import bilevel.studies.fixes as st
    from bilevel.studies.cli import main
    monkeypatch.setattr(st, "worst_gap", lambda mdp, f, a=None, solver="scip", time_limit=10.0,
                        starts=8: st.FixResult(mdp=mdp.name, formulation=f, alpha=a, ok=True,
                                               gap=0.25, solver=solver, certificate="global",
                                               seconds=0.0))
    args = ["fixes", "--mdps", "2", "--alphas", "0.5", "--agent-mdps", "0", "--no-pal",
            "--out", str(tmp_path), "--workers", "0"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert [ln.split(":")[0].strip() for ln in err.splitlines()] == [
        "[fixes] 8 tasks", "fixes0_S4_A2", "fixes1_S4_A2"]
    assert "MAL=0.25" in err and "MAL=0.25" not in out and "formulation" in out
    assert main(args + ["-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "formulation" in out
