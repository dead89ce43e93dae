"""Exact equilibria against independent computations (numpy / scipy only, written here):
    J* = rho0.V*      the HiGHS occupancy LP and value iteration
    V^pi_Phat         (I - g P_pi)^{-1} r_pi,  r_pi(s) = sum_a pi(a|s) sum_t Phat(t|s,a) R(s,a,t)
    V*_Phat(s)        max over every deterministic pi of V^pi_Phat(s)  (brute force)
    P_eta             argmin_{q >= eta on K, sum q = 1} KL(p || q) = max(eta, p / lambda) on K
                      (lambda by root finding): the model follower's best response
Also SCIP vs IPOPT, the MPEC route's mechanics, failure reporting and the CLI. (The MAL worst
case against a brute force over deterministic policies: test_enumeration.py.)
"""
import dataclasses
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import rel_entr

import bilevel.equilibria.mpec_interval as mpec_interval
import bilevel.equilibria.mpec_route as mpec_route
from bilevel.equilibria import follower_gap, snap_to_best_response, solve_formulation, starting_point
from bilevel.equilibria.starts import random_starts, structured_starts
from bilevel.game import build, extract
from bilevel.mdp.garnet import garnet
from bilevel.mdp import load_mdp
from bilevel.mpec import MPECResult
from bilevel.tabular import kl_fit, occupancy_lp
from solvers.base import Status
from conftest import MDPS, ROOT, floored_fit

DECOY_EP, GOAL_EP, J_STAR, DECOY_J = 0.9875, 36.45, 73.96039604, 0.98503741


# ------------------------------------------------------------------ independent references

def evaluate(P, R, gamma, pi):
    """V^pi = (I - g P_pi)^{-1} r_pi in the model P (S,A,S) with rewards R (S,A,S)."""
    P_pi = np.einsum("...sa,sat->...st", pi, P)
    r_pi = np.einsum("...sa,sa->...s", pi, (P * R).sum(-1))
    return np.linalg.solve(np.eye(P.shape[0]) - gamma * P_pi, r_pi[..., None])[..., 0]


def deterministic(S, A):
    """Every deterministic policy as one-hot arrays, shape (A^S, S, A)."""
    return np.eye(A)[np.array(list(itertools.product(range(A), repeat=S)))]


def optimality_gap(P, R, gamma, pi):
    """max_s V*(s) - V^pi(s) with V* the elementwise max over all deterministic policies."""
    V_star = evaluate(P, R, gamma, deterministic(*pi.shape)).max(axis=0)
    return float(np.max(V_star - evaluate(P, R, gamma, pi)))


def true_return(mdp, pi):
    """J(pi, M) = rho0 . V^pi."""
    return float(mdp.rho0 @ evaluate(mdp.P, mdp.R, mdp.gamma, pi))


def value_iteration_return(mdp):
    """rho0 . V*, V <- max_a sum_t P (R + g V) (g^k below 1e-16 after the loop: g <= 0.99)."""
    V = np.zeros(mdp.n_states)
    for _ in range(4_000):
        V = (mdp.P * (mdp.R + mdp.gamma * V)).sum(-1).max(-1)
    return float(mdp.rho0 @ V)


def occupancy(mdp, pi):
    """mu(s,a) = pi(a|s) (1-g) [(I - g P_pi^T)^{-1} rho0](s)."""
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    d = (1 - mdp.gamma) * np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * P_pi.T, mdp.rho0)
    return d[:, None] * pi




def loss(mdp, Phat, nu):
    """l(Phat, nu) = sum nu(s,a) KL(P(.|s,a) || Phat(.|s,a))."""
    return float((nu * rel_entr(mdp.P, np.where(mdp.P > 0, Phat, 1.0)).sum(-1)).sum())


def leader(mdp, formulation, alpha, pi, Phat):
    """The leader objective to minimize (PAL, MAL, MAL + random noise; bilevel.game)."""
    mu = occupancy(mdp, pi)
    J_model = float(mdp.rho0 @ evaluate(Phat, mdp.R, mdp.gamma, pi))
    if formulation == "PAL":
        return -J_model
    if formulation == "MAL":
        return loss(mdp, Phat, mu)
    uniform = np.full(pi.shape, 1.0 / pi.shape[1])
    return loss(mdp, Phat, alpha * mu + (1 - alpha) * occupancy(mdp, uniform))


