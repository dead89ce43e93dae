"""Interval certificates that do not trust the leader step (hidden_goal, small and fast):
every reported end passes the band after any repair, an equilibrium of an interval step that
beats L* replaces it and the interval is recomputed, and a global end that misses the follower
certificate only on tolerance is polished instead of dropped."""
import numpy as np
import pytest

import bilevel.equilibria as eq
import bilevel.equilibria.mpec_interval as mpec_interval
import bilevel.equilibria.mpec_route as mpec_route
from bilevel.equilibria.starts import starting_point
from bilevel.game import BilevelModel
from bilevel.mpec import MPECResult
from bilevel.tabular import kl_fit, value_iteration
from solvers.base import Status
from solvers.scip import Scip

A, B, C = 0, 1, 2       # hidden_goal's states
X, Y = 0, 1             # ... and actions


@pytest.fixture(scope="module")
def truth(hidden_goal):
    """J* and PAL's true leader optimum -J(pi*, P_eta) (the interval is [J*, J*])."""
    mdp = hidden_goal
    V, pi_star = value_iteration(mdp.P, mdp.r, mdp.gamma)
    J_star = float(mdp.rho0 @ V)
    L_star = eq.leader_value("PAL", mdp, pi_star, kl_fit(mdp.P, mdp.K, mdp.floor), None)
    assert J_star == pytest.approx(73.9603960396, abs=1e-6)
    return J_star, L_star


def decoy_policy():
    pi = np.full((3, 2), 0.5)
    pi[A] = np.eye(2)[Y]
    pi[B] = np.eye(2)[X]      # the decoy: X in B ends the episode with reward about 1
    return pi


def fitted(mdp):
    return kl_fit(mdp.P, mdp.K, mdp.floor)


def over_promising(mdp):
    """P_eta, except that B-X claims C (reward 1) almost surely: not the model follower's best
    response on a visited pair, and a better leader value than the fit's."""
    Phat = fitted(mdp)
    Phat[B, X] = [mdp.floor, mdp.floor, 1.0 - 2.0 * mdp.floor]
    return Phat


def leader_point(mdp, m, formulation, Phat, certificate="local", policy=None):
    """Load (policy (default: the decoy), Phat) into the model and return it as a leader
    step's result."""
    policy = decoy_policy() if policy is None else policy
    bm = BilevelModel(formulation, mdp, m, None, "")
    point = starting_point(bm, policy, Phat)
    for v, x in point.items():
        v.set_value(x, skip_validation=True)
    L = eq.leader_value(formulation, mdp, policy, Phat, None)
    status = Status.OPTIMAL if certificate == "global" else Status.LOCALLY_OPTIMAL
    return MPECResult(status, L, point, ((L, point),), 1, 1, 0.0, certificate=certificate,
                      gap=0.0 if certificate == "global" else None,
                      bound=L if certificate == "global" else None, message="planted leader point")


def plant_ipopt(monkeypatch, mdp, Phat, fail_min=True, fail_max=False):
    """IPOPT: the leader step returns the decoy with `Phat` (a poor local point); the min and /
    or max steps find nothing (so the leader point stands in for them)."""
    real, calls = mpec_interval._ipopt_best, []

    def fake(m, backend, reduction, kw, warm_points, sense, warm_schedule):
        calls.append(sense)
        if len(calls) == 1:
            return leader_point(mdp, m, "PAL", Phat)
        if (fail_min and sense == mpec_route.pyo.minimize) or (fail_max and sense == mpec_route.pyo.maximize):
            return MPECResult(Status.INFEASIBLE, None, None, message="forced failure")
        return real(m, backend, reduction, kw, warm_points, sense, warm_schedule)

    monkeypatch.setattr(mpec_interval, "_ipopt_best", fake)
    return calls


