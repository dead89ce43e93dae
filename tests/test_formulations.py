"""The formulation registry (bilevel.game): every name round-trips, and each formulation's leader
objective, data occupancy, follower best response and gap agree with computations written here
from the definitions (explicit linear solves, a CVXPY fit, brute force over deterministic
policies) and with its Pyomo MPEC evaluated at the same point."""
import itertools

import cvxpy as cp
import numpy as np
import pyomo.environ as pyo
import pytest

import bilevel.game as game
from bilevel.equilibria import equilibrium_tolerance, follower_gap, leader_value
from bilevel.equilibria.exact import EXACT_FORMULATIONS, has_exact_route
from bilevel.equilibria.exact.structure import forced_pairs
from bilevel.equilibria.routing import choose_solver
from bilevel.mdp.garnet import garnet
from bilevel.tabular import random_model, return_gap, uniform_occupancy

NAMES = ("PAL", "MAL", "MAL_agent_reward", "MAL_random_noise", "MAL_agent_true_reward")
ALPHAS = {"PAL": None, "MAL": None, "MAL_agent_reward": 0.7, "MAL_random_noise": 0.3,
          "MAL_agent_true_reward": 0.6}


# --------------------------------------------------------------------------- written from the definitions

def values(P, R, gamma, pi):
    """V^pi = (I - g P_pi)^-1 r_pi with P_pi(s,s') = sum_a pi P and r_pi(s) = sum_a pi sum_s' P R."""
    S, A, _ = P.shape
    P_pi = np.zeros((S, S))
    r_pi = np.zeros(S)
    for s in range(S):
        for a in range(A):
            P_pi[s] += pi[s, a] * P[s, a]
            r_pi[s] += pi[s, a] * float(P[s, a] @ R[s, a])
    return np.linalg.solve(np.eye(S) - gamma * P_pi, r_pi)


def occupancy_of(P, rho0, gamma, pi):
    """mu(s,a) = pi(a|s) d(s), d = (1-g) sum_t g^t Pr(s_t = s): the flow (I - g P_pi^T) d = (1-g) rho0."""
    P_pi = np.einsum("sa,sat->st", pi, P)
    d = np.linalg.solve(np.eye(len(rho0)) - gamma * P_pi.T, (1 - gamma) * rho0)
    return d[:, None] * pi


def loss(P, Q, nu):
    """sum_{s,a} nu(s,a) sum_{s': P > 0} P log(P / Q)."""
    total = 0.0
    for s, a in itertools.product(range(P.shape[0]), range(P.shape[1])):
        for t in np.flatnonzero(P[s, a] > 0):
            total += nu[s, a] * P[s, a, t] * np.log(P[s, a, t] / Q[s, a, t])
    return total


def expected_leader(name, mdp, pi, Phat, alpha):
    S, A = mdp.n_states, mdp.n_actions
    mu = occupancy_of(mdp.P, mdp.rho0, mdp.gamma, pi)
    mu_rand = occupancy_of(mdp.P, mdp.rho0, mdp.gamma, np.full((S, A), 1.0 / A))
    J_model = float(mdp.rho0 @ values(Phat, mdp.R, mdp.gamma, pi))
    J_true = float(mdp.rho0 @ values(mdp.P, mdp.R, mdp.gamma, pi))
    return {"PAL": lambda: -J_model,
            "MAL": lambda: loss(mdp.P, Phat, mu),
            "MAL_agent_reward": lambda: alpha * loss(mdp.P, Phat, mu) - (1 - alpha) * J_model,
            "MAL_random_noise": lambda: loss(mdp.P, Phat, alpha * mu + (1 - alpha) * mu_rand),
            "MAL_agent_true_reward": lambda: alpha * loss(mdp.P, Phat, mu) - (1 - alpha) * J_true}[name]()


def deterministic_values(P, R, gamma):
    """V^pi for every deterministic policy, shape (A^S, S)."""
    S, A, _ = P.shape
    return np.array([values(P, R, gamma, np.eye(A)[list(acts)])
                     for acts in itertools.product(range(A), repeat=S)])


def fitted_loss_cvxpy(mdp, mu):
    """min_Q l(Q, mu) over Q >= eta on K, Q = 0 off K, rows on the simplex (CVXPY, exp cone)."""
    S, A = mdp.n_states, mdp.n_actions
    idx = [(s, a, t) for s in range(S) for a in range(A) for t in range(S) if mdp.K[s, a, t]]
    q = cp.Variable(len(idx))
    w = np.array([mu[s, a] * mdp.P[s, a, t] for (s, a, t) in idx])
    rows = {}
    for i, (s, a, _) in enumerate(idx):
        rows.setdefault((s, a), []).append(i)
    constraints = [q >= mdp.floor] + [cp.sum(q[ix]) == 1 for ix in rows.values()]
    keep = np.flatnonzero(w > 0)
    problem = cp.Problem(cp.Minimize(-w[keep] @ cp.log(q[keep])), constraints)
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == cp.OPTIMAL
    entropy = sum(mu[s, a] * mdp.P[s, a, t] * np.log(mdp.P[s, a, t])
                  for s in range(S) for a in range(A) for t in range(S) if mdp.P[s, a, t] > 0)
    return entropy + problem.value


