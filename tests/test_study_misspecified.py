"""The misspecified-class study: rows, maximum-likelihood returns against hand-pooled fits in plain
numpy, and (slow) the whole study on the aggregated trap."""
import itertools
import json

import numpy as np
import pytest
from scipy.optimize import brentq

from bilevel.mdp.io import load_mdp
from conftest import MDPS


# --------------------------------------------------------------------------- independent pieces

def policy_value(P, r, gamma, pi):
    """V^pi = (I - gamma P_pi)^-1 r_pi (a linear solve)."""
    P_pi = np.einsum("sa,sat->st", pi, P)
    return np.linalg.solve(np.eye(len(P)) - gamma * P_pi, (pi * r).sum(axis=1))


def expected(P, R):
    return (P * R).sum(axis=-1)


def optimum_by_enumeration(mdp):
    """max over deterministic policies of rho0 . V^pi (every policy evaluated by a solve)."""
    S, A = mdp.n_states, mdp.n_actions
    r = expected(mdp.P, mdp.R)
    return max(mdp.rho0 @ policy_value(mdp.P, r, mdp.gamma, np.eye(A)[list(acts)])
               for acts in itertools.product(range(A), repeat=S))


def discounted_occupancy(mdp, pi):
    """mu(s,a) = (1-gamma) d(s) pi(a|s), d^T = rho0^T (I - gamma P_pi)^-1."""
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    d = np.linalg.solve((np.eye(mdp.n_states) - mdp.gamma * P_pi).T, mdp.rho0)
    return (1 - mdp.gamma) * d[:, None] * pi


def water_fill(p, k, eta):
    """argmin_q KL(p || q), q >= eta on k, 0 off k: q = max(eta, p/lam), lam by brentq."""
    lam = brentq(lambda x: np.maximum(eta, p[k] / x).sum() - 1.0, 1e-9, 1e9, xtol=1e-15)
    q = np.zeros_like(p)
    q[k] = np.maximum(eta, p[k] / lam)
    return q


def pooled_fit(mdp, groups, mu):
    """The aggregated class's fit by hand: per (group, action) the water-filled fit of the
    mu-weighted mixture of the group's true rows (equal weights without data), on the union of the
    group's supports; terminal rows the self-loop."""
    A = mdp.n_actions
    Q = np.zeros_like(mdp.P)
    for t in np.flatnonzero(mdp.terminal):
        Q[t, :, t] = 1.0
    for g in groups:
        live = [s for s in g if not mdp.terminal[s]]
        for a in range(A if live else 0):
            w = np.array([mu[s, a] for s in live])
            w = w if w.sum() > 0 else np.ones(len(live))
            pbar = sum(wi * mdp.P[s, a] for wi, s in zip(w, live)) / w.sum()
            q = water_fill(pbar, np.any(mdp.K[live, a], axis=0), mdp.floor)
            for s in live:
                Q[s, a] = q
    return Q


def greedy_in(mdp, Q, iters=20000):
    """Value iteration in Q with rhat = sum_s' Q R; greedy with ties to the first action."""
    rhat = expected(Q, mdp.R)
    V = np.zeros(mdp.n_states)
    for _ in range(iters):
        V = (rhat + mdp.gamma * Q @ V).max(axis=1)
    q = rhat + mdp.gamma * Q @ V
    best = np.argmax(q >= q.max(axis=1, keepdims=True) - 1e-9, axis=1)
    return np.eye(mdp.n_actions)[best]


def true_J(mdp, pi):
    return float(mdp.rho0 @ policy_value(mdp.P, expected(mdp.P, mdp.R), mdp.gamma, pi))


def hand_ml_return(mdp, groups):
    """J(pi_0, M), pi_0 greedy in the pooled fit to the uniform policy's occupancy."""
    uniform = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    return true_J(mdp, greedy_in(mdp, pooled_fit(mdp, groups, discounted_occupancy(mdp, uniform))))


# --------------------------------------------------------------------------- fast tests