def fit_error(mdp, pi, Phat):
    """max |Phat - P_eta| over the pairs pi visits (0: the model follower's best response)."""
    return float(np.abs(Phat - floored_fit(mdp))[occupancy(mdp, pi) > 1e-9].max())


def assert_equilibrium(mdp, formulation, alpha, eq, leader_bound, scale=1.0):
    """The end recomputed from its arrays: J(pi, M) by a linear solve, the follower's best
    response (policy: optimal in Phat by brute force; model: Phat = P_eta on visited pairs),
    the leader objective within `leader_bound`."""
    pi, Phat = eq.policy, eq.model
    assert eq.J == pytest.approx(true_return(mdp, pi), abs=1e-8 * scale)
    if formulation == "PAL":
        assert fit_error(mdp, pi, Phat) < 1e-5
    else:
        assert optimality_gap(Phat, mdp.R, mdp.gamma, pi) < 1e-6 * scale
    assert leader(mdp, formulation, alpha, pi, Phat) <= leader_bound


def truthful_leader(mdp, formulation, alpha):
    """The leader objective at a known equilibrium (P_eta everywhere, a policy optimal in it):
    an upper bound on the leader optimum L*."""
    Peta = floored_fit(mdp)
    pols = deterministic(mdp.n_states, mdp.n_actions)
    pi = pols[np.argmax(evaluate(Peta, mdp.R, mdp.gamma, pols).sum(-1))]   # optimal everywhere
    assert optimality_gap(Peta, mdp.R, mdp.gamma, pi) < 1e-9
    return leader(mdp, formulation, alpha, pi, Peta)


# ------------------------------------------------------------------ hidden_goal, SCIP

@pytest.fixture(scope="module")
def scip_results(hidden_goal):
    return {f: solve_formulation(hidden_goal, f, solver="scip")
            for f in ("PAL", "MAL", "MAL_random_noise")}


def test_references_reproduce_the_hidden_goal_numbers(hidden_goal):
    """The references give the reference study's J* (goal) and J(decoy); so does the LP."""
    m = hidden_goal
    assert value_iteration_return(m) == pytest.approx(J_STAR, abs=1e-7)
    assert true_return(m, np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])) == pytest.approx(DECOY_J, abs=1e-7)
    assert occupancy_lp(m.P, m.r, m.rho0, m.gamma).J == pytest.approx(J_STAR, abs=1e-6)


def test_mal_interval_spans_decoy_to_goal_with_global_certificate(hidden_goal, scip_results):
    r = scip_results["MAL"]
    assert r.ok and r.certificate == "global"
    assert abs(r.low.episode_reward - DECOY_EP) < 0.05 and abs(r.high.episode_reward - GOAL_EP) < 0.05
    assert r.low.J == pytest.approx(DECOY_J, abs=1e-4)
    assert r.high.J == pytest.approx(value_iteration_return(hidden_goal), abs=1e-4)
    # the hiding equilibrium: the policy takes X in B, and the model is wrong exactly where the
    # policy never goes (true occupancy 0), so its data never corrects it
    assert r.low.policy[1].argmax() == 0
    mu = occupancy(hidden_goal, r.low.policy)
    wrong = rel_entr(hidden_goal.P, np.where(hidden_goal.P > 0, r.low.model, 1.0)).sum(-1) > 0.05
    assert (wrong & (mu == 0)).any() and not (wrong & (mu > 0)).any()


