"""The scaling benchmark runs end to end on a tiny grid (its timings are never asserted), and
its numbers are the engine's: the IPOPT leader optimum matches SCIP's, the LP's J* the
value iteration's, and the exact routes' interval ends match computations that share none of
their code (value iteration; a brute force over deterministic policies with the hostile model)."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bilevel.tabular import policy_evaluation, value_iteration

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def mal_min_end(mdp) -> float:
    """min J(pi, M) over MAL's equilibria in the limit floor -> 0, by brute force. A deterministic
    policy's behaviour on the states it reaches is an equilibrium iff it is optimal in some model
    that equals P on the pairs it visits (loss 0 = the leader optimum) and is free on its support
    K elsewhere; the most hostile such model sends every free pair to its worst successor, so
    the values of the unreached states are the max-min fixed point and the test is
    min_{t in K(s,a)} R(s,a,t) + gamma V(t) <= V(s) on every reached s and action a."""
    S, A, g = mdp.n_states, mdp.n_actions, mdp.gamma
    live = np.flatnonzero(~mdp.terminal)
    best = np.inf
    for acts in itertools.product(range(A), repeat=live.size):
        a_of = np.zeros(S, dtype=int)
        a_of[live] = acts
        reached = (mdp.rho0 > 0) & ~mdp.terminal
        while True:
            nxt = reached | ((mdp.P[np.flatnonzero(reached), a_of[reached]] > 0).any(axis=0)
                             & ~mdp.terminal)
            if (nxt == reached).all():
                break
            reached = nxt
        V_pi = policy_evaluation(mdp.P, mdp.r, g, np.eye(A)[a_of])
        V = np.where(reached, V_pi, 0.0)
        free = ~mdp.terminal & ~reached

        def worst(V):        # (S, A): min over the support of the one-step value
            return np.where(mdp.K, mdp.R + g * V[None, None, :], np.inf).min(axis=-1)
        for _ in range(100_000):
            W = np.where(free, worst(V).max(axis=1), V)
            if np.abs(W - V).max() <= 1e-13:
                break
            V = W
        if (worst(V)[reached] <= V[reached, None] + 1e-9).all():
            best = min(best, float(mdp.rho0 @ V_pi))
    return best


def test_scaling_benchmark_on_a_2x2_grid(tmp_path):
    from equilibria_scaling import grid_mdp
    out = tmp_path / "scaling.json"
    r = subprocess.run([sys.executable, "benchmarks/equilibria_scaling.py", "--sizes", "2x2",
                        "--scip-limit", "30", "--no-interval", "--repeats", "1",
                        "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "largest grid within 60 s" in r.stdout
    row = json.loads(out.read_text())["rows"][0]
    mdp = grid_mdp("2x2")
    V, _ = value_iteration(mdp.P, mdp.r, mdp.gamma)
    J_star = float(mdp.rho0 @ V)
    assert row["highs"]["J"] == pytest.approx(J_star, abs=1e-6)
    assert row["ipopt"]["ok"] and row["scip"]["status"] == "global"
    assert row["ipopt"]["L"] == pytest.approx(row["scip"]["L"], abs=1e-5)
    assert row["ipopt"]["rss_mb"] > 50       # a whole interpreter with Pyomo and IPOPT
    # the exact routes: PAL = [J*, J*]; MAL = [min over hiding equilibria, J*], both proved
    pal, mal = row["exact_PAL"], row["exact_MAL"]
    assert pal["status"] == mal["status"] == "global" and pal["gap"] == mal["gap"] == 0.0
    assert pal["J"] == pytest.approx([J_star, J_star], abs=1e-6)
    assert mal["J"][1] == pytest.approx(J_star, abs=1e-6)
    J_min = mal_min_end(mdp)
    assert J_min < J_star - 0.1              # the 2x2 grid has a hiding equilibrium (the decoy)
    assert mal["J"][0] == pytest.approx(J_min, abs=1e-6)


def test_scaling_benchmark_exact_only(tmp_path):
    """--exact-only: HiGHS and the exact columns only, repeated; the exact fit is printed."""
    out = tmp_path / "scaling.json"
    r = subprocess.run([sys.executable, "benchmarks/equilibria_scaling.py", "--sizes", "2x2", "3",
                        "--exact-only", "--repeats", "2", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "exact MAL time ~" in r.stdout and "exact PAL time ~" in r.stdout
    data = json.loads(out.read_text())
    assert [row["grid"] for row in data["rows"]] == ["2x2", "3x3"]
    for row in data["rows"]:
        assert not {"ipopt", "interval", "scip"} & set(row)
        for c in ("highs", "exact_MAL", "exact_PAL"):
            assert len(row[c]["runs"]) == 2 and row[c]["s_min"] <= row[c]["s"] <= row[c]["s_max"]
    assert data["largest"]["exact_MAL"] == data["largest"]["exact_PAL"] == "3x3"


def test_agent_reward_reach_runs_and_reports_the_enumerations_interval(tmp_path):
    """benchmarks/agent_reward_reach.py end to end on a 3-state Garnet at alpha 0.99 and a
    slip-0 gridworld spec (timings never asserted): its JSON interval is the one the
    enumeration of the follower's deterministic policies proves (an independent route), at the
    alpha it was given."""
    from bilevel.equilibria.enumeration import enumerate_interval
    from bilevel.mdp.garnet import garnet
    out = tmp_path / "reach.json"
    spec = "garnet:3:2:2:0:neighbors"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "agent_reward_reach.py"), "--only", spec,
                    "--time-limit", "20", "--alpha", "0.99", "--json", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    row = json.loads(out.read_text())[0]["runs"][-1]
    enum = enumerate_interval(garnet(3, 2, 2, seed=0, support="neighbors", initial="first"),
                              "MAL_agent_reward", 0.99)
    assert row["alpha"] == 0.99
    assert row["status"] == "global" and enum.certificate == "global"
    assert row["J"] == pytest.approx([enum.low.J, enum.high.J], abs=1e-6)
    import agent_reward_reach
    grid = agent_reward_reach.load("slip0:mdps/grid_hidden_goal.yaml")
    assert grid.n_states == 22 and ((grid.P > 0).sum(-1) == 1).all()


def test_the_mumps_ordering_changes_the_time_not_the_interval():
    """benchmarks/ipopt_ordering.py's claim on a case small enough for the suite: MAL + agent
    reward through the IPOPT MPEC route on a 3-state Garnet gives the same certificate and
    interval under the ordering solvers.ipopt sets (AMD) and under IPOPT's own choice."""
    import ipopt_ordering
    import solvers.ipopt
    case = "garnet:3:2:2:1:neighbors|MAL_agent_reward|mpec-ipopt"
    kept = solvers.ipopt.MUMPS_PIVOT_ORDER
    try:
        amd, auto = (ipopt_ordering.worker(case, order) for order in (0, 7))
    finally:
        solvers.ipopt.MUMPS_PIVOT_ORDER = kept
    assert amd["ok"] and auto["ok"] and amd["status"] == auto["status"]
    assert amd["J"] == pytest.approx(auto["J"], abs=1e-9)


def test_agent_reward_auto_flags_what_contradicts_the_reference():
    """benchmarks/agent_reward_auto.py's verdicts: auto's proved bounds must enclose a global
    reference, a global auto interval must equal it, a local reference proves nothing; the
    summary counts the low ends that miss a global reference."""
    import agent_reward_auto as bench
    ref = {"ok": True, "status": "global", "J": [7.0, 8.0]}
    inside = {"ok": True, "status": "local", "J": [7.2, 8.0], "proved_gap": {"min": 0.25, "max": 0.0},
              "ipopt_J": [7.3, 8.0]}
    assert bench.compare(inside, ref) == []
    short = {**inside, "proved_gap": {"min": 0.1, "max": 0.0}}
    assert "miss the reference" in bench.compare(short, ref)[0]
    wrong_global = {**inside, "status": "global", "proved_gap": {"min": 0.0, "max": 0.0}}
    assert any("differs" in p for p in bench.compare(wrong_global, ref))
    assert bench.compare(short, {**ref, "status": "local"}) == []
    rows = [{"S": 5, "auto": {**inside, "s": 4.0}, "reference": ref},
            {"S": 5, "auto": {**ref, "s": 2.0, "ipopt_J": [7.0, 8.0]}, "reference": ref}]
    (s,) = bench.summary(rows)
    assert (s["n"], s["auto_global"], s["reference_global"]) == (2, 1, 2)
    assert (s["ipopt_missed_low"], s["auto_missed_low"], s["auto_s_max"]) == (1, 1, 4.0)
    assert len(bench.specs([3, 4])) == 24

