"""bilevel.equilibria.exact: the exact routes, checked against computations that do not share their logic.

- brute force over every deterministic policy, each judged by value iteration in its own
  explicit witness model (no MILP, no heuristic, no bound);
- the MILP alone (the heuristics can settle an end before it runs) against that brute force;
- the global MPEC (SCIP) and the local one (IPOPT): their ends must lie inside the exact interval
  up to what the band and the floor allow;
- the PAL floor bracket against the MPEC's PAL interval at the file's floor.
"""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bilevel.equilibria import follower_gap, model_reward
from bilevel.equilibria.exact import exact_interval
from bilevel.equilibria.exact.milp import HidingMILP
from bilevel.equilibria.exact.search import true_return
from bilevel.equilibria.exact.structure import FollowerStructure, forced_pairs
from bilevel.mdp.garnet import garnet
from bilevel.mdp import load_mdp
from bilevel.tabular import deterministic_policy, policy_evaluation, value_iteration
from conftest import MDPS, ROOT

SUPPORTS = ("true", "neighbors", "all")


def random_mdp(seed, S, A, support, branching, gamma, initial):
    return garnet(S, A, min(branching, S), seed=seed, support=support, gamma=gamma, initial=initial)


mdps = st.builds(random_mdp, seed=st.integers(0, 10_000), S=st.integers(2, 5), A=st.integers(2, 3),
                 support=st.sampled_from(SUPPORTS), branching=st.integers(1, 3),
                 gamma=st.sampled_from([0.5, 0.9, 0.95]), initial=st.sampled_from(["first", "uniform"]))


def brute_force_equilibria(mdp, formulation="MAL", alpha=None):
    """J(pi, M) of every deterministic pi that is optimal (value iteration) in its hostile
    witness model; the model equals P on every pair with loss weight, so its loss is 0 = L*."""
    fs = FollowerStructure(mdp, 0.0, forced_pairs(mdp, formulation, alpha))
    live = np.flatnonzero(~mdp.terminal)
    out = []
    for code in range(mdp.n_actions ** live.size):
        actions = np.zeros(mdp.n_states, dtype=int)
        actions[live] = np.unravel_index(code, (mdp.n_actions,) * live.size) if live.size else []
        chk = fs.check(actions)
        pi = deterministic_policy(chk.actions, mdp.n_actions)
        Phat = fs.witness_model(chk.actions, chk.reached, chk.V)
        fitted = fs.forced | (chk.reached[:, None] & (pi > 0))
        assert np.allclose(Phat[fitted], mdp.P[fitted])            # loss 0 on weighted pairs
        V_star, _ = value_iteration(Phat, model_reward(mdp, Phat), mdp.gamma, tol=1e-12)
        V_pi = policy_evaluation(Phat, model_reward(mdp, Phat), mdp.gamma, pi)
        if np.max(V_star - V_pi) <= 1e-9 * max(1.0, np.abs(V_star).max()):
            out.append(true_return(fs, chk.actions))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mdp=mdps, formulation=st.sampled_from(["MAL", "MAL_random_noise"]))
def test_exact_mal_family_matches_brute_force(mdp, formulation):
    """60 random Garnets (2-5 states, 2-3 actions, every support): both ends of the exact
    interval are the extremes of J over the brute-force equilibria, and are global."""
    alpha = 0.5 if formulation == "MAL_random_noise" else None
    res = exact_interval(mdp, formulation, alpha)
    Js = brute_force_equilibria(mdp, formulation, alpha)
    assert res.ok and res.certificate == "global"
    assert res.low.J == pytest.approx(min(Js), abs=1e-8)
    assert res.high.J == pytest.approx(max(Js), abs=1e-8)
    assert res.low.follower_gap <= 1e-6 and res.high.follower_gap <= 1e-6


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mdp=mdps)
def test_milp_alone_finds_the_worst_and_best_hiding_equilibria(mdp):
    """The MILP without incumbent or shortcut: its optimum, min and max, is the brute force's."""
    fs = FollowerStructure(mdp, 0.0, forced_pairs(mdp, "MAL", None))
    Js = brute_force_equilibria(mdp)
    milp = HidingMILP(fs)
    for maximize, want in ((False, min(Js)), (True, max(Js))):
        res, point = milp.solve(maximize)
        assert res.status.value == "optimal", (res.status, res.message, mdp.name)
        assert true_return(fs, point.actions) == pytest.approx(want, abs=1e-7)
        assert fs.check(point.actions).equilibrium


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mdp=mdps)
def test_floored_check_is_sound(mdp):
    """Every policy the check passes at the file's floor is a best response (value iteration) in
    its floored witness model, which is floored on K and equals the floored fit where pi goes."""
    fs = FollowerStructure(mdp, mdp.floor, forced_pairs(mdp, "MAL", None))
    live = np.flatnonzero(~mdp.terminal)
    rng = np.random.default_rng(0)
    for _ in range(10):
        actions = np.zeros(mdp.n_states, dtype=int)
        actions[live] = rng.integers(mdp.n_actions, size=live.size)
        chk = fs.check(actions)
        if not chk.equilibrium:
            continue
        Phat = fs.witness_model(chk.actions, chk.reached, chk.V)
        pi = deterministic_policy(chk.actions, mdp.n_actions)
        assert follower_gap("MAL", mdp, pi, Phat) <= 1e-9
        assert np.all(Phat[mdp.K & ~mdp.terminal[:, None, None]] >= mdp.floor * (1 - 1e-9))