@pytest.mark.parametrize("formulation", ["PAL", "MAL_random_noise"])
def test_pal_and_the_random_noise_fix_sit_at_the_optimum(hidden_goal, scip_results, formulation):
    """[J*, J*], J* from the HiGHS occupancy LP and from value iteration (random noise: the
    default alpha 0.5)."""
    r, m = scip_results[formulation], hidden_goal
    assert r.ok and r.certificate == "global" and r.alpha == (0.5 if formulation != "PAL" else None)
    for J_star in (occupancy_lp(m.P, m.r, m.rho0, m.gamma).J, value_iteration_return(m)):
        assert (r.low.J, r.high.J) == pytest.approx((J_star, J_star), abs=1e-4)
    assert abs(r.low.episode_reward - GOAL_EP) < 0.05 and abs(r.high.episode_reward - GOAL_EP) < 0.05


@pytest.mark.parametrize("formulation", ["PAL", "MAL", "MAL_random_noise"])
def test_reported_ends_are_equilibria_by_brute_force(hidden_goal, scip_results, formulation):
    """Each end, recomputed from (policy, model): J by a linear solve; the follower best-responds
    (policy: no deterministic policy of Phat does better at any state; PAL's model: the floored
    fit on visited pairs); the leader does at least as well as at the truthful equilibrium
    (P_eta, a policy optimal in it), up to the band."""
    r = scip_results[formulation]
    bound = truthful_leader(hidden_goal, formulation, r.alpha) + r.tolerance + 1e-6
    for eq in (r.low, r.high):
        assert_equilibrium(hidden_goal, formulation, r.alpha, eq, bound, scale=100.0)


def test_follower_gap_matches_the_references(hidden_goal, scip_results):
    """follower_gap against the brute force (the decoy is 73 below the optimum in P) and, for
    PAL, against the excess loss of a blurred model over the floored fit."""
    m, eq = hidden_goal, scip_results["MAL"].low             # decoy policy, hiding model
    ref = optimality_gap(m.P, m.R, m.gamma, eq.policy)
    assert ref > 70.0 and follower_gap("MAL", m, eq.policy, m.P) == pytest.approx(ref, rel=1e-6)
    assert follower_gap("MAL", m, eq.policy, eq.model) == pytest.approx(
        optimality_gap(eq.model, m.R, m.gamma, eq.policy), abs=1e-7)
    blurred, mu = 0.5 * eq.model + 0.5 / 3, occupancy(m, eq.policy)
    ref = loss(m, blurred, mu) - loss(m, floored_fit(m), mu)
    assert ref > 1e-3 and follower_gap("PAL", m, eq.policy, blurred) == pytest.approx(ref, rel=1e-6)


def test_ipopt_agrees_with_scip_on_mal(hidden_goal, scip_results):
    r = solve_formulation(hidden_goal, "MAL", solver="ipopt", starts=2)
    s = scip_results["MAL"]
    assert r.ok and r.certificate == "local"
    assert (r.low.J, r.high.J) == pytest.approx((s.low.J, s.high.J), abs=1e-3)


def test_ergodic_variant_mal_still_hides():
    mdp = load_mdp(MDPS / "hidden_goal_ergodic.yaml")
    mal = solve_formulation(mdp, "MAL", solver="scip")
    J_star = occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma).J
    assert mal.ok and mal.certificate == "global"
    assert mal.low.J < 0.5 * J_star and mal.high.J == pytest.approx(J_star, rel=1e-4)
    assert optimality_gap(mal.low.model, mdp.R, mdp.gamma, mal.low.policy) < 1e-4


@pytest.mark.slow
def test_ergodic_variant_pal_does_not_hide():
    mdp = load_mdp(MDPS / "hidden_goal_ergodic.yaml")
    pal = solve_formulation(mdp, "PAL", solver="auto", time_limit=60)
    assert pal.ok and pal.low.J == pytest.approx(occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma).J, rel=1e-4)


# ------------------------------------------------------------------ random MDPs

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pal_interval_is_the_optimum_on_random_mdps(seed):
    """The theorem in the limit: PAL's interval is [J*, J*] (the exact route, --solver auto),
    J* from the occupancy LP and value iteration; each end a best-response pair."""
    mdp = garnet(4, 2, 3, seed=seed, gamma=0.9)
    r = solve_formulation(mdp, "PAL")
    J_lp = occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma).J
    assert J_lp == pytest.approx(value_iteration_return(mdp), abs=1e-7)
    assert r.ok and (r.low.J, r.high.J) == pytest.approx((J_lp, J_lp), abs=1e-7)
    for eq in (r.low, r.high):
        assert_equilibrium(mdp, "PAL", None, eq, leader_bound=-J_lp + 1e-4)


