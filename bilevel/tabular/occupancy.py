"""Exact tabular quantities on plain arrays: P (S,A,S), r (S,A), rho0 (S,), pi (S,A), mu (S,A).

Conventions (docs/DESIGN.md section 1):
    mu(s,a)  = (1-gamma) sum_t gamma^t Pr(s_t=s, a_t=a)           (normalized occupancy)
    J(pi, M) = sum_{s,a} mu(s,a) r(s,a) / (1-gamma) = rho0 . V^pi   (discounted return)
    episode reward = E[sum_{t<T} r(s_t, a_t)]                        (undiscounted, T = horizon)
    mu_T(s,a) = (1/T) sum_{t<T} Pr(s_t=s, a_t=a)                     (averaged occupancy, an MDP
                with `occupancy: average`; its return is the episode reward T sum mu_T r)
    loss l(Phat, mu) = sum_{s,a} mu(s,a) KL(P(.|s,a) || Phat(.|s,a))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bilevel.tabular.evaluation import transition_matrix
from bilevel.tabular.policies import uniform_policy
from solvers import highs
from solvers.base import SolveResult


def occupancy(P: np.ndarray, rho0: np.ndarray, gamma: float, pi: np.ndarray) -> np.ndarray:
    """mu(s,a) = pi(a|s) d(s),  d = (1-gamma) (I - gamma P_pi^T)^{-1} rho0."""
    S = P.shape[0]
    d = np.linalg.solve(np.eye(S) - gamma * transition_matrix(P, pi).T, (1.0 - gamma) * rho0)
    return np.maximum(d, 0.0)[:, None] * pi


def state_visits(P: np.ndarray, rho0: np.ndarray, pi: np.ndarray, horizon: int) -> np.ndarray:
    """d[t, s] = Pr(s_t = s) for t < horizon: d_0 = rho0, d_{t+1} = d_t P_pi (terminal states
    absorb: P[t, a, t] = 1)."""
    P_pi = transition_matrix(P, pi)
    d = np.empty((horizon, P.shape[0]))
    d[0] = rho0
    for t in range(1, horizon):
        d[t] = d[t - 1] @ P_pi
    return d


def averaged_occupancy(P: np.ndarray, rho0: np.ndarray, pi: np.ndarray, horizon: int) -> np.ndarray:
    """mu_T(s,a) = pi(a|s) (1/T) sum_{t<T} Pr(s_t = s): the data of T-step episodes. A pair
    has weight exactly when the policy reaches it within T - 1 steps (products of zeros stay 0)."""
    return state_visits(P, rho0, pi, horizon).mean(axis=0)[:, None] * pi


def finite_return_range(P: np.ndarray, r: np.ndarray, rho0: np.ndarray, horizon: int,
                        allowed: np.ndarray) -> tuple[float, float]:
    """(min, max) of E[sum_{t<T} r(s_t, a_t)] over NONSTATIONARY policies that play at each state
    only `allowed` actions ((S,A) bool; a row without any: every action), by backward induction
    V_T = 0, V_t(s) = max / min_{a allowed} r(s,a) + sum_s' P(s'|s,a) V_{t+1}(s'). It bounds
    the T-step return of every stationary policy, mixed or not, with support in `allowed`."""
    ok = np.where(allowed.any(axis=1, keepdims=True), allowed, True)
    hi, lo = np.zeros(P.shape[0]), np.zeros(P.shape[0])
    for _ in range(horizon):
        hi = np.where(ok, r + P @ hi, -np.inf).max(axis=1)
        lo = np.where(ok, r + P @ lo, np.inf).min(axis=1)
    return float(rho0 @ lo), float(rho0 @ hi)


def uniform_occupancy(P: np.ndarray, rho0: np.ndarray, gamma: float) -> np.ndarray:
    """mu_rand = occupancy of the uniform policy pi(a|s) = 1/A in P (the random-noise data)."""
    S, A, _ = P.shape
    return occupancy(P, rho0, gamma, uniform_policy(S, A))


def flow_matrix(P: np.ndarray, gamma: float) -> sp.csr_matrix:
    """A with (A mu)(s') = sum_a mu(s',a) - gamma sum_{s,a} P(s'|s,a) mu(s,a); mu flattened (s,a)."""
    S, A, _ = P.shape
    E = sp.kron(sp.eye(S), np.ones((1, A)))          # (S, S*A): sum over a of mu(s', a)
    return sp.csr_matrix(E - gamma * sp.csr_matrix(P.reshape(S * A, S).T))


def flow_residual(P: np.ndarray, rho0: np.ndarray, gamma: float, mu: np.ndarray) -> float:
    """max_s' |sum_a mu(s',a) - (1-gamma) rho0(s') - gamma sum_{s,a} P(s'|s,a) mu(s,a)|."""
    return float(np.max(np.abs(flow_matrix(P, gamma) @ mu.ravel() - (1.0 - gamma) * rho0)))


@dataclass(frozen=True)
class OccupancyLP:
    """The occupancy LP  max_mu sum mu r  s.t. flow, mu >= 0  and its dual V (the optimal values)."""

    mu: np.ndarray
    V: np.ndarray
    J: float
    result: SolveResult


def occupancy_lp(P: np.ndarray, r: np.ndarray, rho0: np.ndarray, gamma: float) -> OccupancyLP:
    """Solve max sum_{s,a} mu r s.t. A mu = (1-gamma) rho0, mu >= 0 with HiGHS.
    Dual: min (1-gamma) rho0.V s.t. V(s) >= r(s,a) + gamma P(.|s,a).V, so V = V* on supp(rho0)'s
    reachable set; J = sum mu r / (1-gamma)."""
    S, A = r.shape
    res = highs.linprog(r.ravel(), A_eq=flow_matrix(P, gamma), b_eq=(1.0 - gamma) * rho0,
                        lb=0.0, maximize=True).require("occupancy LP")
    mu = np.maximum(res.x.reshape(S, A), 0.0)
    V = res.duals[0]  # HiGHS row duals of the flow rows are +V for this maximization (tested)
    return OccupancyLP(mu=mu, V=V, J=float(res.objective) / (1.0 - gamma), result=res)
