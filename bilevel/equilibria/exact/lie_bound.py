"""Proved bounds on what a lie can buy in MAL + agent reward, from arrays (docs/DESIGN.md 5.6).

For a deterministic follower policy pi with true occupancy d (normalized) and values V = V^pi_M,
every equilibrium (pi, Phat) satisfies, with c1 = (1 - alpha)/(1 - g),

    leader = alpha sum_s d(s) KL(P_s || Phat_s) - (1 - alpha) V^pi_Phat(rho0),
    V^pi_Phat(rho0) - V(rho0) = sum_s d(s) e_s / (1 - g),   e_s = (Phat_s - P_s) . (R_s + g V^pi_Phat)

(the simulation lemma weighted by the true occupancy: the loss and the gain share d). Split
Phat_s into its mass o_s off supp P_s (at least the floor's o_lo = |K - supp P| eta) and the
conditional q_s on supp P_s. Then KL(P_s || Phat_s) = KL(P_s || q_s) - log(1 - o_s), and with
k_s = KL(P_s || q_s), X_s = (q_s - P_s) . f_s (f_s = R_s + g V^pi_Phat):

  * KL(p || q) >= sum_t (p_t - q_t)^2 / (2 max(p_t, q_t)) (Taylor of x log x - x + 1), so by
    Cauchy-Schwarz and Pinsker  X_s^2 <= 2 k_s (Var_{P_s}(f_s) + min(1, sqrt(k_s / 2)) M_s^2);
  * Var_{P_s}(f_s) is the variance at the model's values; its d-weighted sum is at most
    (sqrt(Sigma) + rho ||e||_d)^2, Sigma = sum_s d(s) Var_{P_s}(R_s + g V) at the policy's own
    values, rho = sqrt(g) / (1 - sqrt(g)), because V^pi_Phat - V = (I - g P_pi)^{-1} e and
    sum_s d(s) P_s(t) <= d(t) / g makes g P_pi a sqrt(g)-contraction in the d-weighted norm.

`lie_bound` turns these into a lower bound on the leader of every equilibrium with policy pi;
it exceeds the true one (IPOPT's best lie with the policy fixed) by 1.2-3 times the lie, about
1e-8 at alpha = 0.9999. `linear_coefficients` is the linear relaxation that the MINLP's
simulation bound gives (valid for every equilibrium, weaker: static widths of R + g V).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bilevel.equilibria.exact.minlp import minlp_bounds
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import policy_evaluation
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import deterministic_policy


def linear_coefficients(mdp: TabularMDP, alpha: float, bounds=None) -> np.ndarray:
    """a(s,a) with leader >= sum_{s,a} mu(s,a) a(s,a) at every equilibrium whose deterministic
    policy has true occupancy mu: the MINLP's simulation bound (bilevel.equilibria.exact.minlp)
    minimized per pair, alpha z - c1 (span_in h + span_out y) under 2 h^2 <= mu (z - y) and
    y >= ell_lo mu, gives
        a = (alpha - c1 span_out) ell_lo - c1 r - c1^2 span_in^2 / (8 alpha)."""
    b = bounds or minlp_bounds(mdp)
    c1 = (1 - alpha) / (1 - mdp.gamma)
    return (alpha - c1 * b.span_out) * b.ell_lo - c1 * mdp.r - c1 ** 2 * b.span_in ** 2 / (8 * alpha)


def policy_occupancy_values(mdp: TabularMDP, actions) -> tuple[np.ndarray, np.ndarray]:
    """(d, V) of a deterministic policy in M: its normalized state occupancy and its values."""
    pi = deterministic_policy(actions, mdp.n_actions)
    return (occupancy(mdp.P, mdp.rho0, mdp.gamma, pi).sum(axis=1),
            policy_evaluation(mdp.P, mdp.r, mdp.gamma, pi))


def concave_max(h, x0: float, rel: float = 1e-9) -> float:
    """An upper bound on max_{x >= 0} h(x) for a concave h: golden section on a bracket
    a < b < c with h(b) >= h(a), h(c); concavity puts every h(x) under the chords extended, so
    max h <= h(b) + max(slope(a, b)^+ (c - b), (-slope(b, c))^+ (b - a))."""
    a, b, c = 0.0, x0, 2 * x0
    while h(b) < h(a):                      # the bracket: h(b) >= h(a) (h(0) = 0 < h near 0)
        b, c = b / 2, b
    while h(c) >= h(b):                     # and h(b) >= h(c) (h falls off for large x)
        a, b, c = b, c, 2 * c
    r = (np.sqrt(5) - 1) / 2
    for _ in range(200):
        lo, hi = (a, b) if b - a > c - b else (b, c)
        x = hi - r * (hi - lo) if (lo, hi) == (a, b) else lo + r * (hi - lo)
        if (lo, hi) == (a, b):
            a, b, c = (x, b, c) if h(x) < h(b) else (a, x, b)
        else:
            a, b, c = (a, b, x) if h(x) < h(b) else (b, x, c)
        hb = h(b)
        excess = max(max(0.0, (hb - h(a)) / (b - a)) * (c - b) if b > a else 0.0,
                     max(0.0, (hb - h(c)) / (c - b)) * (b - a))
        if excess <= rel * max(abs(hb), 1e-300):
            break
    return hb + excess


@dataclass(frozen=True)
class LieConstants:
    """The constants of `lie_bound`'s G over a set of live pairs (module docstring): the static
    width M of R + g V over supp P, the largest width so out of it and W over K, the largest KL
    on a floored simplex, F0 (or an upper bound on it), and the derived beta = alpha - c1 so_max
    and alpha1, minus the coefficient of K in G for large K."""

    c1: float
    M: float
    so_max: float
    kl_max: float
    W: float
    F0: float
    rho: float
    ck: float
    beta: float
    alpha1: float


def _widths(mdp: TabularMDP, b, pairs: np.ndarray):
    """For the live pairs (s, a) of `pairs` (an (n, 2) array): W_s, the width of R + g V over
    K(s, a) in the value box, and o_lo, the floor's mass off supp P."""
    g, P, R, K = mdp.gamma, mdp.P, mdp.R, mdp.K
    s, a = pairs[:, 0], pairs[:, 1]
    f_hi, f_lo = R[s, a] + g * b.V_hi[None, :], R[s, a] + g * b.V_lo[None, :]
    k = K[s, a]
    w = np.where(k.sum(axis=1) > 1, np.max(np.where(k, f_hi, -np.inf), axis=1)
                 - np.min(np.where(k, f_lo, np.inf), axis=1), 0.0)
    return w, (k & (P[s, a] == 0)).sum(axis=1) * mdp.floor


