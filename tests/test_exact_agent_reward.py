"""bilevel.equilibria.exact.agent_reward: the MINLP route for MAL + agent reward (binary follower policy),
checked against the enumeration of deterministic policies and from arrays."""

import numpy as np
import pyomo.environ as pyo
import pytest

from bilevel.equilibria.enumeration import enumerate_interval
from bilevel.equilibria import FEASIBILITY_SLACK, FOLLOWER_GAP_TOL, model_reward
from bilevel.equilibria.exact.agent_reward import agent_reward_interval
from bilevel.equilibria.exact.minlp import (build_minlp, minlp_bounds,
                                            point_from_arrays)
from bilevel.mdp.garnet import garnet
from bilevel.tabular import policy_return, random_model, value_iteration

ALPHA = 0.9999


def _check_ends(mdp, res):
    """Both ends are certified equilibria of the reported band, numbers recomputed."""
    band = res.leader_objective + res.tolerance + FEASIBILITY_SLACK * max(1.0, abs(res.leader_objective))
    for end in (res.low, res.high):
        assert end.follower_gap <= FOLLOWER_GAP_TOL
        assert end.leader_objective <= band
        assert end.J == pytest.approx(policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, end.policy),
                                      abs=1e-9)
        live = ~mdp.terminal
        assert set(np.unique(end.policy[live])) <= {0.0, 1.0}
    assert res.low.J <= res.high.J


def test_hidden_goal_matches_the_enumeration(hidden_goal):
    enum = enumerate_interval(hidden_goal, "MAL_agent_reward", ALPHA)
    res = agent_reward_interval(hidden_goal, ALPHA, time_limit=30.0)
    assert res.ok and res.solver == "exact-minlp"
    assert res.certificate == "global" and enum.certificate == "global"
    assert res.low.J == pytest.approx(73.96, abs=5e-3) and res.high.J == pytest.approx(73.96, abs=5e-3)
    assert res.low.J == pytest.approx(enum.low.J, abs=1e-9)
    assert res.high.J == pytest.approx(enum.high.J, abs=1e-9)
    assert res.leader_objective == pytest.approx(enum.leader_objective, abs=max(res.tolerance, enum.tolerance))
    steps = res.details["steps"]
    assert steps["leader"]["starts_accepted"] >= 1
    assert steps["min"]["accepted"] >= 1 and steps["max"]["accepted"] >= 1
    _check_ends(hidden_goal, res)


@pytest.mark.parametrize("seed,support", [(0, "true"), (1, "true"), (0, "neighbors"),
                                          (3, "neighbors"), (1, "all")])
def test_tiny_garnets_leader_optimum_matches_the_enumeration(seed, support):
    mdp = garnet(3, 2, 2, seed=seed, support=support)
    enum = enumerate_interval(mdp, "MAL_agent_reward", ALPHA)
    res = agent_reward_interval(mdp, ALPHA, time_limit=20.0)
    assert res.ok
    _check_ends(mdp, res)
    tol = max(res.tolerance, enum.tolerance) + FEASIBILITY_SLACK * max(1.0, abs(enum.leader_objective))
    if res.certificate == "global":
        # the enumeration's value is a certified equilibrium: a proved L* cannot lie above it
        assert res.leader_objective <= enum.leader_objective + tol
    if res.certificate == "global" and enum.certificate == "global":
        assert res.leader_objective == pytest.approx(enum.leader_objective, abs=tol)
        assert res.details["leader_objective_recomputed"] == pytest.approx(enum.leader_objective, abs=tol)


def test_no_global_certificate_without_proofs(hidden_goal):
    """A time limit too short to prove anything (0.05 s per step on garnet(16, 3, 2), whose
    leader step takes SCIP 0.2 s and whose min end the tree proves in 12-16 s): the ends stand,
    certified, but local. (On garnet(6, 3, 2) an idle machine proves all three steps within
    0.05 s each, give or take one HiGHS solve.)"""
    res = agent_reward_interval(garnet(16, 3, 2, seed=0, support="neighbors", initial="first"), ALPHA,
                                time_limit=0.05)
    assert res.ok and res.certificate == "local"
    assert res.details["certificate_downgraded"]
    assert any(s["status"] != "optimal" for s in res.details["steps"].values())