def test_partitions_keep_live_groups_and_rows_skip_duplicates():
    from bilevel.studies.misspecified import live_partition, study_rows
    hg = load_mdp(MDPS / "hidden_goal.yaml")            # A, B live; C terminal
    assert live_partition(hg, [[0, 1, 2]]) == ((0, 1), (2,))
    assert live_partition(hg, [[0, 2]]) is None
    rows = study_rows(1, 0)
    trap = [p for src, p in rows if src == "aggregated_trap.yaml"]
    # none, the file's [[left, right]], [[start, left, right]]; goal and pit stay alone
    assert trap == [None, ((1, 2), (0,), (3,), (4,)), ((0, 1, 2), (3,), (4,))]
    assert len(rows) == 3 + 2 + 4


@pytest.mark.parametrize("source, groups", [("garnet:1", [[0, 1], [2], [3]]),
                                            ("garnet:2", [[0, 1, 2, 3]]),
                                            ("aggregated_trap.yaml", [[1, 2], [0], [3], [4]])])
def test_maximum_likelihood_matches_the_hand_pooled_fit(source, groups):
    from bilevel.studies.misspecified import base_mdp, class_mdp, maximum_likelihood
    mdp = class_mdp(base_mdp(source, 0), groups)
    ml = maximum_likelihood(mdp)
    uniform = np.full((mdp.n_states, mdp.n_actions), 0.5)
    assert np.allclose(mdp.reference_fit(),
                       pooled_fit(mdp, groups, discounted_occupancy(mdp, uniform)), atol=1e-10)
    assert ml.J == pytest.approx(hand_ml_return(mdp, groups), abs=1e-8)
    assert ml.J <= optimum_by_enumeration(mdp) + 1e-9
    # iterated ML stops where the hand-pooled fit to its policy's data is greedy for it (a fixed
    # point), or on a cycle whose best return it reports
    pi = np.array(ml.iterated_policy)
    nxt = greedy_in(mdp, pooled_fit(mdp, groups, discounted_occupancy(mdp, pi)))
    assert ml.iterated_J == pytest.approx(true_J(mdp, pi), abs=1e-8)
    if ml.end == "fixed point":
        assert np.array_equal(nxt, pi)
    else:
        assert ml.end == "cycle" and ml.iterated_J == pytest.approx(max(ml.cycle_J))


def test_some_garnet_aggregation_misleads_plain_maximum_likelihood():
    """Not vacuous: a merged pair makes the ML policy worse than J* on a study Garnet (by hand)."""
    from bilevel.studies.misspecified import base_mdp, class_mdp
    groups = [[0, 1], [2], [3]]
    mdp = class_mdp(base_mdp("garnet:1", 0), groups)
    assert hand_ml_return(mdp, groups) < optimum_by_enumeration(mdp) - 0.1


# --------------------------------------------------------------------------- the whole study

@pytest.mark.slow
def test_misspecified_study_on_the_aggregated_trap(tmp_path):
    from bilevel.studies.cli import main
    out = tmp_path / "mis"
    rc = main(["misspecified", "--workers", "0", "--mdps", "1", "--time-limit", "10",
               "--out", str(out), "-q"])
    doc = json.loads((out / "misspecified.json").read_text())
    assert (out / "misspecified.png").exists()
    assert rc == (1 if doc["failed"] else 0)
    rows = {(r["mdp"], r["aggregation"]): r for r in doc["rows"]}
    assert len(rows) == 9
    trap = load_mdp(MDPS / "aggregated_trap.yaml")      # the file's class: [[left, right]]
    J_star = optimum_by_enumeration(trap)
    agg, tab = rows["aggregated_trap", "[[left,right]]"], rows["aggregated_trap", "none"]
    assert agg["J_star"] == pytest.approx(J_star, abs=1e-8)
    assert agg["ml_J"] == pytest.approx(hand_ml_return(trap, [[1, 2], [0], [3], [4]]), abs=1e-8)
    # the pooled X of left and right predicts the pit as often as the goal: ML never steps forward
    assert agg["ml_J"] < J_star - 0.5
    rn = agg["intervals"]["MAL_random_noise"]
    assert rn["ok"] and rn["J_min"] < J_star - 0.5
    for f in ("PAL", "MAL_random_noise", "MAL_agent_true_reward"):
        i = tab["intervals"][f]
        assert i["ok"] and i["J_min"] == pytest.approx(J_star, abs=1e-6)
    assert doc["summary"]["rows"] == 9
