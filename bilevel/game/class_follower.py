"""The model follower under a restricted model class (bilevel.mdp.model_class).

    Phat in argmin_{theta_b in Theta_b} sum_{(s,a)} mu(s,a) CE(P(.|s,a), Phat_theta(.|s,a)),
    CE(p, q) = -sum_{t in supp p} p(t) log q(t),   Phat_theta(t|s,a) = sum_k theta_b(k) Phi_k(t|s,a)

is a convex program in (theta, Phat) with linear constraints (the class link and the floored
simplices), so its KKT conditions are necessary and sufficient; `class_fit_kkt` adds them to the
MPEC through `bilevel.mpec.kkt.kkt_reduce` (symbolic derivatives, none derived by hand). Unlike the
tabular class, a block tying several pairs has a fit that moves with the relative weights mu of
its pairs, so the best response is not "the fit where visited": no closed form is used.
"""
from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
from pyomo.mpec import Complementarity, complements

from bilevel.mdp.model import TabularMDP
from bilevel.mpec.kkt import Follower, kkt_reduce


def class_fit_kkt(m, mdp: TabularMDP) -> None:
    """The follower's KKT system: `unit_class_kkt` when every atom is a unit row (aggregated
    classes), else `mixture_class_kkt`."""
    if all(b.targets is not None for b in mdp.model_blocks.blocks):
        unit_class_kkt(m, mdp)
    else:
        mixture_class_kkt(m, mdp)


def unit_class_kkt(m, mdp: TabularMDP) -> None:
    """Unit atoms (theta_b(t) = Phat(t|s,a) for every pair of block b): the fit of block b is
        min_q -sum_t c_b(t) log q(t)  s.t.  sum_t q(t) = 1,  q >= eta,
        c_b(t) = sum_{(s,a) in b} mu(s,a) P(t|s,a),
    the tabular fit with the block's pooled counts (PAL's "kkt" reduction, pooled). Its KKT
    system multiplied through by q > 0 (polynomial, bounded multipliers, so SCIP can branch on
    it): c_b(t) = q(t) (lam_b - nu_b(t)),  nu_b(t) >= 0 ⊥ q(t) - eta >= 0, with
    0 <= lam_b, nu_b(t) <= 1 / (1 - n_b eta) (sum_t c_b(t) <= 1, as for one pair)."""
    cb, P, eta = mdp.model_blocks, mdp.P, mdp.floor
    n_max = max(b.n_atoms for b in cb.blocks)
    lam_hi = 1.0 / max(1e-12, 1.0 - n_max * eta)
    m.fit_lam = pyo.Var(m.BLOCKS, bounds=(0.0, lam_hi), initialize=1.0)
    m.fit_nu = pyo.Var(m.ATOMS, bounds=(0.0, lam_hi), initialize=0.0)

    def stationarity(m_, b, k):
        blk = cb.blocks[b]
        t = int(blk.targets[k])
        pooled = sum(float(P[s, a, t]) * m_.mu[s, a] for (s, a) in blk.pairs if P[s, a, t] > 0)
        return pooled == m_.theta[b, k] * (m_.fit_lam[b] - m_.fit_nu[b, k])

    m.fit_stationarity = pyo.Constraint(m.ATOMS, rule=stationarity)
    m.fit_floor = Complementarity(m.ATOMS, rule=lambda m_, b, k:
                                  complements(m_.fit_nu[b, k] >= 0, m_.theta[b, k] - eta >= 0))


def mixture_class_kkt(m, mdp: TabularMDP) -> None:
    """General atoms: the follower's KKT system as block `m.class_fit` (variables theta and Phat, constraints
    `theta_simplex` and `model_class`, theta >= eta). The bounds Phat >= lower bound and
    theta <= 1 are implied by the others and left out of the KKT system (pairs the follower
    never needs), then restored as plain bounds."""
    P = mdp.P
    objective = sum(m.mu[s, a] * sum(-float(P[s, a, t]) * pyo.log(m.Phat[s, a, t])
                                     for t in np.flatnonzero(P[s, a] > 0))
                    for (s, a) in m.SA)
    saved = []
    for v in list(m.Phat.values()):
        saved.append((v, v.bounds))
        v.setlb(None)
        v.setub(None)
    for v in list(m.theta.values()):
        saved.append((v, v.bounds))
        v.setub(None)
    try:
        kkt_reduce(m, Follower(variables=[m.theta, m.Phat], objective=objective,
                               constraints=[m.theta_simplex, m.model_class]), name="class_fit")
    finally:
        for v, (lb, ub) in saved:
            v.setlb(lb)
            v.setub(ub)


def class_best_response(mdp: TabularMDP, pi: np.ndarray, Phat: np.ndarray | None) -> np.ndarray:
    """The class fit to pi's data on every block pi visits, Phat's weights elsewhere (the fit
    to equal weights when Phat is None)."""
    cb = mdp.model_blocks
    fit, thetas, weighted = cb.fit(mdp.P, mdp.data_occupancy(pi))
    if Phat is None:
        return fit
    keep = cb.theta_of(Phat)
    return cb.lift([th if w else k for th, w, k in zip(thetas, weighted, keep)])
