"""PAL, policy as leader: the policy maximizes its return in the model the follower fits to its
data.

    leader   -J(pi, Phat) = -sum d rhat / (1-g),  d the occupancy of pi in Phat
    follower Phat in argmin_Q l(Q, mu),  mu the true occupancy of pi: the floored fit P_eta on
             every pair with mu(s,a) > 0, anything on the floored simplex elsewhere
    gap      l(Phat, mu) - l(P_eta, mu)

The follower is reduced one of three ways in the MPEC:
    "closed_form":       its best-response set:
                         mu(s,a) >= 0  ⊥  sum_s' (Phat(s'|s,a) - P_eta(s'|s,a))^2 >= 0;
    "closed_form_split": the same set with linear sides, Phat - P_eta = up - down,
                         mu(s,a) ⊥ up(s,a,s'), mu(s,a) ⊥ down(s,a,s');
    "kkt":               multiplied-through KKT of the convex fit per (s,a):
                         mu(s,a) P(s'|s,a) = Phat(s'|s,a) (lambda(s,a) - nu(s,a,s')),  sum Phat = 1,
                         nu >= 0 ⊥ Phat - eta >= 0;
    "class_kkt":         under a restricted model class (the only reduction there): the KKT
                         system of the class's convex fit, derived by bilevel.mpec.kkt
                         (bilevel.game.class_follower).
"""
from __future__ import annotations

import numpy as np
import pyomo.environ as pyo
from pyomo.mpec import Complementarity, complements

from bilevel.game.base import CLASS_KKT, Formulation
from bilevel.game.class_follower import class_best_response, class_fit_kkt
from bilevel.game.build import model_reward_term
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.fits import kl_fit

PAL_REDUCTIONS = ("closed_form", "closed_form_split", "kkt")


class PAL(Formulation):
    """Policy as leader, model follower fitting the policy's data (module docstring)."""

    name = "PAL"
    label = "PAL"
    leader = "policy"
    follower = "model"
    reductions = PAL_REDUCTIONS
    exact_route = "closed_form"
    epsilon_closed_form = True
    closed_form_follower = True

    def objective_weights(self, alpha):
        """-J(pi, Phat): (w_l, w_J) = (0, 1)."""
        return 0.0, 1.0

    def best_response(self, mdp: TabularMDP, pi: np.ndarray, Phat: np.ndarray | None) -> np.ndarray:
        """The best response nearest Phat: P_eta on every pair pi visits in M (mu > 0), Phat
        elsewhere (P_eta everywhere when Phat is None)."""
        if mdp.restricted:
            return class_best_response(mdp, pi, Phat)
        fit = kl_fit(mdp.P, mdp.K, mdp.floor)
        if Phat is None:
            return fit
        visited = mdp.data_occupancy(pi) > 0
        return np.where(visited[:, :, None], fit, Phat)

    def follower_gap(self, mdp: TabularMDP, pi: np.ndarray, Phat: np.ndarray) -> float:
        """l(Phat, mu) - l(P_eta, mu) >= 0 (the excess loss with nu = mu)."""
        return self.excess_loss(mdp, pi, Phat)

    def add_game(self, m, mdp: TabularMDP, alpha, reduction: str) -> None:
        """Occupancy d of pi in Phat, J(pi, Phat) = sum d rhat / (1-g), leader -J(pi, Phat), and
        the model follower's best response by `reduction`."""
        g, S, eta = mdp.gamma, mdp.n_states, mdp.floor
        p_eta = kl_fit(mdp.P, mdp.K, eta)
        m.d = pyo.Var(m.S, m.A, bounds=(0.0, 1.0), initialize=lambda m_, s, a: pyo.value(m_.mu[s, a]))
        m.model_flow = pyo.Constraint(m.S, rule=lambda m_, t: sum(m_.d[t, a] for a in m_.A) == (1 - g) * mdp.rho0[t]
                                      + g * sum(m_.Phat[s, a, t] * m_.d[s, a] for (s, a) in m_.SA if mdp.K[s, a, t])
                                      + (g * sum(m_.d[t, a] for a in m_.A) if mdp.terminal[t] else 0.0))
        m.d_policy = pyo.Constraint(m.SA_LINK, rule=lambda m_, s, a:
                                    m_.d[s, a] == m_.pi[s, a] * sum(m_.d[s, b] for b in m_.A))
        for s in range(S):
            if mdp.terminal[s]:
                for a in range(1, mdp.n_actions):
                    m.d[s, a].fix(0.0)
        m.J_model = pyo.Expression(expr=sum(m.d[s, a] * model_reward_term(m, mdp, s, a)
                                            for (s, a) in m.SA) / (1 - g))
        m.leader = pyo.Expression(expr=-m.J_model)
        if reduction == CLASS_KKT:
            class_fit_kkt(m, mdp)
        elif reduction == "closed_form":
            # mu(s,a) >= 0  ⊥  z(s,a) = sum_s' (Phat - P_eta)^2 >= 0: the fit is exact where visited
            m.fit_error = pyo.Expression(m.SA, rule=lambda m_, s, a: sum(
                (m_.Phat[s, a, t] - float(p_eta[s, a, t])) ** 2 for t in range(S) if mdp.K[s, a, t]))
            m.best_response = Complementarity(m.SA, rule=lambda m_, s, a:
                                              complements(m_.mu[s, a] >= 0, m_.fit_error[s, a] >= 0))
        elif reduction == "closed_form_split":
            # the same best-response set with linear sides. Nondegenerate, so an active-set
            # polish can fix a branch (up = down = 0 is Phat = P_eta); more pairs, so not for SCIP
            m.fit_up = pyo.Var(m.KSET, bounds=(0.0, 1.0), initialize=0.0)
            m.fit_down = pyo.Var(m.KSET, bounds=(0.0, 1.0), initialize=0.0)
            m.fit_split = pyo.Constraint(m.KSET, rule=lambda m_, s, a, t: m_.Phat[s, a, t] - float(p_eta[s, a, t])
                                         == m_.fit_up[s, a, t] - m_.fit_down[s, a, t])
            m.best_response_up = Complementarity(m.KSET, rule=lambda m_, s, a, t:
                                                 complements(m_.mu[s, a] >= 0, m_.fit_up[s, a, t] >= 0))
            m.best_response_down = Complementarity(m.KSET, rule=lambda m_, s, a, t:
                                                   complements(m_.mu[s, a] >= 0, m_.fit_down[s, a, t] >= 0))
        else:
            n_k = int(mdp.K.sum(axis=-1).max())
            lam_hi = 1.0 / max(1e-12, 1.0 - n_k * eta)
            m.lam = pyo.Var(m.SA, bounds=(0.0, lam_hi), initialize=lambda m_, s, a: pyo.value(m_.mu[s, a]))
            m.nu = pyo.Var(m.KSET, bounds=(0.0, lam_hi), initialize=0.0)
            m.stationarity = pyo.Constraint(m.KSET, rule=lambda m_, s, a, t:
                                            m_.mu[s, a] * float(mdp.P[s, a, t])
                                            == m_.Phat[s, a, t] * (m_.lam[s, a] - m_.nu[s, a, t]))
            m.floor_slack = Complementarity(m.KSET, rule=lambda m_, s, a, t:
                                            complements(m_.nu[s, a, t] >= 0, m_.Phat[s, a, t] - eta >= 0))