def random_point(mdp, seed):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(mdp.n_actions), size=mdp.n_states)
    return pi, random_model(mdp.K, mdp.floor, rng)


@pytest.fixture(scope="module")
def mdps(hidden_goal):
    return [hidden_goal, garnet(4, 2, 3, seed=1, gamma=0.9),
            garnet(5, 2, 2, seed=2, gamma=0.8, initial="first", support="neighbors")]


# --------------------------------------------------------------------------- the registry

def test_the_registry_holds_the_formulations_in_order_and_names_round_trip(hidden_goal):
    assert list(game.FORMULATIONS) == list(NAMES)
    assert len({f.label for f in game.FORMULATIONS.values()}) == len(NAMES)
    for name in NAMES:
        f = game.formulation(name)
        assert f.name == name and game.FORMULATIONS[name] is f
        bm = game.build(hidden_goal, name)
        assert game.formulation(bm.formulation) is f
        assert bm.alpha == game.resolve_alpha(name) == game.DEFAULT_ALPHA.get(name)
        assert (f.leader, f.follower) in (("policy", "model"), ("model", "policy"))
    assert set(game.DEFAULT_ALPHA) == {"MAL_agent_reward", "MAL_random_noise", "MAL_agent_true_reward"}
    assert game.formulation("MAL_agent_reward").label == "MAL + agent reward"


@pytest.mark.parametrize("bad", ["mal", "", "PAL ", None])
def test_an_unknown_name_is_a_clear_value_error(bad):
    with pytest.raises(ValueError, match="unknown formulation.*choose from PAL, MAL, MAL_agent_reward"):
        game.formulation(bad)


def test_alpha_is_resolved_and_validated():
    assert game.resolve_alpha("MAL", 0.3) is None
    assert game.resolve_alpha("MAL_random_noise", "0.25") == 0.25
    for name in ("MAL_agent_reward", "MAL_random_noise"):
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
                game.resolve_alpha(name, bad)


def test_capabilities_route_as_documented(hidden_goal):
    assert EXACT_FORMULATIONS == ("PAL", "MAL", "MAL_random_noise", "MAL_agent_true_reward")
    assert [has_exact_route(n) for n in NAMES] == [True, True, False, True, True]
    assert not has_exact_route("nonsense")
    # hidden_goal has few deterministic policies: agent reward enumerates on auto
    assert choose_solver(hidden_goal, "auto", "MAL_agent_reward") == "enumerate"
    assert choose_solver(hidden_goal, "auto", "MAL") == "scip"
    assert choose_solver(hidden_goal, "enumerate", "PAL") == "scip"   # PAL: no policy follower
    assert [game.formulation(n).polish_only for n in NAMES] == [False, False, True, False, False]


# --------------------------------------------------------------------------- leader side

