"""A bound on the leader of MAL + agent reward for one deterministic policy, from a box on the
model's occupancy (docs/DESIGN.md 5.6, "A box on the model's occupancy").

Fix pi, with true (normalized) state occupancy d and values V in M, and write q_s =
Phat(.|s, pi(s)), f_s = R(s, pi(s), .) + g V and c = (1 - alpha) / (1 - g). The simulation lemma
weighted by the *model's* occupancy d_m (and the true values) gives, for every model,

    leader = -(1 - alpha) J(pi, M) + sum_s [ alpha d(s) KL(P_s || q_s) - c d_m(s) (q_s - P_s) . f_s ].

Each term is a concave function of d_m(s) at fixed q_s, so if d_m(s) lies in [l_s, u_s],

    term_s >= min(psi_s(l_s), psi_s(u_s)),   psi_s(m) = min_q  alpha d(s) KL(P_s || q) - c m (q - P_s) . f_s

over the floored simplex on K (`tilted_kl`: a convex problem in q, bounded from below by its
dual in the multiplier of sum q = 1). The box comes from the band: a model with leader <= band
has, at each s, term_s <= beta_s = band + (1 - alpha) J - sum_{s' != s} min psi_s'. With
Pinsker's KL(P || q~) >= 2 TV^2 on the conditional q~ on supp P_s and -log(1 - o) >= o for the
mass o off it,

    2 w TV^2 - c u span_in TV + (w - c u sigma_out) o <= beta_s        (w = alpha d(s)),

so q_s lies within TV tau_s of P_s on the support with o <= o_hi; states pi does not reach
(w = 0), and any state where w - c u sigma_out <= 0, are left free. The bound holds for every
policy that agrees with pi where pi goes (the same d, J and values there) and chooses from
`allowed` off those states (every action by default; `split_out` narrows it): the values there
are boxed by the min- and max-VI (`completion_values`), so a target off Z(pi) counts with its
highest f. The rows of the states pi does not reach (F) carry no loss. With d_F the model's
occupancy there, d_F = (I - g Q_FF^T)^-1 b, b = (1 - g) rho0_F + g sum_{s not in F} d_m(s) q_s|F,
so their terms add at most c b . Z / (1 - g), Z the robust value of their lies
(`free_chain_gain`): c rho0 . Z, and for each reached s the mass q_s sends into F priced at
g Z / (1 - g) on top of f (P_s . Z = 0, so it enters psi_s as part of (q_s - P_s) . f_s, where
the loss pays for it). That chain pricing is tight near the band but cannot close the box alone
(light rows stay unbounded); the box pricing (`unreached_gain`: a robust VI over the box's rows,
mass into F free of charge) can. Each round keeps the better bound and intersects the rows both
derive. The model occupancy over
such rows lies in the box of the optimistic and pessimistic VI of the discounted visits of each
state t (`occupancy_box`: W_t = (1 - g) e_t + g max_q q . W_t, row by row; the operators are
monotone, so iterates from a valid start stay valid). The box shrinks, the psi's rise, and the
two are repeated until the bound passes the band or stops moving. Every step holds for every
model with pi's rows in the band, so `occupancy_bound` > band proves that no equilibrium with pi
lies in the band. The follower's optimality is not used (a relaxation).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bilevel.equilibria.exact.completion_box import completion_box, outer_box
from bilevel.equilibria.exact.lie_bound import policy_occupancy_values
from bilevel.mdp.model import TabularMDP

DUAL_STEPS = 200          # bisection steps on the multiplier of sum q = 1 (any value is a valid bound)
VI_STEPS = 25             # occupancy VI steps per round (the next round starts where it stopped)
VI_TOL = 1e-12
FREE_VI_STEPS = 10_000    # value iteration steps on the free states' chain (to VI_TOL, relative)
MAX_ROUNDS = 60
STALL = 1e-13             # relative change of the bound at which the rounds stop


def tilted_kl(w: np.ndarray, P: np.ndarray, f: np.ndarray, lo: np.ndarray, K: np.ndarray,
              cm: np.ndarray) -> np.ndarray:
    """psi = min_q  w sum_{t in supp P} P_t log(P_t / q_t) - cm (q - P) . f  over q >= lo on K,
    q = 0 off K, sum q = 1, row by row (arrays (n, S); w, cm (n,)), from below: the dual

        max_nu  sum_{supp} [w P log(P / q*) + (nu - g)(q* - P)] + sum_{K \\ supp} (nu - g) lo,
        g = cm f,  q* = max(lo, w P / (nu - g)),

    is a lower bound at every nu above the g's; nu is found by bisection on sum q*(nu) = 1."""
    supp = P > 0
    off = K & ~supp
    g = cm[:, None] * f
    a = np.maximum(np.where(supp, g, -np.inf).max(axis=1), np.where(off, g, -np.inf).max(axis=1))
    b = a + w + 1.0                      # there sum q* <= sum lo + w / (w + 1) < 1
    wz = w[:, None]

    def q_star(nu):
        den = nu[:, None] - g
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.maximum(lo, np.where(den > 0, wz * P / den, np.inf))
        return np.where(supp, q, np.where(off, lo, 0.0))

    for _ in range(DUAL_STEPS):
        mid = 0.5 * (a + b)
        over = q_star(mid).sum(axis=1) > 1.0
        a, b = np.where(over, mid, a), np.where(over, b, mid)
    q = q_star(b)
    den = b[:, None] - g
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(supp, P * np.log(np.where(supp, P / q, 1.0)), 0.0)
        val = (np.where(supp, wz * kl + den * (q - P), 0.0) + np.where(off, den * lo, 0.0)).sum(axis=1)
    return np.where(np.isfinite(val), val, -np.inf)


