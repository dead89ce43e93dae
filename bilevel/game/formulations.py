"""The four bilevel problems of model-based RL as single-level Pyomo MPECs (docs/DESIGN.md sections 2 and 3).

Variables (all arrays are indexed like the numpy conventions):
    Phat[s,a,s']  model, on the support K (terminal rows fixed to the self-loop), Phat >= eta
    pi[s,a]       policy (rows on the simplex)
    mu[s,a]       true occupancy of pi in M:  sum_a mu(s',a) = (1-g) rho0(s') + g sum P(s'|s,a) mu(s,a),
                  mu(s,a) = pi(a|s) sum_b mu(s,b)
    V[s], w[s,a]  (MAL family) follower value in Phat and Bellman slack
                  w(s,a) = V(s) - rhat(s,a) - g sum_s' Phat(s'|s,a) V(s') >= 0,  pi ⊥ w
    d[s,a]        (PAL) occupancy of pi in Phat (flow with Phat, bilinear)
with the model's reward rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s') (rewards known, transitions
learned: a model hides a goal through its transitions alone).

Leader objectives, all written as `leader` to MINIMIZE:
    PAL               -J(pi, Phat) = -sum d rhat / (1-g)
    MAL               l(Phat, mu)                      = sum mu(s,a) KL(P(.|s,a) || Phat(.|s,a))
    MAL_agent_reward  alpha l(Phat, mu) - (1-alpha) J(pi, Phat),   J(pi, Phat) = rho0 . V
    MAL_random_noise  l(Phat, alpha mu + (1-alpha) mu_rand),        mu_rand = occupancy of uniform pi in M
and `true_return` = J(pi, M) = sum mu r / (1-g), the quantity whose equilibrium interval we report.

The PAL follower (model fit) is reduced one of two ways:
    "closed_form": its best-response set is known: Phat(.|s,a) = P_eta(.|s,a) wherever mu(s,a) > 0
                   (the floored KL fit), anything where mu(s,a) = 0:
                   mu(s,a) >= 0  ⊥  sum_s' (Phat(s'|s,a) - P_eta(s'|s,a))^2 >= 0.
    "kkt":         multiplied-through KKT of the convex fit per (s,a):
                   mu(s,a) P(s'|s,a) = Phat(s'|s,a) (lambda(s,a) - nu(s,a,s')),  sum Phat = 1,
                   nu >= 0 ⊥ Phat - eta >= 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.mpec import Complementarity, complements

from bilevel.mdp.model import TabularMDP
from bilevel.tabular.fits import kl_fit
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import uniform_policy

FORMULATIONS = ("PAL", "MAL", "MAL_agent_reward", "MAL_random_noise")
# Default alphas. MAL_agent_reward: inside the (narrow) range where hidden_goal's equilibrium
# interval sits at the optimum (`python -m bilevel.solve mdps/hidden_goal.yaml --alpha-sweep`,
# IPOPT, local): at alpha = 0.95 / 0.995 the leader optimum is an optimistic lie (the model
# over-promises on a lightly visited pair and the policy takes the decoy), at 0.999 the band still
# holds the decoy, at 0.9999 the interval is [J*, J*]. The lie gains (1-alpha) R/(1-g) per unit of
# invented probability against a loss of about mu(s,a) per unit, hence alpha close to 1.
# MAL_random_noise: any alpha < 1 removes the hiding equilibrium when the uniform policy visits
# every reachable pair; 0.5 is at the optimum on hidden_goal (SCIP, global).
DEFAULT_ALPHA = {"MAL_agent_reward": 0.9999, "MAL_random_noise": 0.5}
PAL_REDUCTIONS = ("closed_form", "closed_form_split", "kkt")


def resolve_alpha(formulation: str, alpha: float | None = None) -> float | None:
    """The alpha a formulation uses: None for PAL and MAL, else `alpha` or its default."""
    if formulation not in DEFAULT_ALPHA:
        return None
    alpha = DEFAULT_ALPHA[formulation] if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha


@dataclass(frozen=True, eq=False)
class BilevelModel:
    """A single-level MPEC for one formulation, with named handles for the chain."""

    formulation: str
    mdp: TabularMDP
    model: pyo.ConcreteModel
    alpha: float | None
    reduction: str              # MAL family: "bellman"; PAL: "closed_form" | "closed_form_split" | "kkt"

    @property
    def leader(self):
        """Leader objective to minimize (Pyomo expression)."""
        return self.model.leader

    @property
    def true_return(self):
        return self.model.true_return


def build(mdp: TabularMDP, formulation: str, alpha: float | None = None,
          pal_reduction: str = "closed_form") -> BilevelModel:
    """The single-level model of `formulation` on `mdp` (no objective set: see equilibria)."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r} (choose from {', '.join(FORMULATIONS)})")
    alpha = resolve_alpha(formulation, alpha)
    m = _base(mdp)
    if formulation == "PAL":
        if pal_reduction not in PAL_REDUCTIONS:
            raise ValueError(f"unknown PAL reduction {pal_reduction!r}")
        _pal(m, mdp, pal_reduction)
        red = pal_reduction
    else:
        _policy_follower(m, mdp)
        loss_weights = None
        if formulation == "MAL_random_noise":
            mu_rand = occupancy(mdp.P, mdp.rho0, mdp.gamma, uniform_policy(mdp.n_states, mdp.n_actions))
            loss_weights = (alpha, (1.0 - alpha) * mu_rand)
        loss = _loss(m, mdp, loss_weights)
        m.loss = pyo.Expression(expr=loss)
        if formulation == "MAL_agent_reward":
            m.J_model = pyo.Expression(expr=sum(mdp.rho0[s] * m.V[s] for s in m.S if mdp.rho0[s] > 0))
            m.leader = pyo.Expression(expr=alpha * m.loss - (1.0 - alpha) * m.J_model)
        else:
            m.leader = pyo.Expression(expr=m.loss)
        red = "bellman"
    return BilevelModel(formulation, mdp, m, alpha, red)


