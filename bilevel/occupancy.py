"""Exact tabular quantities on plain arrays: P (S,A,S), r (S,A), rho0 (S,), pi (S,A), mu (S,A).

Conventions (docs/DESIGN.md section 1):
    mu(s,a)  = (1-gamma) sum_t gamma^t Pr(s_t=s, a_t=a)           (normalized occupancy)
    J(pi, M) = sum_{s,a} mu(s,a) r(s,a) / (1-gamma) = rho0 . V^pi   (discounted return)
    episode reward = E[sum_{t<T} r(s_t, a_t)]                        (undiscounted, T = horizon)
    loss l(Phat, mu) = sum_{s,a} mu(s,a) KL(P(.|s,a) || Phat(.|s,a))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from solvers import highs
from solvers.base import SolveResult


# --------------------------------------------------------------------------- policies

def uniform_policy(n_states: int, n_actions: int) -> np.ndarray:
    """pi(a|s) = 1/A."""
    return np.full((n_states, n_actions), 1.0 / n_actions)


def deterministic_policy(actions, n_actions: int) -> np.ndarray:
    """One-hot policy from an action index per state."""
    actions = np.asarray(actions, dtype=int)
    return np.eye(n_actions)[actions]


def greedy_policy(Q: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Deterministic greedy policy: the first action within `tol` of max_a Q(s,a)."""
    best = Q.max(axis=1, keepdims=True)
    first = np.argmax(Q >= best - tol * np.maximum(1.0, np.abs(best)), axis=1)
    return deterministic_policy(first, Q.shape[1])


