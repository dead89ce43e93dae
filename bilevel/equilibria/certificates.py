"""Independent certificates of a point (pi, Phat), recomputed from arrays without the MPEC.

    follower gap   PAL: l(Phat, mu) - l(P_eta-fit, mu);  MAL family: max_s (V*_Phat - V^pi_Phat)(s)
    band           leader(pi, Phat) <= L* + tol
"""
from __future__ import annotations

import numpy as np

import bilevel.game as game
from bilevel.equilibria.interval import Equilibrium
from bilevel.game.formulations import BilevelModel, extract
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import episode_reward, policy_return
from bilevel.tabular.fits import kl_fit, model_loss


FOLLOWER_GAP_TOL = 1e-6
FEASIBILITY_SLACK = 1e-5     # relative allowance for solver feasibility tolerances in checks


def model_reward(mdp: TabularMDP, Phat: np.ndarray) -> np.ndarray:
    """rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s') (TabularMDP.model_reward)."""
    return mdp.model_reward(Phat)


def leader_value(formulation: str, mdp: TabularMDP, pi, Phat, alpha) -> float:
    """The leader objective (to minimize) evaluated from arrays, independently of the MPEC
    (`Formulation.leader_value`)."""
    return game.formulation(formulation).leader_value(mdp, pi, Phat, alpha)


def follower_gap(formulation: str, mdp: TabularMDP, pi, Phat) -> float:
    """Policy follower: max_s V*_Phat(s) - V^pi_Phat(s) (value iteration in Phat).
    Model follower (PAL): l(Phat, mu_M^pi) - l(P_eta fit, mu_M^pi) (closed-form KL fit).
    (`Formulation.follower_gap`.)"""
    return game.formulation(formulation).follower_gap(mdp, pi, Phat)


def snap_to_best_response(bm: BilevelModel) -> None:
    """PAL only: the model follower's best response is known in closed form (Phat = P_eta on
    every pair with mu_M^pi(s,a) > 0, anything elsewhere), so the solver's model is replaced by
    it on those rows. A relaxed complementarity leaves deviations of order eps / mu on rarely
    visited pairs; the snapped point is an exact equilibrium with the same policy (so the same
    J(pi, M)). Used on an interval end that fails its follower certificate; the band check
    stays on the solver's point and the change of the leader objective is reported.
    A restricted class with unit atoms (aggregated): the class fit to mu_M^pi on every block pi
    visits, which is unique there (the pooled floored fit); general atoms are not snapped (the
    fit may not be unique)."""
    if not game.formulation(bm.formulation).closed_form_follower:
        return
    mdp, m = bm.mdp, bm.model
    pi = extract(bm)["policy"]
    mu = mdp.data_occupancy(pi)
    if mdp.restricted:
        cb = mdp.model_blocks
        if any(b.targets is None for b in cb.blocks):
            return
        fit, thetas, weighted = cb.fit(mdp.P, mu)
        for b, (theta, w) in enumerate(zip(thetas, weighted)):
            if w:
                for k, v in enumerate(theta):
                    m.theta[b, k].set_value(float(v), skip_validation=True)
        visited = (cb.block_of >= 0) & weighted[np.maximum(cb.block_of, 0)]
        Peta = fit
    else:
        visited = mu > 0
        Peta = kl_fit(mdp.P, mdp.K, mdp.floor)
    for (s, a, t) in m.KSET:
        if visited[s, a]:
            m.Phat[s, a, t].set_value(float(Peta[s, a, t]), skip_validation=True)


def certify_point(mdp: TabularMDP, formulation: str, alpha, pi: np.ndarray, Phat: np.ndarray,
                  violation: float | None = None) -> Equilibrium:
    """Every reported number of (pi, Phat), recomputed from the arrays: J(pi, M) (the T-step
    return under `occupancy: average`), episode reward, l(Phat, mu_M^pi) (mu the data
    occupancy), J(pi, Phat) (the agent's discounted value in the model), the leader objective
    and the follower gap."""
    mu = mdp.data_occupancy(pi)
    J = mdp.true_return(pi)
    ep = episode_reward(mdp.P, mdp.r, mdp.rho0, pi, mdp.horizon) if mdp.horizon else None
    J_model = policy_return(Phat, mdp.model_reward(Phat), mdp.rho0, mdp.gamma, pi)
    return Equilibrium(policy=pi, model=Phat, J=J, episode_reward=ep,
                       model_loss=model_loss(mdp.P, Phat, mu), J_model=J_model,
                       leader_objective=leader_value(formulation, mdp, pi, Phat, alpha),
                       follower_gap=follower_gap(formulation, mdp, pi, Phat),
                       complementarity_violation=violation)


def certify(bm: BilevelModel, violation: float | None) -> Equilibrium:
    """Read (pi, Phat) from the model and recompute every reported number (`certify_point`)."""
    x = extract(bm)
    return certify_point(bm.mdp, bm.formulation, bm.alpha, x["policy"], x["model"], violation)


def equilibrium_tolerance(bm: BilevelModel, L: float) -> float:
    """The band: (pi, Phat) is an equilibrium when leader <= L* + tol, tol = 1e-6 max(1, |L*|)
    plus the formulation's `band_allowance` (loss-based leaders: what the model floor can cost,
    2 floor max |K(s,a)|)."""
    return 1e-6 * max(1.0, abs(L)) + game.formulation(bm.formulation).band_allowance(bm.mdp)