# --------------------------------------------------------------------------- pieces

def _base(mdp: TabularMDP) -> pyo.ConcreteModel:
    """Sets, the model Phat on K, the policy pi and its true occupancy mu (flow in M)."""
    S, A = mdp.n_states, mdp.n_actions
    g, P, eta = mdp.gamma, mdp.P, mdp.floor
    m = pyo.ConcreteModel(name=mdp.name)
    m.S = pyo.RangeSet(0, S - 1)
    m.A = pyo.RangeSet(0, A - 1)
    live = [s for s in range(S) if not mdp.terminal[s]]
    m.LIVE = pyo.Set(initialize=live, ordered=True)
    m.SA = pyo.Set(initialize=[(s, a) for s in live for a in range(A)], dimen=2, ordered=True)
    # the occupancy-policy link for the last action follows from the simplex rows: leaving it
    # out keeps the constraint Jacobian full rank (LICQ), which IPOPT needs
    m.SA_LINK = pyo.Set(initialize=[(s, a) for s in live for a in range(A - 1)], dimen=2, ordered=True)
    m.KSET = pyo.Set(initialize=[(s, a, t) for (s, a) in m.SA for t in range(S) if mdp.K[s, a, t]],
                     dimen=3, ordered=True)
    p_eta = kl_fit(P, mdp.K, eta)
    m.Phat = pyo.Var(m.KSET, bounds=(eta, 1.0), initialize=lambda m_, s, a, t: p_eta[s, a, t])
    m.model_simplex = pyo.Constraint(
        m.SA, rule=lambda m_, s, a: sum(m_.Phat[s, a, t] for t in range(S) if mdp.K[s, a, t]) == 1.0)
    m.pi = pyo.Var(m.SA, bounds=(0.0, 1.0), initialize=1.0 / A)
    m.policy_simplex = pyo.Constraint(m.LIVE, rule=lambda m_, s: sum(m_.pi[s, a] for a in m_.A) == 1.0)

    mu0 = occupancy(P, mdp.rho0, g, uniform_policy(S, A))
    m.mu = pyo.Var(m.S, m.A, bounds=(0.0, 1.0), initialize=lambda m_, s, a: mu0[s, a])
    m.flow = pyo.Constraint(m.S, rule=lambda m_, t: sum(m_.mu[t, a] for a in m_.A) == (1 - g) * mdp.rho0[t]
                            + g * sum(P[s, a, t] * m_.mu[s, a] for s in m_.S for a in m_.A if P[s, a, t] > 0))
    m.mu_policy = pyo.Constraint(m.SA_LINK, rule=lambda m_, s, a:
                                 m_.mu[s, a] == m_.pi[s, a] * sum(m_.mu[s, b] for b in m_.A))
    # in terminal states the action split is irrelevant: fix it to keep the model bounded
    for s in range(S):
        if mdp.terminal[s]:
            for a in range(1, A):
                m.mu[s, a].fix(0.0)
    r = mdp.r
    m.true_return = pyo.Expression(expr=sum(r[s, a] * m.mu[s, a] for (s, a) in m.SA) / (1 - g))
    return m


def model_prob(m, mdp: TabularMDP, s: int, a: int, t: int):
    """Phat(t|s,a) as a Pyomo term (a constant on terminal rows and off the support)."""
    if mdp.terminal[s]:
        return 1.0 if s == t else 0.0
    return m.Phat[s, a, t] if mdp.K[s, a, t] else 0.0


def _model_reward(m, mdp, s, a):
    """rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s')."""
    return sum(mdp.R[s, a, t] * m.Phat[s, a, t] for t in range(mdp.n_states)
               if mdp.K[s, a, t] and mdp.R[s, a, t] != 0.0)


def value_bounds(mdp: TabularMDP) -> tuple[float, float]:
    """Any model's values lie in [min(0, min_K R), max(0, max_K R)] / (1-g)."""
    Rk = mdp.R[mdp.K & ~mdp.terminal[:, None, None]]
    lo = min(0.0, float(Rk.min(initial=0.0))) / (1 - mdp.gamma)
    hi = max(0.0, float(Rk.max(initial=0.0))) / (1 - mdp.gamma)
    return lo, hi