def policy_from_occupancy(mu: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """pi(a|s) = mu(s,a) / sum_b mu(s,b); rows with no mass take `fallback` (default uniform)."""
    S, A = mu.shape
    mass = mu.sum(axis=1, keepdims=True)
    fb = uniform_policy(S, A) if fallback is None else fallback
    with np.errstate(invalid="ignore", divide="ignore"):
        pi = np.where(mass > 0, mu / np.where(mass > 0, mass, 1.0), fb)
    return pi


# --------------------------------------------------------------------------- evaluation

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


# --------------------------------------------------------------------------- occupancy

def occupancy(P: np.ndarray, rho0: np.ndarray, gamma: float, pi: np.ndarray) -> np.ndarray:
    """mu(s,a) = pi(a|s) d(s),  d = (1-gamma) (I - gamma P_pi^T)^{-1} rho0."""
    S = P.shape[0]
    d = np.linalg.solve(np.eye(S) - gamma * transition_matrix(P, pi).T, (1.0 - gamma) * rho0)
    return np.maximum(d, 0.0)[:, None] * pi


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


def expected_return(mu: np.ndarray, r: np.ndarray, gamma: float) -> float:
    """J = sum_{s,a} mu(s,a) r(s,a) / (1-gamma)."""
    return float(np.sum(mu * r) / (1.0 - gamma))


def policy_return(P, r, rho0, gamma, pi) -> float:
    """J(pi, M) = rho0 . V^pi."""
    return float(rho0 @ policy_evaluation(P, r, gamma, pi))


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


# --------------------------------------------------------------------------- model loss

def kl_rows(P: np.ndarray, Phat: np.ndarray) -> np.ndarray:
    """KL(P(.|s,a) || Phat(.|s,a)) for every (s,a); +inf where Phat = 0 < P."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(P > 0, P * (np.log(np.where(P > 0, P, 1.0)) - np.log(Phat)), 0.0)
    return terms.sum(axis=-1)


def model_loss(P: np.ndarray, Phat: np.ndarray, mu: np.ndarray) -> float:
    """l(Phat, mu) = sum_{s,a} mu(s,a) KL(P(.|s,a) || Phat(.|s,a)); pairs with mu = 0 add 0."""
    kl = kl_rows(P, Phat)
    return float(np.sum(np.where(mu > 0, mu * np.where(mu > 0, kl, 0.0), 0.0)))


def random_model(K: np.ndarray, floor: float, rng: np.random.Generator) -> np.ndarray:
    """N(.|s,a) ~ Dirichlet(1) over the support K(s,a), floored at `floor` and renormalized
    (rows with an empty support stay 0)."""
    N = np.where(K, rng.gamma(1.0, size=K.shape), 0.0)
    N = np.where(K, np.maximum(N / np.maximum(N.sum(-1, keepdims=True), 1e-300), floor), 0.0)
    return N / np.maximum(N.sum(-1, keepdims=True), 1e-300)


def kl_fit(P: np.ndarray, K: np.ndarray, floor: float) -> np.ndarray:
    """Closed-form best response of the model follower, per (s,a):
        argmin_Q KL(P || Q)  s.t.  sum Q = 1,  Q >= floor on K,  Q = 0 off K.
    KKT: Q(s') = max(floor, P(s')/lambda) on K, with lambda >= 1 chosen so that sum Q = 1
    (water-filling). Requires supp P within K and floor * |K| <= 1."""
    S, A, _ = P.shape
    Q = np.zeros_like(P, dtype=float)
    for s in range(S):
        for a in range(A):
            Q[s, a] = _floored_fit(P[s, a], K[s, a], floor)
    return Q


def _floored_fit(p: np.ndarray, k: np.ndarray, eta: float) -> np.ndarray:
    idx = np.flatnonzero(k)
    if np.any((p > 0) & ~k):
        raise ValueError("model support excludes a true transition")
    if eta * idx.size > 1.0 + 1e-12:
        raise ValueError("floor * |support| exceeds 1")
    q = np.zeros_like(p, dtype=float)
    pk = p[idx]
    # Entries with P/lambda > eta keep the shape of P; the rest sit on the floor.
    # Try the largest-first active sets: with m floored entries, lambda = sum(free p) / (1 - m eta).
    order = np.argsort(-pk)
    for n_free in range(idx.size, 0, -1):
        free = order[:n_free]
        m = idx.size - n_free
        denom = 1.0 - m * eta
        if denom <= 0:
            continue
        lam = pk[free].sum() / denom
        if lam <= 0:
            continue
        if pk[free].min() / lam >= eta - 1e-15 and (m == 0 or pk[order[n_free:]].max() / lam <= eta + 1e-15):
            vals = np.full(idx.size, eta)
            vals[free] = pk[free] / lam
            q[idx] = vals
            return q
    q[idx] = 1.0 / idx.size
    return q


# --------------------------------------------------------------------------- simulation lemma

def tv_distance(x: np.ndarray, y: np.ndarray) -> float:
    """D_TV(x, y) = 1/2 sum |x - y| over all entries."""
    return 0.5 * float(np.abs(np.asarray(x) - np.asarray(y)).sum())


def simulation_terms(P, Phat, r, rho0, gamma, pi) -> dict:
    """Simulation-lemma quantities for pi under the true P and a model Phat:
    J gap |J(pi,M) - J(pi,Mhat)|, E_{mu_M^pi}[TV(P, Phat)], the loss l(Phat, mu_M^pi), the bound
    2 gamma R_max E[TV] / (1-gamma)^2 (with R_max = max|r|), and its Pinsker form
    sqrt(2 l) gamma R_max / (1-gamma)^2, and D_TV(mu_M^pi, mu_Mhat^pi)."""
    mu_true = occupancy(P, rho0, gamma, pi)
    mu_model = occupancy(Phat, rho0, gamma, pi)
    tv_rows = 0.5 * np.abs(P - Phat).sum(axis=-1)
    e_tv = float(np.sum(mu_true * tv_rows))
    loss = model_loss(P, Phat, mu_true)
    r_max = float(np.max(np.abs(r)))
    c = gamma * r_max / (1.0 - gamma) ** 2
    return {
        "J_true": policy_return(P, r, rho0, gamma, pi),
        "J_model": policy_return(Phat, r, rho0, gamma, pi),
        "J_gap": abs(policy_return(P, r, rho0, gamma, pi) - policy_return(Phat, r, rho0, gamma, pi)),
        "expected_tv": e_tv,
        "loss": loss,
        "bound_tv": 2.0 * c * e_tv,
        "bound_pinsker": c * np.sqrt(2.0 * loss),
        "occupancy_tv": tv_distance(mu_true, mu_model),
    }