@pytest.mark.parametrize("name", NAMES)
def test_leader_value_matches_the_definition(mdps, name):
    for i, mdp in enumerate(mdps):
        for seed in range(3):
            pi, Phat = random_point(mdp, 10 * i + seed)
            want = expected_leader(name, mdp, pi, Phat, ALPHAS[name])
            assert leader_value(name, mdp, pi, Phat, ALPHAS[name]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_the_noise_data_occupancy_and_its_forced_pairs(mdps):
    noise, mal = game.formulation("MAL_random_noise"), game.formulation("MAL")
    for i, mdp in enumerate(mdps):
        pi, _ = random_point(mdp, i)
        mu = occupancy_of(mdp.P, mdp.rho0, mdp.gamma, pi)
        mu_rand = occupancy_of(mdp.P, mdp.rho0, mdp.gamma, np.full(pi.shape, 1.0 / mdp.n_actions))
        assert np.allclose(uniform_occupancy(mdp.P, mdp.rho0, mdp.gamma), mu_rand, atol=1e-12)
        assert np.allclose(noise.nu(mdp, pi, 0.3), 0.3 * mu + 0.7 * mu_rand, atol=1e-12)
        assert np.allclose(mal.nu(mdp, pi), mu, atol=1e-12)
        assert noise.nu(mdp, pi, 0.3).sum() == pytest.approx(1.0)
        live = ~mdp.terminal[:, None]
        assert np.array_equal(forced_pairs(mdp, "MAL_random_noise", 0.3), (mu_rand > 1e-15) & live)
        assert not forced_pairs(mdp, "MAL_random_noise", 1.0).any()
        assert not forced_pairs(mdp, "MAL", None).any()


def test_the_band_allowance_is_the_floor_cost_of_loss_based_leaders(hidden_goal):
    floor_cost = 2 * hidden_goal.floor * hidden_goal.K.sum(axis=-1).max()
    for name in NAMES:
        bm = game.build(hidden_goal, name)
        allowance = 0.0 if name == "PAL" else floor_cost
        assert equilibrium_tolerance(bm, 5.0) == pytest.approx(5e-6 + allowance, rel=1e-12)


# --------------------------------------------------------------------------- follower side

def test_pal_follower_gap_against_a_cvxpy_fit(mdps):
    pal = game.formulation("PAL")
    for i, mdp in enumerate(mdps):
        pi, Phat = random_point(mdp, 100 + i)
        if i == 2:
            pi[:, 1:] = 0.0     # deterministic: some pairs unvisited, their model is free
            pi[:, 0] = 1.0
        mu = occupancy_of(mdp.P, mdp.rho0, mdp.gamma, pi)
        best = fitted_loss_cvxpy(mdp, mu)
        assert follower_gap("PAL", mdp, pi, Phat) == pytest.approx(loss(mdp.P, Phat, mu) - best, abs=1e-6)
        response = pal.best_response(mdp, pi, Phat)
        assert loss(mdp.P, response, mu) == pytest.approx(best, abs=1e-6)
        assert pal.follower_gap(mdp, pi, response) < 1e-12
        if i == 2:      # action 1 is never taken: the nearest best response keeps Phat there
            assert np.array_equal(response[:, 1:], Phat[:, 1:])
            assert not np.allclose(response[:, :1], Phat[:, :1])


@pytest.mark.parametrize("name", ["MAL", "MAL_agent_reward", "MAL_random_noise"])
def test_policy_follower_gap_against_brute_force(mdps, name):
    f = game.formulation(name)
    for i, mdp in enumerate(mdps):
        pi, Phat = random_point(mdp, 200 + i)
        V_star = deterministic_values(Phat, mdp.R, mdp.gamma).max(axis=0)
        V_pi = values(Phat, mdp.R, mdp.gamma, pi)
        assert follower_gap(name, mdp, pi, Phat) == pytest.approx(float(np.max(V_star - V_pi)), abs=1e-8)
        response = f.best_response(mdp, pi, Phat)
        assert np.allclose(values(Phat, mdp.R, mdp.gamma, response), V_star, atol=1e-8)
        assert f.follower_gap(mdp, response, Phat) < 1e-8
        J_star = float(mdp.rho0 @ V_star)
        assert return_gap(Phat, mdp.model_reward(Phat), mdp.rho0, mdp.gamma, pi) == pytest.approx(
            J_star - float(mdp.rho0 @ V_pi), abs=1e-8)


# --------------------------------------------------------------------------- the MPEC

def load_point(bm, pi, Phat):
    """Set every variable of the MPEC from arrays computed here: pi, Phat, the true occupancy mu,
    and (where the model has them) V = V^pi in Phat, kl, the model occupancy d."""
    mdp, m = bm.mdp, bm.model
    mu = occupancy_of(mdp.P, mdp.rho0, mdp.gamma, pi)
    V = values(Phat, mdp.R, mdp.gamma, pi)
    d = occupancy_of(Phat, mdp.rho0, mdp.gamma, pi)
    for (s, a) in m.SA:
        m.pi[s, a].set_value(float(pi[s, a]))
    for (s, a, t) in m.KSET:
        m.Phat[s, a, t].set_value(float(Phat[s, a, t]))
    for s in range(mdp.n_states):
        for a in range(mdp.n_actions):
            if not m.mu[s, a].fixed:
                m.mu[s, a].set_value(float(mu[s].sum() if mdp.terminal[s] else mu[s, a]))
            if hasattr(m, "d") and not m.d[s, a].fixed:
                m.d[s, a].set_value(float(d[s].sum() if mdp.terminal[s] else d[s, a]))
        if hasattr(m, "V") and not m.V[s].fixed:
            m.V[s].set_value(float(V[s]))
    if hasattr(m, "kl"):
        for (s, a) in m.SA:
            m.kl[s, a].set_value(float(loss(mdp.P[s:s + 1, a:a + 1], Phat[s:s + 1, a:a + 1], np.ones((1, 1)))))


@pytest.mark.parametrize("name", NAMES)
def test_the_mpec_leader_expression_equals_leader_value(mdps, name):
    for i, mdp in enumerate(mdps):
        pi, Phat = random_point(mdp, 300 + i)
        bm = game.build(mdp, name, ALPHAS[name])
        load_point(bm, pi, Phat)
        want = expected_leader(name, mdp, pi, Phat, ALPHAS[name])
        assert pyo.value(bm.leader) == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert pyo.value(bm.leader) == pytest.approx(leader_value(name, mdp, pi, Phat, bm.alpha),
                                                     rel=1e-9, abs=1e-12)
        J = float(mdp.rho0 @ values(mdp.P, mdp.R, mdp.gamma, pi))
        assert pyo.value(bm.true_return) == pytest.approx(J, rel=1e-9)


def test_pal_reductions_and_their_validation(hidden_goal):
    for red in game.PAL_REDUCTIONS:
        assert game.build(hidden_goal, "PAL", pal_reduction=red).reduction == red
    assert game.build(hidden_goal, "MAL", pal_reduction="kkt").reduction == "bellman"
    with pytest.raises(ValueError, match="unknown PAL reduction 'nope'"):
        game.build(hidden_goal, "PAL", pal_reduction="nope")