@pytest.mark.parametrize("support", ["true", "neighbors", "all"])
def test_every_equilibrium_is_a_point_of_the_minlp(hidden_goal, support):
    """The MINLP's rows (the simulation bound, the cone and its tangent planes among them) hold at
    (deterministic follower optimum, any floored model), so no equilibrium is cut off."""
    rng = np.random.default_rng(0)
    for mdp in (hidden_goal, garnet(5, 3, 2, seed=2, support=support, initial="first")):
        bm = build_minlp(mdp, ALPHA)
        m = bm.model
        for _ in range(10):
            Phat = random_model(mdp.K, mdp.floor, rng)
            lam = rng.random()
            Phat = lam * Phat + (1 - lam) * np.where(mdp.K, np.maximum(mdp.P, mdp.floor), 0.0)
            Phat /= Phat.sum(axis=-1, keepdims=True)
            Phat[mdp.terminal] = 0.0
            for s in np.flatnonzero(mdp.terminal):
                Phat[s, :, s] = 1.0
            _, pi = value_iteration(Phat, model_reward(mdp, Phat), mdp.gamma, tol=1e-13)
            point = point_from_arrays(bm, np.argmax(pi, axis=1), Phat)
            for v, x in point.items():
                v.set_value(x, skip_validation=True)
                lo, hi = v.bounds
                assert (lo is None or x >= lo - 1e-9) and (hi is None or x <= hi + 1e-9), v.name
            for c in m.component_data_objects(pyo.Constraint, active=True):
                body = pyo.value(c.body)
                scale = 1e-9 * max(1.0, abs(body))
                if c.has_lb():
                    assert body >= pyo.value(c.lower) - scale, c.name
                if c.has_ub():
                    assert body <= pyo.value(c.upper) + scale, c.name


def test_bounds_are_ordered_and_finite(hidden_goal):
    b = minlp_bounds(hidden_goal)
    live = ~hidden_goal.terminal
    assert np.all(b.V_lo[live] <= b.V_hi[live]) and np.all(np.isfinite(b.V_hi))
    assert np.all(b.kl_lo <= b.kl_hi) and np.all(b.w_hi >= 0) and np.all(b.nu_hi <= 1.0)
    # B (the start) is occupied at least (1 - g) rho0(B); A can be held forever (A, Y loops)
    assert b.nu_hi[1] >= (1 - hidden_goal.gamma) * hidden_goal.rho0[1]
    assert 0.9 < b.nu_hi[0] < 1.0


@pytest.mark.parametrize("branching", [1, 3])
def test_span_in_is_the_widest_spread_over_the_value_box(branching):
    """span_in(s,a) = max over V in [V_lo, V_hi] of max - min of R + g V over supp P(.|s,a):
    the spread is convex in V, so its max is at a vertex of the box of the support's values;
    enumerated here vertex by vertex. One successor: 0 (no lie on supp P is possible)."""
    import itertools
    mdp = garnet(6, 3, branching, seed=4, support="neighbors", initial="first")
    b = minlp_bounds(mdp)
    g = mdp.gamma
    for s in np.flatnonzero(~mdp.terminal):
        for a in range(mdp.n_actions):
            sup = np.flatnonzero(mdp.P[s, a] > 0)
            best = 0.0
            for corner in itertools.product(*[(b.V_lo[t], b.V_hi[t]) for t in sup]):
                f = mdp.R[s, a, sup] + g * np.where(mdp.terminal[sup], 0.0, corner)
                best = max(best, f.max() - f.min())
            assert b.span_in[s, a] == pytest.approx(best, rel=1e-8, abs=1e-8)
            assert branching > 1 or best == 0.0


