"""Exact equilibria: the reference table on hidden_goal, SCIP vs IPOPT, certificates, properties."""
import json
import subprocess
import sys

import numpy as np
import pytest

from bilevel.equilibria import follower_gap, leader_value, solve_formulation
from bilevel.mdp.garnet import garnet
from bilevel.mdp import load_mdp
from bilevel.tabular import occupancy, uniform_policy, value_iteration
from tests.conftest import MDPS, ROOT

DECOY_EP, GOAL_EP, J_STAR, DECOY_J = 0.9875, 36.45, 73.96039604, 0.98503741


@pytest.fixture(scope="module")
def scip_results(hidden_goal):
    return {f: solve_formulation(hidden_goal, f, solver="scip")
            for f in ("PAL", "MAL", "MAL_random_noise")}


def test_mal_interval_spans_decoy_to_goal_with_global_certificate(scip_results):
    r = scip_results["MAL"]
    assert r.ok and r.certificate == "global"
    assert abs(r.low.episode_reward - DECOY_EP) < 0.05
    assert abs(r.high.episode_reward - GOAL_EP) < 0.05
    assert r.low.J == pytest.approx(DECOY_J, abs=1e-4)
    # the hiding equilibrium: the policy takes X in B, and the model is wrong exactly where the
    # policy never goes (true occupancy 0), so its data never corrects it
    from bilevel.tabular import kl_rows
    assert r.low.policy[1].argmax() == 0
    mdp = load_mdp(MDPS / "hidden_goal.yaml")
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, r.low.policy)
    wrong = kl_rows(mdp.P, r.low.model) > 0.05
    assert (wrong & (mu[:, :] == 0)).any() and not (wrong & (mu > 0)).any()


def test_pal_interval_collapses_to_the_optimum(scip_results):
    r = scip_results["PAL"]
    assert r.ok and r.certificate == "global"
    assert abs(r.low.episode_reward - GOAL_EP) < 0.05 and abs(r.high.episode_reward - GOAL_EP) < 0.05


def test_random_noise_fix_sits_at_the_optimum(scip_results):
    r = scip_results["MAL_random_noise"]
    assert r.ok and r.alpha == 0.5
    assert abs(r.low.episode_reward - GOAL_EP) < 0.05


def test_every_reported_end_passes_its_independent_certificate(hidden_goal, scip_results):
    for f, r in scip_results.items():
        for eq in (r.low, r.high):
            assert eq.follower_gap < 1e-6, f
            # recompute the follower gap and the leader value from the arrays once more
            assert follower_gap(f, hidden_goal, eq.policy, eq.model) < 1e-6
            assert leader_value(f, hidden_goal, eq.policy, eq.model, r.alpha) <= \
                r.leader_objective + r.tolerance + 1e-4 * max(1, abs(r.leader_objective))


def test_follower_gap_detects_a_non_best_response(hidden_goal, scip_results):
    eq = scip_results["MAL"].low             # decoy policy, hiding model
    assert follower_gap("MAL", hidden_goal, eq.policy, hidden_goal.P) > 1.0   # not optimal in P
    assert follower_gap("PAL", hidden_goal, eq.policy, 0.5 * eq.model + 0.5 / 3) > 1e-3


def test_ipopt_agrees_with_scip_on_mal(hidden_goal, scip_results):
    r = solve_formulation(hidden_goal, "MAL", solver="ipopt", starts=2)
    s = scip_results["MAL"]
    assert r.ok and r.certificate == "local"
    assert r.low.J == pytest.approx(s.low.J, abs=1e-3)
    assert r.high.J == pytest.approx(s.high.J, abs=1e-3)


def test_ergodic_variant_mal_still_hides():
    mdp = load_mdp(MDPS / "hidden_goal_ergodic.yaml")
    mal = solve_formulation(mdp, "MAL", solver="scip")
    J_star = mdp.rho0 @ value_iteration(mdp.P, mdp.r, mdp.gamma)[0]
    assert mal.ok and mal.certificate == "global"
    assert mal.low.J < 0.5 * J_star
    assert mal.high.J == pytest.approx(J_star, rel=1e-4)


@pytest.mark.slow
def test_ergodic_variant_pal_does_not_hide():
    mdp = load_mdp(MDPS / "hidden_goal_ergodic.yaml")
    pal = solve_formulation(mdp, "PAL", solver="auto", time_limit=60)
    J_star = mdp.rho0 @ value_iteration(mdp.P, mdp.r, mdp.gamma)[0]
    assert pal.ok and pal.low.J == pytest.approx(J_star, rel=1e-4)