# ------------------------------------------------------------------ the MPEC route's mechanics

def test_failed_solve_is_reported_as_failed(hidden_goal):
    r = solve_formulation(hidden_goal, "MAL_agent_reward", alpha=0.999, solver="scip", time_limit=0.05)
    assert not r.ok and r.reason
    d = r.to_json()
    assert d["status"] == "failed" and "J" not in d and "equilibria" not in d


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


def start_arrays(bm, x0):
    """(pi, Phat) of an IPOPT start: its values loaded into the model and read back."""
    for v, val in x0.items():
        v.set_value(val, skip_validation=True)
    x = extract(bm)
    return x["policy"], x["model"]


@pytest.mark.parametrize("formulation", ["PAL", "MAL", "MAL_random_noise"])
def test_random_starts_are_follower_optimal_points(formulation):
    """Random IPOPT starts satisfy every constraint but the leader's: the follower best-responds
    (brute force over the 729 deterministic policies, or the floored fit on visited pairs) and
    the starts differ from each other."""
    mdp = garnet(6, 3, 3, seed=4, gamma=0.9)
    bm = build(mdp, formulation)
    policies = []
    for x0 in random_starts(bm, 4, seed=0):
        pi, Phat = start_arrays(bm, x0)
        if formulation == "PAL":
            assert fit_error(mdp, pi, Phat) < 1e-9
        else:
            assert optimality_gap(Phat, mdp.R, mdp.gamma, pi) < 1e-8
        policies.append(pi)
    assert max(np.abs(policies[0] - p).max() for p in policies[1:]) > 1e-3


@pytest.mark.parametrize("formulation", ["PAL", "MAL", "MAL_agent_reward"])
def test_polish_only_structured_starts_are_follower_optima(formulation):
    """The polish-only mode starts from follower optima only (the polish keeps a start's
    complementarity branch): every structured start best-responds (the floored fit on visited
    pairs for PAL, a zero optimality gap in Phat for the MAL family). The full set, used with the
    homotopy, holds a start that does not on this MDP for the MAL family (the uniform policy), so
    the check is not empty."""
    mdp = garnet(5, 3, 2, seed=0, support="all", initial="first")
    bm = build(mdp, formulation)

    def gaps(starts):
        out = []
        for x0 in starts:
            pi, Phat = start_arrays(bm, x0)
            out.append(fit_error(mdp, pi, Phat) if formulation == "PAL"
                       else optimality_gap(Phat, mdp.R, mdp.gamma, pi))
        return out

    assert max(gaps(structured_starts(bm, follower_optimal=True))) < 1e-8
    if formulation != "PAL":
        assert max(gaps(structured_starts(bm))) > 1e-3


def test_failed_end_search_falls_back_to_the_leader_optimum(monkeypatch):
    """If no IPOPT start of an interval step converges, the end is the leader-optimal point
    (an equilibrium in the band: optimal in its model by brute force), and it is reported."""
    real, calls = mpec_interval._ipopt_best, []

    def failing_ends(*args):
        calls.append(1)
        if len(calls) > 1:   # the first call is the leader optimum, then the min / max steps
            return MPECResult(Status.INFEASIBLE, None, None, message="forced failure")
        return real(*args)

    monkeypatch.setattr(mpec_interval, "_ipopt_best", failing_ends)
    mdp = garnet(4, 2, 2, seed=1, gamma=0.9)
    r = solve_formulation(mdp, "MAL", solver="ipopt", starts=1)
    assert r.ok and r.low.J == pytest.approx(r.high.J)
    assert r.low.J == pytest.approx(true_return(mdp, r.low.policy), abs=1e-9)
    assert optimality_gap(r.low.model, mdp.R, mdp.gamma, r.low.policy) < 1e-6
    assert set(r.details["ends_at_leader_optimum"]) == {"min", "max"}
    assert "forced failure" in r.to_json()["ends_at_leader_optimum"]["min"]