def test_grid_hidden_goal_mal_worst_case_is_zero_and_proved():
    """The 5x5 gridworld: a policy that stays put (return 0) is a MAL equilibrium, the model
    walls off every move it never makes; the local MPEC route had reported 0.055."""
    mdp = load_mdp(MDPS / "grid_hidden_goal.yaml")
    res = exact_interval(mdp, "MAL")
    J_star = float(mdp.rho0 @ value_iteration(mdp.P, mdp.r, mdp.gamma)[0])
    assert res.certificate == "global"
    assert res.low.J == pytest.approx(0.0, abs=1e-12)
    assert res.high.J == pytest.approx(J_star, rel=1e-9)
    assert res.details["proved_gap"] == {"min": 0.0, "max": 0.0}


def test_floor_tie_is_reported_and_the_floored_end_is_certified():
    """On the 5x5 grid the hiding wall is a tie that the floor breaks: at eta = 1e-6 the stay-put
    policy is not a best response. The route says so, and with floor_ends the floored MILP gives
    the end at the file's floor with its own certified witness."""
    mdp = load_mdp(MDPS / "grid_hidden_goal.yaml")
    res = exact_interval(mdp, "MAL")
    tie = res.details["at_floor"]["min"]
    assert tie["witness"] is False and tie["floored_witness_follower_gap"] > 1e-6
    small = garnet(3, 2, 2, seed=11, support="all", initial="first")
    res = exact_interval(small, "MAL", floor_ends=True)
    for end in ("min", "max"):
        f = res.details["at_floor"][end]
        assert f["witness"] or f.get("certified")


@pytest.mark.parametrize("seed,support", [(0, "all"), (1, "neighbors"),
                                          pytest.param(2, "true", marks=pytest.mark.slow),
                                          pytest.param(3, "all", marks=pytest.mark.slow)])
def test_global_mpec_and_local_mpec_ends_lie_inside_the_exact_interval(seed, support):
    """SCIP's and IPOPT's MAL intervals (band tol, floor 1e-6) against the exact limit one: every
    end lies inside it, up to what the band admits (a model off the fit by the band's loss
    budget moves J by at most that much, scaled: 1e-3 here)."""
    from bilevel.equilibria import solve_formulation
    mdp = garnet(3, 2, 2, seed=seed, support=support, initial="first")
    exact = exact_interval(mdp, "MAL")
    for solver in ("mpec-scip", "mpec-ipopt"):
        res = solve_formulation(mdp, "MAL", solver=solver, time_limit=20.0)
        if not res.ok:
            continue
        assert exact.low.J - 1e-3 <= res.low.J <= exact.high.J + 1e-3
        assert exact.low.J - 1e-3 <= res.high.J <= exact.high.J + 1e-3
        if res.certificate == "global":
            assert res.low.J == pytest.approx(exact.low.J, abs=1e-3)
            assert res.high.J == pytest.approx(exact.high.J, abs=1e-3)


def test_pal_mpec_lies_in_the_floor_bracket(hidden_goal):
    """PAL: the exact limit interval is [J*, J*]; at the file's floor the MPEC's interval (SCIP,
    global) must lie in the proved bracket [J* - 2 delta - tol, J*]."""
    from bilevel.equilibria import solve_formulation
    exact = exact_interval(hidden_goal, "PAL")
    lo, hi = exact.details["at_floor"]["J_bounds"]
    mpec = solve_formulation(hidden_goal, "PAL", solver="mpec-scip", time_limit=60.0)
    assert mpec.ok
    assert lo - 1e-6 <= mpec.low.J <= mpec.high.J <= hi + 1e-6
    assert exact.low.J == exact.high.J == pytest.approx(hi, abs=1e-9)


def test_cli_grid_hidden_goal_table_is_global_and_shows_the_zero():
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(MDPS / "grid_hidden_goal.yaml"),
                          "--formulations", "PAL,MAL,MAL_random_noise"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    mal = next(line for line in out.stdout.splitlines() if line.startswith("MAL "))
    assert "[0, 9.026]" in mal and "global" in mal


def test_milp_runs_after_an_lp_in_the_same_process(hidden_goal):
    """HiGHS fixes its scheduler at the first run in a process: a MILP solved after an LP (the
    benchmarks and studies do that) must still be solved."""
    from bilevel.tabular import occupancy_lp
    mdp = garnet(4, 3, 4, seed=0, support="all", initial="first")
    occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    res, point = HidingMILP(FollowerStructure(mdp, 0.0, forced_pairs(mdp, "MAL", None))).solve(False)
    assert res.status.value == "optimal" and point is not None