def _policy_follower(m, mdp: TabularMDP) -> None:
    """Bellman optimality of pi in Phat at every state:
    w(s,a) = V(s) - rhat(s,a) - g sum_s' Phat(s'|s,a) V(s') >= 0,  pi(a|s) ⊥ w(s,a)."""
    g, S = mdp.gamma, mdp.n_states
    lo, hi = value_bounds(mdp)
    m.V = pyo.Var(m.S, bounds=(lo, hi), initialize=0.0)
    for s in range(S):
        if mdp.terminal[s]:
            m.V[s].fix(0.0)
    m.w = pyo.Var(m.SA, bounds=(0.0, hi - lo), initialize=0.0)
    m.bellman = pyo.Constraint(m.SA, rule=lambda m_, s, a: m_.w[s, a] == m_.V[s] - _model_reward(m_, mdp, s, a)
                               - g * sum(m_.Phat[s, a, t] * m_.V[t] for t in range(S)
                                         if mdp.K[s, a, t] and not mdp.terminal[t]))
    m.optimality = Complementarity(m.SA, rule=lambda m_, s, a: complements(m_.pi[s, a] >= 0, m_.w[s, a] >= 0))


def _loss(m, mdp: TabularMDP, weights=None):
    """l(Phat, nu) = sum_{s,a} nu(s,a) kl(s,a),  kl(s,a) = sum_{s' in supp P} P log(P / Phat) >= 0
    (Gibbs: a valid bound that lets a global solver see l >= 0), with nu = mu or the
    random-noise mixture nu = alpha mu + c (c constant)."""
    P, eta = mdp.P, mdp.floor
    kl_hi = -np.log(max(eta, 1e-300))
    m.kl = pyo.Var(m.SA, bounds=(0.0, kl_hi), initialize=0.0)

    def kl_def(m_, s, a):
        nz = np.flatnonzero(P[s, a] > 0)
        entropy = float(np.sum(P[s, a, nz] * np.log(P[s, a, nz])))
        return m_.kl[s, a] == entropy - sum(float(P[s, a, t]) * pyo.log(m_.Phat[s, a, t]) for t in nz)

    m.kl_def = pyo.Constraint(m.SA, rule=kl_def)
    if weights is None:
        return sum(m.mu[s, a] * m.kl[s, a] for (s, a) in m.SA)
    alpha, c = weights
    return sum((alpha * m.mu[s, a] + float(c[s, a])) * m.kl[s, a] for (s, a) in m.SA)


def _pal(m, mdp: TabularMDP, reduction: str) -> None:
    """PAL: occupancy d of pi in Phat, J(pi, Phat) = sum d rhat / (1-g), model best response."""
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
    m.J_model = pyo.Expression(expr=sum(m.d[s, a] * _model_reward(m, mdp, s, a) for (s, a) in m.SA) / (1 - g))
    m.leader = pyo.Expression(expr=-m.J_model)
    if reduction == "closed_form":
        # mu(s,a) >= 0  ⊥  z(s,a) = sum_s' (Phat - P_eta)^2 >= 0: the fit is exact where visited
        m.fit_error = pyo.Expression(m.SA, rule=lambda m_, s, a: sum(
            (m_.Phat[s, a, t] - float(p_eta[s, a, t])) ** 2 for t in range(S) if mdp.K[s, a, t]))
        m.best_response = Complementarity(m.SA, rule=lambda m_, s, a:
                                          complements(m_.mu[s, a] >= 0, m_.fit_error[s, a] >= 0))
    elif reduction == "closed_form_split":
        # the same best-response set with linear sides: Phat - P_eta = up - down, and per entry
        # mu(s,a) ⊥ up(s,a,s'), mu(s,a) ⊥ down(s,a,s'). Nondegenerate, so an active-set polish
        # can fix a branch (up = down = 0 is Phat = P_eta); more pairs, so not for SCIP
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


# --------------------------------------------------------------------------- reading back

def extract(bm: BilevelModel) -> dict:
    """Arrays (policy (S,A), model (S,A,S), occupancy (S,A), V) from the model's current values."""
    mdp, m = bm.mdp, bm.model
    S, A = mdp.n_states, mdp.n_actions
    pi = uniform_policy(S, A)
    Phat = np.zeros((S, A, S))
    for s in range(S):
        if mdp.terminal[s]:
            Phat[s, :, s] = 1.0
    for (s, a) in m.SA:
        pi[s, a] = pyo.value(m.pi[s, a])
    for (s, a, t) in m.KSET:
        Phat[s, a, t] = pyo.value(m.Phat[s, a, t])
    # clean solver noise: project onto the simplices
    pi = np.clip(pi, 0.0, None)
    pi /= pi.sum(axis=1, keepdims=True)
    Phat = np.clip(Phat, 0.0, None)
    Phat /= Phat.sum(axis=-1, keepdims=True)
    return {"policy": pi, "model": Phat}