def lie_constants(mdp: TabularMDP, alpha: float, b, pairs: np.ndarray, d=None,
                  widths=None) -> LieConstants:
    """The constants over `pairs` ((n, 2) live pairs); F0 = ||o_lo W_s||_d with the state
    occupancy `d` of a policy whose pairs these are, or max_s o_lo W_s (an upper bound for every
    d) when `d` is None. `widths`: `_widths` of these pairs, when the caller has them."""
    g = mdp.gamma
    s, a = pairs[:, 0], pairs[:, 1]
    c1 = (1 - alpha) / (1 - g)
    w, o_lo = widths or _widths(mdp, b, pairs)
    F0 = float(np.sqrt(d[s] @ (o_lo * w) ** 2)) if d is not None else float((o_lo * w).max())
    M, so_max, kl_max = float(b.span_in[s, a].max()), float(b.span_out[s, a].max()), float(b.kl_hi[s, a].max())
    W = float(w.max())
    rho = np.sqrt(g) / (1 - np.sqrt(g))
    ck = 0.25 + min(1.0, np.sqrt(kl_max / 2))     # TV <= min(1, sqrt(KL / 2))
    beta = alpha - c1 * so_max
    alpha1 = alpha - 2 * c1 * rho * M * np.sqrt(ck) - ((c1 * rho * W) ** 2 / (2 * beta) if beta > 0 else np.inf)
    return LieConstants(c1, M, so_max, kl_max, W, F0, rho, ck, beta, alpha1)