def test_simulation_identity_and_the_pieces_of_its_bound(hidden_goal):
    """(1 - g) rho0 . V_Phat = sum mu (r + Delta) for a deterministic policy, and per pair
    Delta <= width_in TV(P, q) + width_out o with the widths of R + g V at the point (within
    the static span_in, span_out), KL(P || Phat) = KL(P || q) - log(1 - o): the pieces of the
    MINLP's simulation bound, on random floored models with the policy optimal in them."""
    from bilevel.tabular import kl_rows, occupancy, policy_evaluation
    rng = np.random.default_rng(1)
    for mdp in (hidden_goal, garnet(6, 3, 3, seed=4, support="neighbors", initial="first")):
        b = minlp_bounds(mdp)
        g = mdp.gamma
        for _ in range(20):
            Phat = random_model(mdp.K, mdp.floor, rng)
            Phat[mdp.terminal] = 0.0
            for s in np.flatnonzero(mdp.terminal):
                Phat[s, :, s] = 1.0
            _, pi = value_iteration(Phat, model_reward(mdp, Phat), mdp.gamma, tol=1e-13)
            V = policy_evaluation(Phat, model_reward(mdp, Phat), g, pi)
            mu = occupancy(mdp.P, mdp.rho0, g, pi)
            f = mdp.R + g * V[None, None, :]
            delta = np.einsum("sat,sat->sa", Phat - mdp.P, f)
            assert (1 - g) * mdp.rho0 @ V == pytest.approx(float(np.sum(mu * (mdp.r + delta))), abs=1e-9)
            kl = kl_rows(mdp.P, Phat)
            for s in np.flatnonzero(~mdp.terminal):
                for a in range(mdp.n_actions):
                    sup = mdp.P[s, a] > 0
                    o = Phat[s, a, ~sup].sum()
                    q = Phat[s, a, sup] / (1 - o)
                    tv = 0.5 * np.abs(q - mdp.P[s, a, sup]).sum()
                    kl_q = float(np.sum(mdp.P[s, a, sup] * np.log(mdp.P[s, a, sup] / q)))
                    assert kl[s, a] == pytest.approx(kl_q - np.log1p(-o), abs=1e-12)
                    assert tv <= np.sqrt(max(kl_q, 0.0) / 2) + 1e-12
                    f_sa = mdp.R[s, a] + g * np.where(mdp.terminal, 0.0, V)
                    width_in = f_sa[sup].max() - f_sa[sup].min()
                    out = mdp.K[s, a] & ~sup
                    width_out = max(0.0, f_sa[out].max() - f_sa[sup].min()) if out.any() else 0.0
                    assert delta[s, a] <= width_in * tv + width_out * o + 1e-9
                    assert width_in <= b.span_in[s, a] + 1e-9 and width_out <= b.span_out[s, a] + 1e-9


def test_the_minlp_refuses_the_averaged_occupancy(hidden_goal):
    """The MINLP's flow, loss weights and simulation bound are discounted: under `occupancy:
    average` `--solver exact` must not run it (it once did, and called the discounted leader
    optimum global), and takes the route of `auto` instead; its leader objective is the
    averaged one that the enumeration computes."""
    from bilevel.equilibria import solve_formulation
    avg = hidden_goal.with_(occupancy="average")
    with pytest.raises(ValueError, match="discounted"):
        build_minlp(avg, ALPHA)
    res = solve_formulation(avg, "MAL_agent_reward", ALPHA, solver="exact")
    enum = enumerate_interval(avg, "MAL_agent_reward", ALPHA)
    assert res.ok and res.solver != "exact-minlp"
    assert res.leader_objective == pytest.approx(enum.leader_objective, abs=1e-9)
    discounted = agent_reward_interval(hidden_goal, ALPHA, time_limit=30.0)
    assert abs(discounted.leader_objective - enum.leader_objective) > 1e-7


def test_auto_hands_ipopts_interval_to_the_minlp_which_proves_it():
    """A 5-state Garnet (243 policies): `auto` runs IPOPT's MPEC route, whose local low end (7.626)
    misses the band's 7.556, then the MINLP from IPOPT's ends, within its budget; that proves the
    same interval as `--solver exact` (no budget), and IPOPT's ends lie inside it. solve's route
    description names each route."""
    import bilevel.equilibria.routing as routing
    from bilevel.equilibria import solve_formulation
    from bilevel.solve import planned_route
    mdp = garnet(5, 3, 2, seed=0, support="all", initial="first")
    exact = solve_formulation(mdp, "MAL_agent_reward", ALPHA, solver="exact")
    assert exact.ok and exact.solver == "exact-minlp" and exact.certificate == "global"
    assert all(step["time_limit"] == 30.0 for step in exact.details["steps"].values())
    auto = solve_formulation(mdp, "MAL_agent_reward", ALPHA)
    assert auto.ok and auto.solver == "exact-minlp" and auto.certificate == "global"
    _check_ends(mdp, auto)
    assert auto.details["minlp_budget"] <= routing.AUTO_AGENT_REWARD_SECONDS
    assert (auto.low.J, auto.high.J) == pytest.approx((exact.low.J, exact.high.J), abs=1e-9)
    ipopt = auto.details["ipopt"]
    assert ipopt["certificate"] == "local"
    assert {c["how"] for c in auto.details["incumbents"]} >= {"IPOPT's min end", "IPOPT's max end"}
    for J in ipopt["J"]:
        assert exact.low.J - 1e-6 <= J <= exact.high.J + 1e-6
    assert ipopt["J"][0] > auto.low.J + 0.05
    assert planned_route(mdp, "MAL_agent_reward", "exact") == "binary-follower MINLP with SCIP"
    assert planned_route(mdp, "MAL_agent_reward") == \
        "MPEC with IPOPT, then the binary-follower MINLP with SCIP from its ends"
    assert planned_route(garnet(13, 3, 2, seed=0), "MAL_agent_reward") == "MPEC with IPOPT (local)"


def test_a_budget_caps_every_solve_and_a_better_ipopt_leader_keeps_its_interval(monkeypatch):
    """With a budget of 0 s every SCIP solve gets MIN_SOLVE_SECONDS, and the interval is still
    one of certified equilibria (local: this Garnet's min end takes SCIP over a minute).
    refined_by_minlp keeps an IPOPT interval whose leader value lies below such a local MINLP's
    band, and takes the MINLP's interval when it does not."""
    from dataclasses import replace
    import bilevel.equilibria.routing as routing
    from bilevel.equilibria.exact.agent_reward import MIN_SOLVE_SECONDS
    mdp = garnet(8, 3, 3, seed=0, support="neighbors", initial="first")
    res = agent_reward_interval(mdp, ALPHA, time_limit=30.0, budget=0.0)
    assert res.ok and res.certificate == "local"
    _check_ends(mdp, res)
    assert all(step["time_limit"] == MIN_SOLVE_SECONDS for step in res.details["steps"].values())
    monkeypatch.setattr(routing, "AUTO_AGENT_REWARD_SECONDS", 0.0)
    monkeypatch.setattr(routing, "AUTO_MINLP_MIN_SECONDS", 0.0)
    better = replace(res, solver="ipopt", leader_objective=res.leader_objective - 1.0, details={})
    kept = routing.refined_by_minlp(mdp, ALPHA, better, 30.0)
    assert kept.solver == "ipopt" and "lies below its band" in kept.details["minlp"]
    assert (kept.low.J, kept.high.J) == (res.low.J, res.high.J)
    worse = replace(res, solver="ipopt", leader_objective=res.leader_objective + 1.0, details={})
    taken = routing.refined_by_minlp(mdp, ALPHA, worse, 30.0)
    assert taken.solver == "exact-minlp" and taken.details["ipopt"]["J"] == [res.low.J, res.high.J]
    assert taken.low.J <= res.low.J and taken.high.J >= res.high.J


def test_solve_table_shows_the_minlps_proved_gaps_on_J(hidden_goal):
    """solve's certificate column for a MINLP row: the larger of the two ends' proved gaps on J,
    never the leader's gap (in leader units), and `inf` for an end without a bound."""
    import copy
    import io
    from bilevel.equilibria.document import solve_to_dict
    from bilevel.solve import print_table
    doc = solve_to_dict(hidden_goal, formulations=["MAL"])

    def cert_with(certificate, gaps):
        d = copy.deepcopy(doc)
        d["formulations"]["MAL"].update(solver="exact-minlp", certificate=certificate, proved_gap=gaps)
        buf = io.StringIO()
        print_table(hidden_goal, d, out=buf)
        return next(line for line in buf.getvalue().splitlines() if line.startswith("MAL "))

    row = cert_with("global", {"leader": 5e-6, "min": 0.0, "max": 0.0})
    assert "global" in row and "gap" not in row
    assert "local (gap 0.26)" in cert_with("local", {"leader": 5e-6, "min": 0.26, "max": 1e-15})
    assert "local (gap inf)" in cert_with("local", {"leader": 5e-6, "min": None, "max": 0.0})


def test_a_failed_ipopt_interval_leaves_the_minlps(monkeypatch):
    """refined_by_minlp after IPOPT failed: no starts from it, the MINLP's interval stands (its
    ends certified), and IPOPT's reason is kept in the details."""
    import bilevel.equilibria.routing as routing
    from bilevel.equilibria.interval import EquilibriumInterval
    monkeypatch.setattr(routing, "AUTO_AGENT_REWARD_SECONDS", 0.0)
    monkeypatch.setattr(routing, "AUTO_MINLP_MIN_SECONDS", 0.0)
    mdp = garnet(3, 3, 2, seed=1, support="all", initial="first")
    failed = EquilibriumInterval("MAL_agent_reward", "failed", reason="IPOPT: no start converged",
                                 alpha=ALPHA, solver="ipopt", seconds=1.0)
    res = routing.refined_by_minlp(mdp, ALPHA, failed, 30.0)
    assert res.ok and res.solver == "exact-minlp"
    _check_ends(mdp, res)
    assert res.details["ipopt"] == {"certificate": "none", "seconds": 1.0, "J": None,
                                    "reason": "IPOPT: no start converged"}
    assert not any(c["how"].startswith("IPOPT's") for c in res.details["incumbents"])
    assert res.seconds >= 1.0
