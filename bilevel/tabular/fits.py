"""Model fits: KL rows, the occupancy-weighted loss, the floored KL fit, the simulation lemma.

    l(Phat, mu) = sum_{s,a} mu(s,a) KL(P(.|s,a) || Phat(.|s,a))
"""
from __future__ import annotations

import numpy as np

from bilevel.tabular.evaluation import policy_return
from bilevel.tabular.occupancy import occupancy


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
            Q[s, a] = floored_fit(P[s, a], K[s, a], floor)
    return Q


def floored_fit(p: np.ndarray, k: np.ndarray, eta: float) -> np.ndarray:
    """argmin_q KL(p || q) over q on the support k with q >= eta there (water-filling)."""
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
