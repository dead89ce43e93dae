"""Exact toolkit: independent computations must agree (VI vs PI vs LP vs linear solves)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bilevel.mdp.garnet import garnet
from bilevel.tabular import (episode_reward, expected_return, flow_residual, kl_fit, kl_rows,
                               model_loss, occupancy, occupancy_lp, policy_evaluation,
                               policy_iteration, policy_return, q_values, simulation_terms,
                               uniform_policy, value_iteration)

def random_policy(rng, S, A):
    pi = rng.uniform(size=(S, A)) + 1e-3
    return pi / pi.sum(axis=1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 4), st.integers(0, 10_000), st.floats(0.5, 0.97))
def test_value_iteration_policy_iteration_and_lp_agree(S, A, seed, gamma):
    m = garnet(S, A, min(2, S), seed=seed, gamma=gamma)
    V_vi, pi_vi = value_iteration(m.P, m.r, m.gamma, tol=1e-11)
    V_pi, pi_pi = policy_iteration(m.P, m.r, m.gamma)
    lp = occupancy_lp(m.P, m.r, m.rho0, m.gamma)
    assert np.allclose(V_vi, V_pi, atol=1e-8)
    # rho0 is uniform, so every state carries dual weight and the LP dual is V* everywhere
    assert np.allclose(lp.V, V_pi, atol=1e-8)
    assert lp.J == pytest.approx(m.rho0 @ V_pi, abs=1e-8)
    # the greedy policies are optimal: their direct linear-solve value is V*
    assert np.allclose(policy_evaluation(m.P, m.r, m.gamma, pi_vi), V_pi, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 4), st.integers(0, 10_000), st.floats(0.5, 0.97))
def test_occupancy_is_a_distribution_on_the_flow_polytope(S, A, seed, gamma):
    m = garnet(S, A, min(2, S), seed=seed, gamma=gamma)
    pi = random_policy(np.random.default_rng(seed), S, A)
    mu = occupancy(m.P, m.rho0, m.gamma, pi)
    assert mu.min() >= 0
    assert mu.sum() == pytest.approx(1.0, abs=1e-10)
    assert flow_residual(m.P, m.rho0, m.gamma, mu) < 1e-10
    # J = mu.r/(1-gamma) equals rho0.V
    assert expected_return(mu, m.r, m.gamma) == pytest.approx(
        m.rho0 @ policy_evaluation(m.P, m.r, m.gamma, pi), rel=1e-9, abs=1e-9)


def test_occupancy_matches_monte_carlo_sum():
    m = garnet(4, 2, 2, seed=3, gamma=0.8)
    pi = random_policy(np.random.default_rng(0), 4, 2)
    # truncated series (1-gamma) sum_t gamma^t d_t pi
    d, acc = m.rho0.copy(), np.zeros((4, 2))
    Ppi = np.einsum("sa,sat->st", pi, m.P)
    for t in range(400):
        acc += (1 - m.gamma) * m.gamma**t * d[:, None] * pi
        d = d @ Ppi
    assert np.allclose(acc, occupancy(m.P, m.rho0, m.gamma, pi), atol=1e-12)


def test_hidden_goal_reference_values(hidden_goal):
    m = hidden_goal
    V, pi = value_iteration(m.P, m.r, m.gamma)
    assert m.rho0 @ V == pytest.approx(73.96039604, abs=1e-6)
    assert episode_reward(m.P, m.r, m.rho0, pi, m.horizon) == pytest.approx(36.45, abs=1e-9)
    decoy = pi.copy()
    decoy[m.states.index("B")] = [1.0, 0.0]   # X in B
    assert episode_reward(m.P, m.r, m.rho0, decoy, m.horizon) == pytest.approx(0.9875, abs=1e-9)
    assert policy_return(m.P, m.r, m.rho0, m.gamma, decoy) == pytest.approx(0.79 / 0.802, abs=1e-9)


def test_episode_reward_matches_explicit_enumeration():
    m = garnet(3, 2, 2, seed=11, gamma=0.9)
    pi = random_policy(np.random.default_rng(1), 3, 2)
    T = 4
    # recursive exact expectation over all trajectories of length T
    def value(s, t):
        if t == T:
            return 0.0
        return sum(pi[s, a] * (m.r[s, a] + sum(m.P[s, a, s2] * value(s2, t + 1) for s2 in range(3)))
                   for a in range(2))
    total = sum(m.rho0[s] * value(s, 0) for s in range(3))
    assert episode_reward(m.P, m.r, m.rho0, pi, T) == pytest.approx(total, abs=1e-12)


def test_kl_loss_zero_exactly_at_true_model_and_positive_elsewhere(hidden_goal):
    m = hidden_goal
    mu = occupancy(m.P, m.rho0, m.gamma, uniform_policy(3, 2))
    assert model_loss(m.P, m.P, mu) == 0.0
    Q = 0.5 * m.P + 0.5 / 3
    assert model_loss(m.P, Q, mu) > 1e-3


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(0, 10_000), st.floats(1e-6, 0.1))
def test_kl_fit_is_the_minimizer_on_the_floored_simplex(n, seed, eta):
    """Closed-form fit vs a convex solver (CVXPY), and feasibility."""
    import cvxpy as cp
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n) * 0.3)
    p[p < 1e-3] = 0.0
    p /= p.sum()
    k = np.ones(n, dtype=bool)
    if eta * n > 1:
        return
    q = kl_fit(p[None, None], k[None, None], eta)[0, 0]
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    assert q.min() >= eta - 1e-15
    x = cp.Variable(n)
    mask = p > 0
    prob = cp.Problem(cp.Minimize(-p[mask] @ cp.log(x[mask])), [cp.sum(x) == 1, x >= eta])
    prob.solve()
    kl = lambda qq: kl_rows(p[None], qq[None])[0]
    assert kl(q) <= kl(np.maximum(x.value, eta) / np.maximum(x.value, eta).sum()) + 1e-6


def test_kl_fit_equals_p_when_floor_inactive(hidden_goal):
    m = hidden_goal
    Q = kl_fit(m.P, m.P > 0, 0.0)
    assert np.allclose(Q, m.P)
    Q = kl_fit(m.P, m.K, m.floor)
    assert np.all(Q[m.K] >= m.floor - 1e-15)
    assert np.allclose(Q.sum(axis=-1), 1.0)


def test_simulation_lemma_bounds_hold_on_random_models():
    rng = np.random.default_rng(0)
    for seed in range(20):
        m = garnet(5, 2, 3, seed=seed, gamma=0.9)
        Phat = m.P + rng.uniform(0, 0.3, size=m.P.shape)
        Phat /= Phat.sum(axis=-1, keepdims=True)
        t = simulation_terms(m.P, Phat, m.r, m.rho0, m.gamma, random_policy(rng, 5, 2))
        assert t["J_gap"] <= t["bound_tv"] + 1e-9
        assert t["bound_tv"] <= t["bound_pinsker"] + 1e-9  # Pinsker + Jensen


def test_q_values_definition():
    m = garnet(3, 2, 2, seed=1, gamma=0.9)
    V = np.arange(3.0)
    Q = q_values(m.P, m.r, m.gamma, V)
    assert Q[1, 0] == pytest.approx(m.r[1, 0] + 0.9 * m.P[1, 0] @ V)