def test_an_end_that_beats_the_leader_optimum_replaces_it(monkeypatch, hidden_goal, truth):
    """The leader step stops at a poor local point (the over-promised decoy, L = -1.0); the min
    step fails, so that point stands in and is snapped (its leader value leaves the band); the
    max step finds the goal, whose leader value beats L* by far. L* is replaced and the interval
    recomputed: PAL's true interval [J*, J*] at the true leader optimum."""
    J_star, L_star = truth
    plant_ipopt(monkeypatch, hidden_goal, over_promising(hidden_goal))
    r = eq.solve_formulation(hidden_goal, "PAL", solver="ipopt", starts=1, ipopt_mode="polish")
    assert r.ok, r.reason
    assert r.leader_objective == pytest.approx(L_star, abs=1e-6)
    # within the band's reach of J* (IPOPT's ends keep ~1e-7 of the other action: J*(1 - 3e-7))
    assert r.low.J == pytest.approx(J_star, abs=1e-4) and r.high.J == pytest.approx(J_star, abs=1e-4)
    [step] = r.details["leader_optimum_improved"]
    assert step["old"] == pytest.approx(-1.0000731753, abs=1e-6)
    assert step["new"] == pytest.approx(L_star, abs=1e-6) and step["found_by"] == "max"
    for end in (r.low, r.high):
        assert end.follower_gap <= eq.FOLLOWER_GAP_TOL
        assert end.leader_objective <= r.leader_objective + r.tolerance
    assert r.certificate == "local"


def test_an_end_snapped_out_of_the_band_is_never_reported_as_solved(monkeypatch, hidden_goal):
    """Both interval steps fail, so the leader point stands in for both ends; it is not a best
    response, and snapping it raises its leader value from -1.0 to -0.985, far above
    L* + tol: the solve fails and says why."""
    plant_ipopt(monkeypatch, hidden_goal, over_promising(hidden_goal), fail_max=True)
    r = eq.solve_formulation(hidden_goal, "PAL", solver="ipopt", starts=1, ipopt_mode="polish")
    assert not r.ok
    assert "snap" in r.reason and "above L* + tol" in r.reason
    assert "leader_optimum_improved" not in r.details


def test_an_end_inside_the_band_after_its_snap_is_reported(monkeypatch, hidden_goal):
    """The same, with a leader point that is already the fit (an exact equilibrium): the ends
    are the leader point, in the band, and the solve succeeds at the decoy."""
    plant_ipopt(monkeypatch, hidden_goal, fitted(hidden_goal), fail_max=True)
    r = eq.solve_formulation(hidden_goal, "PAL", solver="ipopt", starts=1, ipopt_mode="polish")
    assert r.ok, r.reason
    assert r.low.J == pytest.approx(r.high.J) and r.low.J == pytest.approx(0.98503741, abs=1e-6)
    assert set(r.details["ends_at_leader_optimum"]) == {"min", "max"}


def test_a_global_leader_optimum_that_is_beaten_is_downgraded(monkeypatch, hidden_goal, truth):
    """MAL, SCIP: the leader step claims a proven optimum at the goal policy with a model that
    is off on a visited pair (loss 2e-3); the min step's hiding equilibrium (loss ~0) beats it.
    L* is replaced, both ends are recomputed by SCIP in the new band (the decoy and the goal),
    and the certificate is local with the reason in details."""
    J_star, _ = truth
    mdp = hidden_goal
    _, pi_star = value_iteration(mdp.P, mdp.r, mdp.gamma)
    off = fitted(mdp)
    off[B, Y] = 0.9 * off[B, Y] + 0.1 * np.eye(3)[C]
    real, calls = mpec_route.solve_mpec, []

    def fake(m, reduction, backend, **kw):
        if isinstance(backend, Scip):
            calls.append(1)
            if len(calls) == 1:
                return leader_point(mdp, m, "MAL", off, certificate="global", policy=pi_star)
        return real(m, reduction, backend, **kw)

    monkeypatch.setattr(mpec_interval, "solve_mpec", fake)     # the leader and end steps
    monkeypatch.setattr(mpec_route, "solve_mpec", fake)        # the descent, the polish
    r = eq.solve_formulation(mdp, "MAL", solver="scip")
    assert r.ok, r.reason
    assert r.certificate == "local" and r.details["certificate_downgraded"]
    [step] = r.details["leader_optimum_improved"]
    assert step["old"] == pytest.approx(0.00208832704, abs=1e-9) and step["found_by"] == "min"
    assert step["new"] < 1e-5 and r.leader_objective == step["new"]
    assert r.low.J == pytest.approx(0.98503741, abs=1e-6) and r.high.J == pytest.approx(J_star, abs=1e-6)
    assert len(calls) == 4          # leader, min (beats L*); then min, max in the new band