def lie_bound(mdp: TabularMDP, alpha: float, actions, bounds=None, d=None, V=None) -> dict | None:
    """A proved lower bound on the leader of every equilibrium (pi, Phat) with the deterministic
    policy `actions` (docs/DESIGN.md 5.6, "A proof for one policy"):

        leader >= -(1 - alpha) J(pi, M) + sum_s d(s) (alpha ell_lo(s) - c1 o_lo(s) so(s)) - max G,
        G(K, L) = c1 sqrt(2K) (sqrt(Sigma) + rho E) + c1 min(K M^2 / (2 sqrt(Sigma)), 2^(1/4) M K^(3/4))
                  - alpha K - (alpha - c1 so_max) L,
        E = M sqrt(2K (1/4 + min(1, sqrt(kl_max / 2)))) + F0 + W sqrt(L),   rho = sqrt(g) / (1 - sqrt(g)),

    over K >= 0 (the model's in-support KL, weighted by the true occupancy d) and L >= 0 (its
    off-support mass beyond the floor's o_lo = |K - supp P| eta). Sigma = sum_s d(s)
    Var_{P(.|s,pi(s))}(R + g V^pi_M) is the variance at the policy's own values; M, so and W
    are the static widths of R + g V over supp P, from supp P out of it, and over K
    (bilevel.equilibria.exact.minlp's value box), kl_max the largest KL on a floored simplex and
    F0 = ||o_lo W_s||_d. G is concave; `concave_max` bounds its max from above. Returns the
    bound ("leader_lo") and max G ("lie"), or None when G is unbounded (its coefficient of K for
    large K is not negative). `d` (the state occupancy) and `V` (the values in M) of the policy
    may be passed in when the caller has them."""
    g, P, R = mdp.gamma, mdp.P, mdp.R
    b = bounds or minlp_bounds(mdp)
    if d is None or V is None:
        d, V = policy_occupancy_values(mdp, actions)
    seen = np.flatnonzero((d > 0) & ~mdp.terminal)        # terminal rows are fixed: no lie
    a = np.asarray(actions)[seen]
    p, f = P[seen, a], R[seen, a] + g * V[None, :]
    mean = np.sum(p * f, axis=1)
    sigma = float(d[seen] @ np.sum(p * (f - mean[:, None]) ** 2, axis=1))
    pairs = np.stack([seen, a], axis=1)
    widths = _widths(mdp, b, pairs)
    k = lie_constants(mdp, alpha, b, pairs, d, widths)
    c1, M, rho, ck, beta, F0, W = k.c1, k.M, k.rho, k.ck, k.beta, k.F0, k.W
    quad = c1 * M ** 2 / (2 * np.sqrt(sigma)) if sigma > 0 else np.inf
    if beta <= 0 or k.alpha1 <= 0:   # (the min's K^(3/4) branch grows slower than K)
        return None

    def h(Kin):
        """max over L >= 0 of G(Kin, L): A sqrt(L) - beta L peaks at A^2 / (4 beta)."""
        A = c1 * np.sqrt(2 * Kin) * rho * W
        return (c1 * np.sqrt(2 * Kin) * (np.sqrt(sigma) + rho * (M * np.sqrt(2 * Kin * ck) + F0))
                + min(quad * Kin, c1 * 2 ** 0.25 * M * Kin ** 0.75) - alpha * Kin + A ** 2 / (4 * beta))

    lie = concave_max(h, (c1 * np.sqrt(sigma) / alpha) ** 2 / 2 + 1e-24)
    o_lo = widths[1]
    floor_part = float(d[seen] @ (alpha * b.ell_lo[seen, a] - c1 * o_lo * b.span_out[seen, a]))
    J = float(mdp.rho0 @ V)
    return {"leader_lo": -(1 - alpha) * J + floor_part - lie, "lie": lie, "sigma": sigma}


SIGMA_TANGENTS = (0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0)


def linear_lie_bounds(mdp: TabularMDP, alpha: float, bounds=None,
                      sigmas=SIGMA_TANGENTS) -> list[tuple[float, float]] | None:
    """Pairs (kappa, C) with  max G <= kappa Sigma + C  for every deterministic policy, one pair
    tangent near each Sigma in `sigmas` (docs/DESIGN.md 5.6, "Rows for a set of policies"): with
    the constants over every live pair, s = sqrt(Sigma) + rho F0 and a = c1 2^(1/4) M,

        G <= c1 sqrt(2K) s - alpha1 K + a K^(3/4)
          <= c1^2 s^2 / (2 lam) + 27 a^4 / (256 (alpha1 - lam)^3)          (0 < lam < alpha1),
        s^2 <= (1 + eps) Sigma + (1 + 1/eps) rho^2 F0^2                     (eps > 0),

    (AM-GM twice, and max_K a K^(3/4) - m K = 27 a^4 / (256 m^3)); lam and eps are chosen on a
    grid to make the bound small at each Sigma. None when G is unbounded (as in `lie_bound`)."""
    b = bounds or minlp_bounds(mdp)
    live = np.flatnonzero(~mdp.terminal)
    pairs = np.array([(s, a) for s in live for a in range(mdp.n_actions)])
    k = lie_constants(mdp, alpha, b, pairs)
    if k.beta <= 0 or k.alpha1 <= 0:
        return None
    a4 = (k.c1 * 2 ** 0.25 * k.M) ** 4
    lam = np.linspace(0.01, 0.99, 99)[:, None] * k.alpha1
    eps = np.array([1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0])[None, :]
    kappa = (1 + eps) * k.c1 ** 2 / (2 * lam)
    C = ((1 + 1 / eps) * k.c1 ** 2 * k.rho ** 2 * k.F0 ** 2 / (2 * lam)
         + 27 * a4 / (256 * (k.alpha1 - lam) ** 3))
    out = []
    for sigma in sigmas:
        i = np.unravel_index(np.argmin(kappa * sigma + C), kappa.shape)
        out.append((float(kappa[i]), float(C[i])))
    return out


def floor_coefficients(mdp: TabularMDP, alpha: float, bounds=None) -> np.ndarray:
    """f(s,a) with  leader >= sum_{s,a} mu(s,a) f(s,a) - max G  (`lie_bound`, its first two
    terms per pair): f = -(1 - alpha) r / (1 - g) + alpha ell_lo - c1 o_lo so."""
    b = bounds or minlp_bounds(mdp)
    g = mdp.gamma
    c1 = (1 - alpha) / (1 - g)
    S, A = mdp.n_states, mdp.n_actions
    pairs = np.array([(s, a) for s in range(S) for a in range(A)])
    _, o_lo = _widths(mdp, b, pairs)
    return (-(1 - alpha) * mdp.r / (1 - g) + alpha * b.ell_lo
            - c1 * o_lo.reshape(S, A) * b.span_out)
