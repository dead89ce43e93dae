"""Independent certificates of a point (pi, Phat), recomputed from arrays without the MPEC.

    follower gap   PAL: l(Phat, mu) - l(P_eta-fit, mu);  MAL family: max_s (V*_Phat - V^pi_Phat)(s)
    band           leader(pi, Phat) <= L* + tol
"""
from __future__ import annotations

import numpy as np

from bilevel.equilibria.interval import Equilibrium
from bilevel.game.formulations import BilevelModel, extract
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import episode_reward, policy_evaluation, value_iteration
from bilevel.tabular.fits import kl_fit, model_loss
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import uniform_policy


FOLLOWER_GAP_TOL = 1e-6
FEASIBILITY_SLACK = 1e-5     # relative allowance for solver feasibility tolerances in checks


def model_reward(mdp: TabularMDP, Phat: np.ndarray) -> np.ndarray:
    """rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s')."""
    return np.einsum("ijk,ijk->ij", Phat, mdp.R)


def leader_value(formulation: str, mdp: TabularMDP, pi, Phat, alpha) -> float:
    """The leader objective (to minimize) evaluated from arrays, independently of the MPEC."""
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    J_model = float(mdp.rho0 @ policy_evaluation(Phat, model_reward(mdp, Phat), mdp.gamma, pi))
    if formulation == "PAL":
        return -J_model
    if formulation == "MAL":
        return model_loss(mdp.P, Phat, mu)
    if formulation == "MAL_agent_reward":
        return alpha * model_loss(mdp.P, Phat, mu) - (1 - alpha) * J_model
    mu_rand = occupancy(mdp.P, mdp.rho0, mdp.gamma, uniform_policy(mdp.n_states, mdp.n_actions))
    return model_loss(mdp.P, Phat, alpha * mu + (1 - alpha) * mu_rand)


def follower_gap(formulation: str, mdp: TabularMDP, pi, Phat) -> float:
    """Policy follower: max_s V*_Phat(s) - V^pi_Phat(s) (value iteration in Phat).
    Model follower (PAL): l(Phat, mu_M^pi) - l(P_eta fit, mu_M^pi) (closed-form KL fit)."""
    if formulation == "PAL":
        mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
        best = kl_fit(mdp.P, mdp.K, mdp.floor)
        return max(0.0, model_loss(mdp.P, Phat, mu) - model_loss(mdp.P, best, mu))
    rhat = model_reward(mdp, Phat)
    V_star, _ = value_iteration(Phat, rhat, mdp.gamma, tol=1e-10)
    V_pi = policy_evaluation(Phat, rhat, mdp.gamma, pi)
    return max(0.0, float(np.max(V_star - V_pi)))


def snap_to_best_response(bm: BilevelModel) -> None:
    """PAL only: the model follower's best response is known in closed form (Phat = P_eta on
    every pair with mu_M^pi(s,a) > 0, anything elsewhere), so the solver's model is replaced by
    it on those rows. A relaxed complementarity leaves deviations of order eps / mu on rarely
    visited pairs; the snapped point is an exact equilibrium with the same policy (so the same
    J(pi, M)). Used on an interval end that fails its follower certificate; the band check
    stays on the solver's point and the change of the leader objective is reported."""
    if bm.formulation != "PAL":
        return
    mdp, m = bm.mdp, bm.model
    pi = extract(bm)["policy"]
    visited = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi) > 0
    Peta = kl_fit(mdp.P, mdp.K, mdp.floor)
    for (s, a, t) in m.KSET:
        if visited[s, a]:
            m.Phat[s, a, t].set_value(float(Peta[s, a, t]), skip_validation=True)


def certify_point(mdp: TabularMDP, formulation: str, alpha, pi: np.ndarray, Phat: np.ndarray,
                  violation: float | None = None) -> Equilibrium:
    """Every reported number of (pi, Phat), recomputed from the arrays: J(pi, M), episode
    reward, l(Phat, mu_M^pi), J(pi, Phat), the leader objective and the follower gap."""
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    J = float(mdp.rho0 @ policy_evaluation(mdp.P, mdp.r, mdp.gamma, pi))
    ep = episode_reward(mdp.P, mdp.r, mdp.rho0, pi, mdp.horizon) if mdp.horizon else None
    J_model = float(mdp.rho0 @ policy_evaluation(Phat, model_reward(mdp, Phat), mdp.gamma, pi))
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
    plus, for the MAL family, what the model floor can cost (2 floor |K(s,a)|)."""
    mdp = bm.mdp
    tol = 1e-6 * max(1.0, abs(L))
    if bm.formulation != "PAL":
        tol += 2.0 * mdp.floor * float(mdp.K.sum(axis=-1).max())
    return tol