def _random(seed):
    mdp = garnet(3, 2, 2, seed=seed, gamma=0.9)
    J_star = float(mdp.rho0 @ value_iteration(mdp.P, mdp.r, mdp.gamma)[0])
    assert (occupancy(mdp.P, mdp.rho0, mdp.gamma, uniform_policy(3, 2)) > 0).all()
    return mdp, J_star, 1e-3 * max(1.0, abs(J_star))


@pytest.mark.parametrize("seed", [0, 1, pytest.param(2, marks=pytest.mark.slow)])
def test_random_mdp_mal_properties(seed):
    """MAL's max is J*; MAL + random noise reaches J* when the uniform policy visits every pair
    (rho0 uniform: it does)."""
    mdp, J_star, tol = _random(seed)
    mal = solve_formulation(mdp, "MAL", solver="auto", time_limit=10)
    noise = solve_formulation(mdp, "MAL_random_noise", solver="auto", time_limit=10)
    assert mal.ok and noise.ok
    assert mal.high.J == pytest.approx(J_star, abs=tol)
    assert noise.low.J == pytest.approx(J_star, abs=tol)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_mdp_pal_collapses_to_optimum(seed):
    """The theorem: PAL's interval is [J*, J*] (SCIP's min-J end can exceed 30 s here)."""
    mdp, J_star, tol = _random(seed)
    pal = solve_formulation(mdp, "PAL", solver="auto", time_limit=120)
    assert pal.ok, pal.reason
    assert pal.low.J == pytest.approx(J_star, abs=tol) and pal.high.J == pytest.approx(J_star, abs=tol)


def test_failed_solve_is_reported_as_failed(hidden_goal):
    r = solve_formulation(hidden_goal, "MAL_agent_reward", alpha=0.999, solver="scip", time_limit=0.05)
    assert not r.ok and r.reason
    d = r.to_json()
    assert d["status"] == "failed" and "J" not in d and "equilibria" not in d


def test_cli_json_schema():
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(MDPS / "hidden_goal.yaml"),
                          "--json", "--formulations", "MAL,MAL_random_noise"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["mdp"] == {"name": "hidden_goal", "states": 3, "actions": 2, "gamma": 0.99, "horizon": 50}
    assert doc["optimal"]["episode_reward"] == pytest.approx(GOAL_EP)
    mal = doc["formulations"]["MAL"]
    assert mal["status"] == "solved" and mal["certificate"] == "global"
    assert set(mal["J"]) == {"min", "max"} and set(mal["episode_reward"]) == {"min", "max"}
    eq = mal["equilibria"]["min"]
    for key in ("policy", "model", "model_loss", "J_model", "follower_gap"):
        assert key in eq
    assert np.array(eq["policy"]).shape == (3, 2) and np.array(eq["model"]).shape == (3, 2, 3)
    assert "[solve]" in out.stderr        # progress goes to stderr, never into the JSON


def test_cli_rejects_unknown_formulation():
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(MDPS / "hidden_goal.yaml"),
                          "--formulations", "PAL,XYZ"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "XYZ" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_pal_closed_form_and_kkt_reductions_agree(hidden_goal):
    a = solve_formulation(hidden_goal, "PAL", solver="ipopt", pal_reduction="closed_form", starts=2)
    b = solve_formulation(hidden_goal, "PAL", solver="ipopt", pal_reduction="kkt", starts=2)
    assert a.ok and b.ok
    assert a.low.J == pytest.approx(b.low.J, abs=1e-3) and a.high.J == pytest.approx(b.high.J, abs=1e-3)


@pytest.mark.slow
def test_grid_10x10_all_formulations_locally():
    mdp = load_mdp(MDPS / "grid_10x10.yaml")
    for f in ("PAL", "MAL", "MAL_agent_reward", "MAL_random_noise"):
        r = solve_formulation(mdp, f, solver="ipopt", starts=1)
        assert r.ok, (f, r.reason)


@pytest.mark.parametrize("formulation", ["PAL", "MAL", "MAL_random_noise"])
def test_random_starts_are_follower_optimal_points(formulation):
    """Random IPOPT starts satisfy every constraint but the leader's: the follower's gap is 0
    (independent check) and the starts differ from each other."""
    from bilevel.equilibria.starts import random_starts
    from bilevel.game import build, extract
    mdp = garnet(6, 3, 3, seed=4, gamma=0.9)
    bm = build(mdp, formulation)
    starts = random_starts(bm, 4, seed=0)
    policies = []
    for x0 in starts:
        for v, val in x0.items():
            v.set_value(val, skip_validation=True)
        x = extract(bm)
        assert follower_gap(formulation, mdp, x["policy"], x["model"]) < 1e-8
        policies.append(x["policy"])
    assert max(np.abs(policies[0] - p).max() for p in policies[1:]) > 1e-3


