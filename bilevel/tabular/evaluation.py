"""Evaluation on plain arrays: V^pi = (I - g P_pi)^-1 r_pi, value and policy iteration, returns.

    r(s,a)   = sum_s' P(s'|s,a) R(s,a,s')                     (expected reward; a model's rhat)
    J(pi, M) = rho0 . V^pi = sum_{s,a} mu(s,a) r(s,a) / (1-gamma)
    return gap  J*(M) - J(pi, M) = rho0 . (V* - V^pi) >= 0
    episode reward = E[sum_{t<T} r(s_t, a_t)]   (undiscounted, T = horizon)
"""
from __future__ import annotations

import numpy as np

from bilevel.tabular.policies import deterministic_policy, greedy_policy


def expected_reward(P: np.ndarray, R: np.ndarray) -> np.ndarray:
    """r(s,a) = sum_s' P(s'|s,a) R(s,a,s') (with P a model Phat: its reward rhat)."""
    return np.einsum("ijk,ijk->ij", P, R)


def transition_matrix(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """P_pi[s, s'] = sum_a pi(a|s) P(s'|s,a)."""
    return np.einsum("sa,sat->st", pi, P)


def policy_evaluation(P: np.ndarray, r: np.ndarray, gamma: float, pi: np.ndarray) -> np.ndarray:
    """V^pi = (I - gamma P_pi)^{-1} r_pi, by a direct linear solve."""
    S = P.shape[0]
    return np.linalg.solve(np.eye(S) - gamma * transition_matrix(P, pi), (pi * r).sum(axis=1))


def q_values(P: np.ndarray, r: np.ndarray, gamma: float, V: np.ndarray) -> np.ndarray:
    """Q(s,a) = r(s,a) + gamma sum_s' P(s'|s,a) V(s')."""
    return r + gamma * P @ V


def value_iteration(P: np.ndarray, r: np.ndarray, gamma: float, tol: float = 1e-12,
                    max_iter: int = 1_000_000, V0: np.ndarray | None = None):
    """V <- max_a [r + gamma P V] until ||V_{k+1} - V_k||_inf <= tol (1-gamma)/(2 gamma).
    Returns (V*, greedy pi); the returned V is within tol of V*."""
    V = np.zeros(P.shape[0]) if V0 is None else np.array(V0, dtype=float)
    stop = tol * (1.0 - gamma) / (2.0 * gamma)
    for _ in range(max_iter):
        V_new = q_values(P, r, gamma, V).max(axis=1)
        if np.max(np.abs(V_new - V)) <= stop:
            V = V_new
            break
        V = V_new
    else:
        raise RuntimeError(f"value iteration did not converge in {max_iter} iterations")
    return V, greedy_policy(q_values(P, r, gamma, V))


def policy_iteration(P: np.ndarray, r: np.ndarray, gamma: float, pi0: np.ndarray | None = None,
                     max_iter: int = 10_000):
    """Howard's policy iteration with exact evaluation. Returns (V*, pi*)."""
    S, A = r.shape
    pi = deterministic_policy(np.zeros(S, dtype=int), A) if pi0 is None else pi0
    for _ in range(max_iter):
        V = policy_evaluation(P, r, gamma, pi)
        Q = q_values(P, r, gamma, V)
        current = (pi * Q).sum(axis=1)
        improve = Q.max(axis=1) > current + 1e-12 * np.maximum(1.0, np.abs(current))
        if not improve.any():
            return V, pi
        new = np.argmax(pi, axis=1)
        new[improve] = np.argmax(Q[improve], axis=1)
        pi = deterministic_policy(new, A)
    raise RuntimeError("policy iteration did not converge")


def bellman_residual(P, r, gamma, pi, V=None) -> float:
    """max_s [max_a Q^pi(s,a) - V^pi(s)]: 0 iff pi is optimal at every state."""
    V = policy_evaluation(P, r, gamma, pi) if V is None else V
    return float(np.max(q_values(P, r, gamma, V).max(axis=1) - V))


def expected_return(mu: np.ndarray, r: np.ndarray, gamma: float) -> float:
    """J = sum_{s,a} mu(s,a) r(s,a) / (1-gamma)."""
    return float(np.sum(mu * r) / (1.0 - gamma))


def policy_return(P, r, rho0, gamma, pi) -> float:
    """J(pi, M) = rho0 . V^pi."""
    return float(rho0 @ policy_evaluation(P, r, gamma, pi))


def return_gap(P: np.ndarray, r: np.ndarray, rho0: np.ndarray, gamma: float, pi: np.ndarray,
               tol: float = 1e-9) -> float:
    """J*(P) - J(pi, P) = rho0 . V* - rho0 . V^pi, V* by value iteration (within `tol`), V^pi by
    a linear solve; clamped at 0 (the true gap is >= 0, the computed one within `tol` of it).
    With a model (P = Phat, r = rhat) this is eps_pi, the follower's suboptimality in its model."""
    V_star, _ = value_iteration(P, r, gamma, tol=tol)
    return max(0.0, float(rho0 @ V_star) - policy_return(P, r, rho0, gamma, pi))


def episode_reward(P: np.ndarray, r: np.ndarray, rho0: np.ndarray, pi: np.ndarray,
                   horizon: int) -> float:
    """Exact E[sum_{t=0}^{T-1} r(s_t, a_t)] by finite-horizon evaluation (undiscounted).
    Terminal states are absorbing with zero reward, so an episode that ends early adds 0."""
    P_pi, r_pi = transition_matrix(P, pi), (pi * r).sum(axis=1)
    d, total = np.array(rho0, dtype=float), 0.0
    for _ in range(horizon):
        total += float(d @ r_pi)
        d = d @ P_pi
    return total