def _tie_breaking_model(mdp, Phat, excess):
    """Phat with B-Y moved toward A until Y beats X in B by about `excess` (in Phat)."""
    def margin(lam):
        Q = model_Q(mdp, with_BY(Phat, lam))
        return Q[B, Y] - Q[B, X]

    lo, hi = 0.0, 1.0
    assert margin(lo) < 0 < margin(hi)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if margin(mid) < excess else (lo, mid)
    return with_BY(Phat, hi)


def with_BY(Phat, lam):
    out = Phat.copy()
    out[B, Y] = (1.0 - lam) * Phat[B, Y] + lam * np.eye(3)[A]
    return out


def model_Q(mdp, Phat):
    rhat = eq.model_reward(mdp, Phat)
    V, _ = value_iteration(Phat, rhat, mdp.gamma, tol=1e-12)
    return rhat + mdp.gamma * Phat @ V


def test_a_global_end_off_only_on_tolerance_is_polished(monkeypatch, hidden_goal):
    """MAL, SCIP: the min end (decoy, hiding model) is handed back with the hiding row moved
    just past the tie, so the decoy misses the follower certificate by ~1e-5. The end is not
    dropped: the policy is kept, IPOPT moves the model back to an exact follower optimum, and
    the polished end (same J, so still within SCIP's proof) is reported."""
    real, calls = mpec_route.solve_mpec, []

    def fake(m, reduction, backend, **kw):
        res = real(m, reduction, backend, **kw)
        if isinstance(backend, Scip):
            calls.append(1)
            if len(calls) == 2:      # the min step: perturb the model the solver returned
                Phat = np.array([[[m.Phat[s, a, t].value if (s, a, t) in m.KSET else 0.0
                                   for t in range(3)] for a in range(2)] for s in range(2)])
                assert np.argmax([m.pi[B, a].value for a in range(2)]) == X
                full = np.zeros((3, 2, 3))
                full[:2] = Phat
                full[C, :, C] = 1.0
                moved = _tie_breaking_model(hidden_goal, full, 1e-5)
                for (s, a, t) in m.KSET:
                    m.Phat[s, a, t].set_value(float(moved[s, a, t]), skip_validation=True)
        return res

    monkeypatch.setattr(mpec_interval, "solve_mpec", fake)
    r = eq.solve_formulation(hidden_goal, "MAL", solver="scip")
    assert r.ok, r.reason
    polished = r.details["polished_to_follower_optimum"]["min"]
    assert eq.FOLLOWER_GAP_TOL < polished["follower_gap_before"] <= 1e-3
    assert r.low.follower_gap <= eq.FOLLOWER_GAP_TOL
    assert r.low.J == pytest.approx(0.98503741, abs=1e-6)          # the decoy, kept
    assert r.low.leader_objective <= r.leader_objective + r.tolerance + 1e-5
    assert r.certificate == "global"


def test_polish_fixes_the_policy_and_moves_the_model(hidden_goal):
    """The helper on its own: rounded policy, model moved to make it an exact follower optimum."""
    from bilevel.game import build
    mdp = hidden_goal
    bm = build(mdp, "MAL")
    pi = decoy_policy()
    pi[B] = [0.9999, 0.0001]
    hiding = fitted(mdp)
    hiding[B, Y] = [mdp.floor, mdp.floor, 1.0 - 2.0 * mdp.floor]      # B-Y claims C: X is best
    Phat = _tie_breaking_model(mdp, hiding, 1e-5)
    for v, x in starting_point(bm, pi, Phat).items():
        v.set_value(x, skip_validation=True)
    before = eq.certify(bm, None)
    assert eq.FOLLOWER_GAP_TOL < before.follower_gap <= 1e-3
    mpec_route.set_objective(bm.model, bm.model.true_return)
    after = mpec_route._polish_policy_follower(bm, None)
    assert after is not None and after.follower_gap <= eq.FOLLOWER_GAP_TOL
    assert np.array_equal(after.policy[:2], decoy_policy()[:2])
    assert not any(bm.model.pi[s, a].fixed for (s, a) in bm.model.SA)