def test_failed_end_search_falls_back_to_the_leader_optimum(monkeypatch):
    """If no IPOPT start of an interval step converges, the end is the leader-optimal point
    (an equilibrium in the band), re-certified, and the fallback is reported."""
    import bilevel.equilibria.mpec_route as eq
    from bilevel.equilibria import solve_formulation
    from bilevel.mpec import MPECResult
    from solvers.base import Status
    real = eq._ipopt_best

    calls = []

    def failing_ends(*args):
        calls.append(1)
        if len(calls) > 1:   # the first call is the leader optimum, then the min / max steps
            return MPECResult(Status.INFEASIBLE, None, None, message="forced failure")
        return real(*args)

    monkeypatch.setattr(eq, "_ipopt_best", failing_ends)
    mdp = garnet(4, 2, 2, seed=1, gamma=0.9)
    r = solve_formulation(mdp, "MAL", solver="ipopt", starts=1)
    assert r.ok and r.low.J == pytest.approx(r.high.J)
    assert r.low.follower_gap < 1e-6
    assert set(r.details["ends_at_leader_optimum"]) == {"min", "max"}
    assert "forced failure" in r.to_json()["ends_at_leader_optimum"]["min"]


def test_snap_to_best_response_makes_pal_follower_exact():
    """A PAL model that deviates from the fit on a visited pair has a positive follower gap; the
    snap replaces visited rows by the closed-form best response (gap 0) and keeps the others."""
    from bilevel.equilibria import snap_to_best_response, starting_point
    from bilevel.game import build, extract
    from bilevel.tabular import kl_fit
    mdp = garnet(5, 2, 3, seed=3, gamma=0.9)
    bm = build(mdp, "PAL")
    pi = np.zeros((5, 2))
    pi[:, 0] = 1.0
    Phat = kl_fit(mdp.P, mdp.K, mdp.floor)
    Phat[:, 1] = np.roll(Phat[:, 1], 1, axis=-1)       # unvisited action: free for PAL
    Phat[0, 0] = np.roll(Phat[0, 0], 1)                 # a visited pair: not a best response
    for v, val in starting_point(bm, pi, Phat).items():
        v.set_value(val, skip_validation=True)
    assert follower_gap("PAL", mdp, pi, extract(bm)["model"]) > 1e-3
    snap_to_best_response(bm)
    after = extract(bm)["model"]
    assert follower_gap("PAL", mdp, pi, after) < 1e-12
    assert np.allclose(after[:, 1], Phat[:, 1])         # unvisited rows kept


def test_cli_rejects_negative_starts():
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(MDPS / "hidden_goal.yaml"),
                          "--starts", "-1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--starts" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("formulation", ["PAL", "MAL", "MAL_random_noise"])
def test_polish_mode_returns_certified_equilibria(hidden_goal, formulation):
    """The large-MDP IPOPT mode (no homotopy: follower-optimal starts straight to the active-set
    polish) still returns ends that pass the independent certificates, inside [0, J*]."""
    r = solve_formulation(hidden_goal, formulation, solver="ipopt", starts=3, ipopt_mode="polish")
    assert r.ok and r.details["ipopt_mode"] == "polish"
    J_star = float(hidden_goal.rho0 @ value_iteration(hidden_goal.P, hidden_goal.r, hidden_goal.gamma)[0])
    for eq in (r.low, r.high):
        assert eq.follower_gap < 1e-6
        assert -1e-6 <= eq.J <= J_star + 1e-6
    if formulation != "MAL":
        assert r.high.J == pytest.approx(J_star, abs=1e-3)


def test_an_end_failing_its_follower_certificate_is_snapped_and_reported(monkeypatch, hidden_goal):
    """End to end: when PAL's min end fails its follower certificate, solve_formulation snaps
    the model to the closed-form best response, re-certifies it (gap ~0), and reports it."""
    import dataclasses

    import bilevel.equilibria.mpec_route as eq
    from bilevel.equilibria import solve_formulation
    real_certify, real_snap = eq.certify, eq.snap_to_best_response
    calls, snaps = [], []

    def certify(bm, violation):
        calls.append(1)
        e = real_certify(bm, violation)
        if len(calls) == 2:        # 1: the leader optimum's check, 2: the min end
            return dataclasses.replace(e, follower_gap=1.0)
        return e

    def snap(bm):
        snaps.append(1)
        real_snap(bm)

    monkeypatch.setattr(eq, "certify", certify)
    monkeypatch.setattr(eq, "snap_to_best_response", snap)
    r = solve_formulation(hidden_goal, "PAL", solver="scip")
    assert r.ok and snaps == [1]
    assert list(r.details["snapped_to_best_response"]) == ["min"]
    assert r.low.follower_gap <= eq.FOLLOWER_GAP_TOL
    assert "snapped_to_best_response" in r.to_json()