def test_snap_to_best_response_makes_pal_follower_exact():
    """A PAL model that deviates from the fit on a visited pair has a positive excess loss; the
    snap replaces visited rows by the floored fit and keeps the others."""
    mdp = garnet(5, 2, 3, seed=3, gamma=0.9)
    bm = build(mdp, "PAL")
    pi = np.zeros((5, 2))
    pi[:, 0] = 1.0
    Phat = kl_fit(mdp.P, mdp.K, mdp.floor)
    Phat[:, 1] = np.roll(Phat[:, 1], 1, axis=-1)       # unvisited action: free for PAL
    Phat[0, 0] = np.roll(Phat[0, 0], 1)                 # a visited pair: not a best response
    for v, val in starting_point(bm, pi, Phat).items():
        v.set_value(val, skip_validation=True)
    mu, fit = occupancy(mdp, pi), floored_fit(mdp)
    assert loss(mdp, extract(bm)["model"], mu) - loss(mdp, fit, mu) > 1e-3
    snap_to_best_response(bm)
    after = extract(bm)["model"]
    assert np.abs(after[:, 0] - fit[:, 0]).max() < 1e-9    # every state visited: the fit
    assert np.allclose(after[:, 1], Phat[:, 1])         # unvisited rows kept


@pytest.mark.parametrize("formulation", ["PAL", "MAL", "MAL_random_noise"])
def test_polish_mode_returns_certified_equilibria(hidden_goal, formulation):
    """The large-MDP IPOPT mode (no homotopy: follower-optimal starts straight to the active-set
    polish) still returns equilibria (brute force), inside [0, J*]."""
    r = solve_formulation(hidden_goal, formulation, solver="ipopt", starts=3, ipopt_mode="polish")
    assert r.ok and r.details["ipopt_mode"] == "polish"
    J_star = value_iteration_return(hidden_goal)
    bound = truthful_leader(hidden_goal, formulation, r.alpha) + r.tolerance + 1e-6
    for eq in (r.low, r.high):
        assert_equilibrium(hidden_goal, formulation, r.alpha, eq, bound, scale=100.0)
        assert -1e-6 <= eq.J <= J_star + 1e-6
    if formulation != "MAL":
        assert r.high.J == pytest.approx(J_star, abs=1e-3)


def test_an_end_failing_its_follower_certificate_is_snapped_and_reported(monkeypatch, hidden_goal):
    """End to end: when PAL's min end fails its follower certificate, solve_formulation snaps
    the model to the floored fit on visited pairs, and reports it."""
    real_certify, real_snap = mpec_route.certify, mpec_route.snap_to_best_response
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

    monkeypatch.setattr(mpec_interval, "certify", certify)      # the leader step's check
    monkeypatch.setattr(mpec_route, "certify", certify)         # the ends'
    monkeypatch.setattr(mpec_route, "snap_to_best_response", snap)
    r = solve_formulation(hidden_goal, "PAL", solver="scip")
    assert r.ok and snaps == [1] and list(r.details["snapped_to_best_response"]) == ["min"]
    assert fit_error(hidden_goal, r.low.policy, r.low.model) < 1e-9
    assert r.low.J == pytest.approx(value_iteration_return(hidden_goal), abs=1e-4)
    assert "snapped_to_best_response" in r.to_json()


# ------------------------------------------------------------------ the command

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
    assert {"policy", "model", "model_loss", "J_model", "follower_gap"} <= set(eq)
    assert np.array(eq["policy"]).shape == (3, 2) and np.array(eq["model"]).shape == (3, 2, 3)
    assert "[solve]" in out.stderr        # progress goes to stderr, never into the JSON


@pytest.mark.parametrize("args,named", [(["--formulations", "PAL,XYZ"], "XYZ"),
                                        (["--starts", "-1"], "--starts")])
def test_cli_rejects_bad_arguments(args, named):
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(MDPS / "hidden_goal.yaml"), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr
