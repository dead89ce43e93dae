"""`occupancy: average` (T-step episodes): the averaged occupancy and the T-step return against
enumeration of every trajectory, the nonstationary return range against every nonstationary
deterministic policy, the MPEC's time-expanded flow against the arrays, and the exact routes
against brute force over deterministic policies with SCIP's enumeration route."""
from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from bilevel.equilibria.routing import solve_formulation
from bilevel.mdp.garnet import garnet
from bilevel.mdp.io import load_mdp, mdp_from_arrays, mdp_to_arrays
from bilevel.mdp.model import MDPError
from bilevel.tabular.occupancy import averaged_occupancy, finite_return_range
from conftest import MDPS, ROOT


def trajectories(P, rho0, pi, T):
    """(probability, [(s_0, a_0), ..., (s_{T-1}, a_{T-1})]) of every trajectory of T steps."""
    S, A, _ = P.shape
    for seq in itertools.product(range(S), range(A), repeat=T):
        pairs = list(zip(seq[0::2], seq[1::2]))
        p = rho0[pairs[0][0]]
        for t, (s, a) in enumerate(pairs):
            p *= pi[s, a]
            if t + 1 < T:
                p *= P[s, a, pairs[t + 1][0]]
        if p > 0:
            yield p, pairs


@pytest.mark.parametrize("seed", range(3))
def test_averaged_occupancy_and_T_step_return_against_every_trajectory(seed):
    mdp = garnet(3, 2, 2, seed=seed, gamma=0.9).with_(horizon=4, occupancy="average")
    pi = np.random.default_rng(seed).dirichlet(np.ones(2), size=3)
    mu, J = np.zeros((3, 2)), 0.0
    for p, pairs in trajectories(mdp.P, mdp.rho0, pi, 4):
        for s, a in pairs:
            mu[s, a] += p / 4
            J += p * mdp.r[s, a]
    assert np.allclose(averaged_occupancy(mdp.P, mdp.rho0, pi, 4), mu, atol=1e-14)
    assert np.allclose(mdp.data_occupancy(pi), mu, atol=1e-14)
    assert mdp.true_return(pi) == pytest.approx(J, abs=1e-12)


def test_return_range_is_the_extremes_over_nonstationary_deterministic_policies():
    mdp = garnet(3, 2, 2, seed=4, gamma=0.9)
    T, S, A = 3, 3, 2
    allowed = np.array([[True, True], [True, False], [True, True]])
    values = []
    for plan in itertools.product(*[[a for a in range(A) if allowed[s, a]] for s in range(S)] * T):
        pi_t = [np.eye(A)[list(plan[t * S:(t + 1) * S])] for t in range(T)]
        d, J = mdp.rho0.copy(), 0.0
        for t in range(T):
            J += float(d @ (pi_t[t] * mdp.r).sum(axis=1))
            d = d @ np.einsum("sa,sat->st", pi_t[t], mdp.P)
        values.append(J)
    lo, hi = finite_return_range(mdp.P, mdp.r, mdp.rho0, T, allowed)
    assert lo == pytest.approx(min(values), abs=1e-12) and hi == pytest.approx(max(values), abs=1e-12)


def test_the_mpec_flow_is_the_averaged_occupancy():
    import pyomo.environ as pyo
    from bilevel.equilibria.starts import starting_point
    from bilevel.game.formulations import build
    mdp = garnet(4, 2, 2, seed=1, gamma=0.9).with_(horizon=3, occupancy="average")
    bm = build(mdp, "MAL_agent_true_reward", alpha=0.5)
    pi = np.random.default_rng(0).dirichlet(np.ones(2), size=4)
    for v, x in starting_point(bm, pi).items():
        v.set_value(x, skip_validation=True)
    m = bm.model
    for name in ("visit_flow", "flow", "mu_policy"):
        for c in getattr(m, name).values():
            assert abs(pyo.value(c.body) - pyo.value(c.upper)) < 1e-14
    assert pyo.value(m.true_return) == pytest.approx(mdp.true_return(pi), abs=1e-12)


@pytest.mark.parametrize("S,b,seed,T", [(3, 2, 0, 3), (3, 1, 7, 3), (3, 1, 9, 4), (3, 2, 2, 3),
                                         pytest.param(4, 2, 0, 4, marks=pytest.mark.slow),
                                         pytest.param(4, 2, 1, 5, marks=pytest.mark.slow)])
def test_mal_exact_route_against_scip_enumeration(S, b, seed, T):
    """Start in one state, T >= the live states (J_T and mu_T differ from the discounted game's,
    the reach does not): the exact route against SCIP's enumeration, which solves the MPEC (with
    the time-expanded flow) per deterministic policy."""
    mdp = garnet(S, 2, b, seed=seed, gamma=0.9, support="all", initial="first").with_(
        horizon=T, occupancy="average")
    exact = solve_formulation(mdp, "MAL", solver="exact")
    enum = solve_formulation(mdp, "MAL", solver="enumerate")
    assert exact.ok and enum.ok, (exact.reason, enum.reason)
    assert exact.solver == "exact"      # global, or local with the mixtures' proved gap
    assert exact.low.J == pytest.approx(enum.low.J, abs=1e-6)
    assert exact.high.J == pytest.approx(enum.high.J, abs=1e-6)
    for e in (exact.low, exact.high):
        assert e.J == pytest.approx(mdp.true_return(e.policy), abs=1e-12)


@pytest.mark.parametrize("b,seed", [(2, 0), (1, 7)])
def test_a_horizon_that_cuts_the_reach_has_no_exact_route(b, seed):
    """T = 2 < 3 live states: a fitted pair at the horizon leads to a state whose free model the
    leader may make optimistic. Here a policy the hiding check would reject is an equilibrium
    (SCIP's enumeration finds it), so the exact route declines and auto takes SCIP's MPEC,
    whose min end is the enumeration's."""
    from bilevel.equilibria.exact import has_exact_route
    mdp = garnet(3, 2, b, seed=seed, gamma=0.9, support="all", initial="first").with_(
        horizon=2, occupancy="average")
    assert not has_exact_route("MAL", mdp)
    auto = solve_formulation(mdp, "MAL")
    enum = solve_formulation(mdp, "MAL", solver="enumerate")
    assert auto.ok and enum.ok and auto.solver == "scip"
    assert auto.low.J == pytest.approx(enum.low.J, abs=1e-5)


def test_hidden_goal_table_under_average():
    """hidden_goal (T = 50 >= 2 live states: the same equilibria as discounted): every interval
    is the episode-reward column of the discounted table, proved."""
    mdp = load_mdp(MDPS / "hidden_goal.yaml").with_(occupancy="average")
    disc = load_mdp(MDPS / "hidden_goal.yaml")
    for f in ("PAL", "MAL", "MAL_random_noise"):
        a, d = solve_formulation(mdp, f), solve_formulation(disc, f)
        assert a.certificate == "global"
        assert a.low.J == pytest.approx(d.low.episode_reward, abs=1e-9)
        assert a.high.J == pytest.approx(d.high.episode_reward, abs=1e-9)


def test_occupancy_field_round_trips_and_bad_input_is_one_line(tmp_path):
    mdp = load_mdp(MDPS / "hidden_goal.yaml").with_(occupancy="average")
    assert mdp_from_arrays(mdp_to_arrays(mdp)).occupancy == "average"
    with pytest.raises(MDPError, match="occupancy: average needs a horizon"):
        garnet(3, 2, 2, seed=0).with_(occupancy="average")
    text = (MDPS / "hidden_goal.yaml").read_text().replace("horizon: 50", "horizon: 50\noccupancy: avg")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {bad}: occupancy: must be one of discounted, average, got 'avg'"]
    no_horizon = tmp_path / "nohorizon.yaml"
    no_horizon.write_text((MDPS / "hidden_goal.yaml").read_text().replace("horizon: 50\n", ""))
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(no_horizon), "--occupancy",
                          "average"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "needs a horizon" in out.stderr and "Traceback" not in out.stderr


def test_t_step_episodes_estimate_the_averaged_occupancy():
    """The trainers' data under `occupancy: average`: weight 1/T per step of T-step episodes."""
    from bilevel.rl import learners as L
    from bilevel.rl.env import BatchStepper
    m = load_mdp(MDPS / "hidden_goal.yaml").with_(horizon=5, occupancy="average")
    pi = np.array([[0.5, 0.5], [0.7, 0.3], [0.5, 0.5]])
    ro = BatchStepper.of(m, rng=4).rollout(pi, 20_000)
    mu_hat = L.occupancy_estimate(ro, 3, 2, m.gamma, horizon=5)
    np.testing.assert_allclose(mu_hat[:2], m.data_occupancy(pi)[:2], atol=0.01)


def test_an_average_run_is_verified_against_average_intervals_only(tmp_path):
    from bilevel.rl.inner_outer import TrainConfig, train_inner_outer
    from bilevel.verify.check import VerifyInputError
    from bilevel.verify.runs import verify_runs
    mdp = load_mdp(MDPS / "hidden_goal.yaml").with_(occupancy="average")
    rec = train_inner_outer(mdp, "MAL", 0, TrainConfig(), mdp_path=str(MDPS / "hidden_goal.yaml"))
    assert rec.occupancy == "average"
    assert rec.final["J"] == pytest.approx(mdp.true_return(np.asarray(rec.policy)), abs=1e-12)
    [check] = verify_runs([("run.json", rec)])
    assert check.ok and 0.98 < check.J_interval[0] < 1.0 and check.J_interval[1] == pytest.approx(36.45)
    discounted = solve_formulation(load_mdp(MDPS / "hidden_goal.yaml"), "MAL")
    doc = {"mdp": {"name": "hidden_goal"}, "optimal": {"J": 73.96},
           "formulations": {"MAL": discounted.to_json()}}
    with pytest.raises(VerifyInputError, match="equilibria are for occupancy discounted"):
        verify_runs([("run.json", rec)], doc)
    with pytest.raises(VerifyInputError, match="--occupancy asks for discounted"):
        verify_runs([("run.json", rec)], occupancy="discounted")


def test_the_report_under_average_labels_J_as_the_T_step_return(tmp_path):
    """`report --occupancy average`: the table's J column is the T-step return, equal to the
    episode-reward column cell by cell (hidden_goal), and the MDP section says so."""
    from bilevel.report.cli import write_report
    data = write_report(str(MDPS / "hidden_goal.yaml"), tmp_path, sweep_alphas=(),
                        occupancy="average")
    text = (tmp_path / "report.md").read_text()
    assert "exact J (T-step return) [worst, best]" in text and "Occupancy: average" in text
    assert data["mdp"]["occupancy"] == "average"
    for f, eq in data["formulations"].items():
        assert eq["J"]["min"] == pytest.approx(eq["episode_reward"]["min"], abs=1e-12), f
        assert eq["J"]["max"] == pytest.approx(eq["episode_reward"]["max"], abs=1e-12), f


def test_the_agent_reward_point_that_moves_under_average():
    """README: at alpha 0.5 the discounted game's MAL + agent reward equilibrium is an
    optimistic lie (episode reward 2.578), the averaged game's is the decoy (0.9875); at 0.9999
    both are the optimum (36.45)."""
    disc = load_mdp(MDPS / "hidden_goal.yaml")
    avg = disc.with_(occupancy="average")
    for alpha, d_ep, a_J in ((0.5, 2.578, 0.9875), (0.9999, 36.45, 36.45)):
        d, a = (solve_formulation(m, "MAL_agent_reward", alpha=alpha) for m in (disc, avg))
        assert d.ok and a.ok
        assert d.low.episode_reward == pytest.approx(d_ep, abs=5e-4) == d.high.episode_reward
        assert a.low.J == pytest.approx(a_J, abs=5e-4) and a.high.J == pytest.approx(a_J, abs=5e-4)