def _tv_ball_max(P: np.ndarray, W: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """max of q . W[:, t] over distributions q on supp P_s with TV(q, P_s) <= tau_s, for every
    row s (P (n, S), tau (n,)) and column t (W (S, T)): move min(tau, 1 - P_top) from the lowest
    entries of the support to the highest."""
    n, T = P.shape[0], W.shape[1]
    supp = P > 0
    k = max(1, int(supp.sum(axis=1).max()))
    idx = np.argsort(~supp, axis=1, kind="stable")[:, :k]           # each row's support, padded
    valid = np.take_along_axis(supp, idx, axis=1)
    Wv = np.where(valid[:, :, None], W[idx], np.inf)                 # (n, k, T)
    order = np.argsort(Wv, axis=1)                                  # the support first, ascending
    Ws = np.take_along_axis(Wv, order, axis=1)
    Pk = np.where(valid, np.take_along_axis(P, idx, axis=1), 0.0)
    Ps = np.take_along_axis(np.broadcast_to(Pk[:, :, None], Wv.shape), order, axis=1)
    top = np.broadcast_to((supp.sum(axis=1) - 1)[:, None, None], (n, 1, T))
    W_top = np.take_along_axis(Ws, top, axis=1)[:, 0]
    moved = np.minimum(tau[:, None], 1.0 - np.take_along_axis(Ps, top, axis=1)[:, 0])
    taken = np.clip(moved[:, None, :] - (np.cumsum(Ps, axis=1) - Ps), 0.0, Ps)
    return (P @ W + moved * W_top
            - np.sum(taken * np.where(np.isfinite(Ws), Ws, 0.0), axis=1))


@dataclass
class _Rows:
    """pi's rows and what the band allows of them: within TV tau of P on supp P, a mass in
    [o_lo, o_hi] off it (the floor lo on each off-support target of K, the rest anywhere there);
    on the `free` states any row of any action."""

    P: np.ndarray
    K: np.ndarray
    lo: np.ndarray
    live: np.ndarray
    tau: np.ndarray
    o_lo: np.ndarray
    o_hi: np.ndarray
    free: np.ndarray            # live states pi does not reach: any action, any row on its K
    K_any: np.ndarray           # (S, S): the union of K(s, a) over the actions


def _masked_max(mask: np.ndarray, W: np.ndarray) -> np.ndarray:
    """max over j with mask[s, j] of W[j, t], for every row s of mask (n, S) and column t of W
    (S, T); -inf for an empty row. Gathered over each row's entries, not the whole of S."""
    k = max(1, int(mask.sum(axis=1).max(initial=0)))
    idx = np.argsort(~mask, axis=1, kind="stable")[:, :k]
    valid = np.take_along_axis(mask, idx, axis=1)
    return np.where(valid[:, :, None], W[idx], -np.inf).max(axis=1)


def _rows_max(rows: _Rows, W: np.ndarray, sign: float) -> np.ndarray:
    """sign * max over the rows' sets of q . (sign W[:, t]), for every row and column of W (S, T):
    the TV ball on supp P scaled by 1 - o, the floor off it and o - o_lo on its best target, o at
    either end of [o_lo, o_hi] (the value is linear in o)."""
    off = rows.K & ~(rows.P > 0)
    on = sign * _tv_ball_max(rows.P, sign * W, rows.tau)
    far = np.where(off.any(axis=1)[:, None], sign * _masked_max(off, sign * W), 0.0)
    at_floor = np.where(off, rows.lo, 0.0) @ W
    at_lo = (1 - rows.o_lo)[:, None] * on + at_floor
    at_hi = (1 - rows.o_hi)[:, None] * on + at_floor + (rows.o_hi - rows.o_lo)[:, None] * far
    return np.maximum(at_lo, at_hi) if sign > 0 else np.minimum(at_lo, at_hi)


def occupancy_box(rows: _Rows, rho0: np.ndarray, g: float, W: tuple, steps: int):
    """(u, l, W): bounds u >= d_m >= l on the model's state occupancy over every model whose rows
    lie in `rows`, by `steps` of the optimistic / pessimistic VI of W_t = (1 - g) e_t + g q . W_t
    from W = (W_up, W_low), valid starts (ones and zeros, or an earlier call's W for rows that
    allowed more): d_m(t) = rho0 . W_t."""
    eye = (1 - g) * np.eye(len(rho0))
    out = []
    for sign, Wk in zip((1.0, -1.0), W):
        for _ in range(steps):
            new = eye + g * np.where(rows.live[:, None], _rows_max(rows, Wk, sign), rows.P @ Wk)
            if rows.free.any():
                new[rows.free] = eye[rows.free] + g * sign * _masked_max(rows.K_any[rows.free], sign * Wk)
            step = float(np.abs(new - Wk).max())
            Wk = new
            if step < VI_TOL:
                break
        out.append(Wk)
    return rho0 @ out[0], rho0 @ out[1], tuple(out)


def unreached_gain(rows: _Rows, mdp: TabularMDP, allowed: np.ndarray, f_lo: np.ndarray, f_hi: np.ndarray,
                   Z: np.ndarray, steps: int) -> np.ndarray:
    """Z with rho0 . Z >= the most that the rows of the `free` states add to sum_t d_m(t) (q_t -
    P_t,a) . f_t,a when the model's other rows range over `rows`' sets (the box pricing: mass
    sent to the free states is not charged to the row that sends it), by `steps` of

        Z(t) = max_{a allowed} max_q (1 - g) (q . f_hi(t,a) - P(.|t,a) . f_lo(t,a)) + g q . Z
                                          (t free: any floored row on K(t, a)),
        Z(s) = g max_q q . Z              (other rows, in `rows`' sets),

    f_lo <= R + g V <= f_hi ((S, A, S)), from a valid start Z (>= Z*: the largest one-step
    term, or an earlier call's Z for rows that allowed more); monotone, so every iterate is
    valid."""
    g = mdp.gamma
    lo_all = np.where(mdp.K, mdp.floor, 0.0)
    Pf = np.sum(mdp.P * f_lo, axis=2)
    for _ in range(steps):
        kept = _rows_max(rows, Z[:, None], 1.0)[:, 0]
        h = (1 - g) * f_hi + g * Z[None, None, :]
        chosen = np.where(allowed, (lo_all * h).sum(axis=2) + (1 - lo_all.sum(axis=2))
                          * np.where(mdp.K, h, -np.inf).max(axis=2) - (1 - g) * Pf, -np.inf).max(axis=1)
        new = np.where(rows.free, chosen, np.where(rows.live, g * kept, g * rows.P @ Z))
        step = float(np.abs(new - Z).max())
        Z = new
        if step < VI_TOL:
            break
    return Z


def _rows_from(beta, w, cu, span_in, sigma_out, o_lo):
    """(tau, o_hi) from term_s <= beta_s through 2 w TV^2 - cu span_in TV + (w - cu sigma_out) o
    <= beta_s (1 where that does not bound the row: w = 0 or w <= cu sigma_out), or None when
    some row cannot keep its term below beta_s."""
    den = w - cu * sigma_out
    bounded = (w > 0) & (den > 0)
    safe_w, safe_den = np.where(bounded, w, 1.0), np.where(bounded, den, 1.0)
    o_hi = np.where(bounded, (beta + (cu * span_in) ** 2 / (8 * safe_w)) / safe_den, 1.0)
    disc = (cu * span_in) ** 2 + 8 * safe_w * (beta - safe_den * o_lo)
    if np.any(bounded & (disc < 0)):
        return None
    tau = np.where(bounded, (cu * span_in + np.sqrt(np.maximum(disc, 0.0))) / (4 * safe_w), 1.0)
    return tau, o_hi


def free_chain_gain(mdp: TabularMDP, free: np.ndarray, allowed: np.ndarray, V_lo: np.ndarray,
                    V_hi: np.ndarray) -> np.ndarray:
    """Z, 0 off the `free` states (live states pi does not reach) and at least the fixed point of

        Z(t) = max_{a allowed} max_q (1 - g) (q - P_ta) . (R_ta + g V) + g q . Z     (t free)

    over q the floored rows on K(t, a) and V in [V_lo, V_hi] (the values of every completion),
    so that (1 - g) sum_t d_m(t) (q_t - P_t) . f_t over the free states is at most Z . (the
    mass entering them). With D = q - P the inner term is D . R_ta + g (D+ . V_hi - D- . V_lo),
    convex in q, so its max is at a vertex q_j = lo + m e_j (j in K(t, a), m = 1 - sum lo).
    Value iteration from 0 to a residual delta, plus g delta / (1 - g) (the contraction's
    distance to its fixed point)."""
    g = mdp.gamma
    Z = np.zeros(mdp.n_states)
    if not free.any():
        return Z
    F = np.flatnonzero(free)
    K, P, R = mdp.K[F], mdp.P[F], mdp.R[F]                         # (F, A, S)
    lo = np.where(K, mdp.floor, 0.0)
    m = 1.0 - lo.sum(axis=2, keepdims=True)
    base = lo - P

    def phi(x):                                                     # D+ . V_hi - D- . V_lo, entrywise
        return np.maximum(x, 0.0) * V_hi - np.maximum(-x, 0.0) * V_lo

    h = ((base * R).sum(axis=2, keepdims=True) + m * R
         + g * (phi(base).sum(axis=2, keepdims=True) + phi(base + m) - phi(base)))
    ok = K & allowed[F][:, :, None]
    for _ in range(FREE_VI_STEPS):
        tot = (1 - g) * h + g * ((lo * Z).sum(axis=2, keepdims=True) + m * Z)
        new = np.zeros_like(Z)
        new[F] = np.where(ok, tot, -np.inf).max(axis=(1, 2))
        delta = float(np.abs(new - Z).max())
        Z = new
        if delta <= VI_TOL * max(1.0, float(np.abs(Z).max())):
            break
    return np.where(free, Z + g * delta / (1 - g), 0.0)


def completion_values(mdp: TabularMDP, actions, d: np.ndarray, V: np.ndarray, allowed=None):
    """[V_lo, V_hi]: the values in M of every policy that agrees with `actions` on the states it
    reaches (d > 0) and chooses from `allowed` ((S, A) bool; default every action) elsewhere:
    V there, the min- and max-VI elsewhere (bilevel.equilibria.exact.completion_box)."""
    reached = d > 0
    if reached.all():
        return V, V
    rest = np.ones((mdp.n_states, mdp.n_actions), dtype=bool) if allowed is None else allowed
    mask = np.where(reached[:, None], np.eye(mdp.n_actions, dtype=bool)[np.asarray(actions)], rest)
    lo, hi = completion_box(mdp, mask, *outer_box(mdp))
    return np.where(reached, V, lo), np.where(reached, V, hi)


def _remaining(step: float, last: float, before: float) -> float:
    """What rounds still to come may add to the bound if its steps shrink geometrically (they
    do once the box is near its end) at the slower of the last two rates: step r / (1 - r),
    r = max(step / last, last / before); inf while r >= 1."""
    rates = [a / b if b > 0 and np.isfinite(b) else np.inf for a, b in ((step, last), (last, before))]
    r = max(rates)
    return step * r / (1 - r) if 0 <= r < 1 else np.inf


def occupancy_bound(mdp: TabularMDP, alpha: float, actions, band: float, d=None, V=None,
                    allowed=None, box=None) -> dict:
    """The bound of the module docstring for the deterministic policy `actions` and every policy
    that agrees with it on the states it reaches and chooses from `allowed` ((S, A) bool, default
    every action) elsewhere: "leader_lo", a lower bound on the leader of every model whose
    leader is at most `band` (so "out": True when it passes the band, i.e. no model has leader
    <= band with any of these policies), and the "rounds"."""
    g, S = mdp.gamma, mdp.n_states
    allowed = np.ones((S, mdp.n_actions), dtype=bool) if allowed is None else np.asarray(allowed)
    c = (1 - alpha) / (1 - g)
    actions = np.asarray(actions)
    if d is None or V is None:
        d, V = policy_occupancy_values(mdp, actions)
    J = float(mdp.rho0 @ V)
    states = np.arange(S)
    P, K, live = mdp.P[states, actions], mdp.K[states, actions], ~mdp.terminal
    lo = np.where(K, mdp.floor, 0.0)
    free = live & (d <= 0)
    V_lo, V_hi = completion_values(mdp, actions, d, V, allowed)
    f = mdp.R[states, actions] + g * V[None, :]
    f_hi = mdp.R[states, actions] + g * V_hi[None, :]
    w = np.where(live, alpha * d, 0.0)
    supp, off = P > 0, K & ~(P > 0)
    # off supp P the target may be a state pi does not reach, counted with its highest value.
    # The free states' lies enter by two pricings, each a valid bound, the better one is kept
    # and each bounds the rows: the box pricing (`unreached_gain`, mass into F free of charge)
    # closes the box from the start; the chain pricing (`free_chain_gain`, the mass a reached
    # row sends into F priced in its psi at g Z / (1 - g)) is the tighter one near the band
    Z_chain = free_chain_gain(mdp, free, allowed, V_lo, V_hi)
    pricings = [(np.where(supp, f, f_hi + g / (1 - g) * Z_chain[None, :]), c * float(mdp.rho0 @ Z_chain))]
    fa_lo, fa_hi = (mdp.R + g * X[None, None, :] for X in (V_lo, V_hi))
    if free.any():
        pricings.append((np.where(supp, f, f_hi), None))
        Z_box = np.full(S, float(np.where((free[:, None] & allowed)[:, :, None] & mdp.K,
                                          fa_hi - np.sum(mdp.P * fa_lo, axis=2)[:, :, None], 0.0).max(initial=0.0)))
    span_in = np.where(supp, f, -np.inf).max(axis=1) - np.where(supp, f, np.inf).min(axis=1)
    sigma_outs = [np.where(off.any(axis=1), np.maximum(
        0.0, np.where(off, fp, -np.inf).max(axis=1) - np.sum(P * fp, axis=1)), 0.0) for fp, _ in pricings]
    o_lo = np.where(off, lo, 0.0).sum(axis=1)
    # a parent class's box, rows and VI state hold for this class (its models are among the
    # parent's), so the rows are kept inside the parent's and the VI starts from its W
    u, l, W, tau_cap, o_cap = box or (np.ones(S), np.zeros(S), (np.ones((S, S)), np.zeros((S, S))),
                                      np.ones(S), np.ones(S))
    K_any = (mdp.K & allowed[:, :, None]).any(axis=1)
    rows = _Rows(P, K, lo, live, np.minimum(np.where(live, 1.0, 0.0), tau_cap), o_lo,
                 np.clip(np.minimum(np.where(live, 1.0, o_lo), o_cap), o_lo, 1.0), free, K_any)
    previous, last, before, was_settled = -np.inf, np.inf, np.inf, False
    bounded = was_bounded = np.zeros(S, dtype=bool)
    for rounds in range(1, MAX_ROUNDS + 1):
        psis, gains = [], []
        for fp, gain in pricings:
            psi = np.minimum(tilted_kl(w, P, fp, lo, K, c * l), tilted_kl(w, P, fp, lo, K, c * u))
            psis.append(np.where(live & ~free, psi, 0.0))
            if gain is None:
                Z_box = unreached_gain(rows, mdp, allowed, fa_lo, fa_hi, Z_box, VI_STEPS)
                gain = c * float(mdp.rho0 @ Z_box)
            gains.append(gain)
        bound = max(-(1 - alpha) * J + float(psi.sum()) - gain for psi, gain in zip(psis, gains))
        step = bound - previous
        # the geometric give-up only once the set of bounded rows has not changed for two rounds
        # (while the box still closes on more states the steps do not shrink geometrically)
        settled = np.array_equal(bounded, was_bounded)
        if bound > band or abs(step) <= STALL * abs(bound) or \
                (settled and was_settled and bound + 5 * _remaining(step, last, before) < band):
            break
        previous, last, before, was_settled, was_bounded = bound, step, last, settled, bounded
        for psi, gain, sigma_out in zip(psis, gains, sigma_outs):
            derived = _rows_from(band + (1 - alpha) * J - (psi.sum() - psi) + gain, w, c * u, span_in,
                                 sigma_out, o_lo)
            if derived is None:                 # no row of some state keeps the leader in the band
                bound = np.inf
                break
            tau_cap, o_cap = np.minimum(derived[0], tau_cap), np.clip(np.minimum(derived[1], o_cap), o_lo, 1.0)
        if bound == np.inf:
            break
        bounded = tau_cap < 1
        rows = _Rows(P, K, lo, live, tau_cap, o_lo, o_cap, free, K_any)
        u_new, l_new, W = occupancy_box(rows, mdp.rho0, g, W, VI_STEPS)
        u, l = np.minimum(u, u_new), np.maximum(l, l_new)
    return {"leader_lo": bound, "out": bound > band, "rounds": rounds, "box": (u, l, W, tau_cap, o_cap)}


def split_out(mdp: TabularMDP, alpha: float, actions, band: float, seconds: float, d=None, V=None) -> bool:
    """True when every policy that agrees with `actions` where it goes is out: `occupancy_bound`
    on the whole class, and, while it is not out, on its parts by the action at one state pi
    does not reach (the one whose completion values spread most), depth first, until every
    part is out (True) or one completion is not, or `seconds` pass (False). A part's values off
    Z(pi) are a sub-box of its parent's, so its bound is at least as tight."""
    t0 = time.perf_counter()
    actions = np.asarray(actions)
    if d is None or V is None:
        d, V = policy_occupancy_values(mdp, actions)
    free = ~mdp.terminal & (d <= 0)
    stack = [(np.ones((mdp.n_states, mdp.n_actions), dtype=bool), None)]
    while stack:
        if time.perf_counter() - t0 > seconds:
            return False
        allowed, box = stack.pop()
        r = occupancy_bound(mdp, alpha, actions, band, d=d, V=V, allowed=allowed, box=box)
        if r["out"]:
            continue
        open_ = free & (allowed.sum(axis=1) > 1)
        if not open_.any():
            return False
        V_lo, V_hi = completion_values(mdp, actions, d, V, allowed)
        t = int(np.argmax(np.where(open_, V_hi - V_lo, -np.inf)))
        for a in np.flatnonzero(allowed[t]):
            child = allowed.copy()
            child[t] = False
            child[t, a] = True
            stack.append((child, r["box"]))
    return True
