"""The Pyomo pieces every formulation's single-level MPEC shares (docs/DESIGN.md sections 2 and 3).

Variables (all arrays are indexed like the numpy conventions):
    Phat[s,a,s']  model, on the support K (terminal rows fixed to the self-loop), Phat >= eta
    pi[s,a]       policy (rows on the simplex)
    mu[s,a]       true occupancy of pi in M:  sum_a mu(s',a) = (1-g) rho0(s') + g sum P(s'|s,a) mu(s,a),
                  mu(s,a) = pi(a|s) sum_b mu(s,b)
    V[s], w[s,a]  (policy follower) follower value in Phat and Bellman slack
                  w(s,a) = V(s) - rhat(s,a) - g sum_s' Phat(s'|s,a) V(s') >= 0,  pi ⊥ w
    kl[s,a]       KL(P(.|s,a) || Phat(.|s,a)), for the loss l(Phat, nu) = sum nu kl
with the model's reward rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s') (rewards known, transitions
learned: a model hides a goal through its transitions alone), and `true_return` =
J(pi, M) = sum mu r / (1-g), the quantity whose equilibrium interval is reported. Under
`occupancy: average`, mu is the averaged occupancy mu_T (`averaged_flow`) and `true_return` the
T-step return T sum mu_T r.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.mpec import Complementarity, complements

from bilevel.mdp.model import TabularMDP
from bilevel.tabular.policies import uniform_policy


@dataclass(frozen=True, eq=False)
class BilevelModel:
    """A single-level MPEC for one formulation, with named handles for the chain."""

    formulation: str            # the formulation's name (bilevel.game.formulation(name))
    mdp: TabularMDP
    model: pyo.ConcreteModel
    alpha: float | None
    reduction: str              # policy follower: "bellman"; PAL: "closed_form" | "closed_form_split" | "kkt"

    @property
    def leader(self):
        """Leader objective to minimize (Pyomo expression)."""
        return self.model.leader

    @property
    def true_return(self):
        return self.model.true_return


def base_model(mdp: TabularMDP) -> pyo.ConcreteModel:
    """Sets, the model Phat on K, the policy pi and its true occupancy mu (flow in M)."""
    S, A = mdp.n_states, mdp.n_actions
    g, P = mdp.gamma, mdp.P
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
    mu0 = random_data(mdp)
    p_eta = mdp.reference_fit()
    lo = model_lower_bounds(mdp)
    m.Phat = pyo.Var(m.KSET, bounds=lambda m_, s, a, t: (float(lo[s, a, t]), 1.0),
                     initialize=lambda m_, s, a, t: p_eta[s, a, t])
    if mdp.restricted:
        model_class_link(m, mdp, p_eta)
    else:
        m.model_simplex = pyo.Constraint(
            m.SA, rule=lambda m_, s, a: sum(m_.Phat[s, a, t] for t in range(S) if mdp.K[s, a, t]) == 1.0)
    m.pi = pyo.Var(m.SA, bounds=(0.0, 1.0), initialize=1.0 / A)
    m.policy_simplex = pyo.Constraint(m.LIVE, rule=lambda m_, s: sum(m_.pi[s, a] for a in m_.A) == 1.0)

    m.mu = pyo.Var(m.S, m.A, bounds=(0.0, 1.0), initialize=lambda m_, s, a: mu0[s, a])
    if mdp.averaged:
        averaged_flow(m, mdp, mu0.sum(axis=1))
    else:
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
    scale = mdp.horizon if mdp.averaged else 1.0 / (1 - g)      # T-step return: T sum mu_T r
    m.true_return = pyo.Expression(expr=scale * sum(r[s, a] * m.mu[s, a] for (s, a) in m.SA))
    return m


def model_lower_bounds(mdp: TabularMDP) -> np.ndarray:
    """The least value of Phat(t|s,a) over the models of the class (S,A,S): eta on K for the
    tabular class (`ClassBlocks.lower_bounds` otherwise)."""
    if mdp.restricted:
        return mdp.model_blocks.lower_bounds()
    return np.where(mdp.K, mdp.floor, 0.0)


def model_class_link(m, mdp: TabularMDP, p_start: np.ndarray) -> None:
    """A restricted model class (bilevel.mdp.model_class): weights theta[b, k] >= eta on the
    simplex of each block b, and every model entry on K their mixture,
        Phat(t|s,a) = sum_k theta[b(s,a), k] Phi_k(t|s,a)
    (this replaces the per-pair simplex of Phat, which it implies). `p_start`: a model of the
    class, whose weights start theta."""
    cb = mdp.model_blocks
    S = mdp.n_states
    thetas = cb.theta_of(p_start)
    m.BLOCKS = pyo.RangeSet(0, len(cb.blocks) - 1)
    m.ATOMS = pyo.Set(initialize=[(b, k) for b, blk in enumerate(cb.blocks) for k in range(blk.n_atoms)],
                      dimen=2, ordered=True)
    m.theta = pyo.Var(m.ATOMS, bounds=(mdp.floor, 1.0), initialize=lambda m_, b, k: float(thetas[b][k]))
    m.theta_simplex = pyo.Constraint(m.BLOCKS, rule=lambda m_, b: sum(
        m_.theta[b, k] for k in range(cb.blocks[b].n_atoms)) == 1.0)
    rows = [blk.rows(S) for blk in cb.blocks]
    where = {pair: (b, j) for b, blk in enumerate(cb.blocks) for j, pair in enumerate(blk.pairs)}

    def link(m_, s, a, t):
        b, j = where[(s, a)]
        Phi = rows[b][:, j, t]
        return m_.Phat[s, a, t] == sum(float(Phi[k]) * m_.theta[b, k] for k in np.flatnonzero(Phi))

    m.model_class = pyo.Constraint(m.KSET, rule=link)


def random_data(mdp: TabularMDP) -> np.ndarray:
    """mu_rand: the data occupancy of the uniform policy in M (the random-noise data)."""
    return mdp.data_occupancy(uniform_policy(mdp.n_states, mdp.n_actions))


def averaged_flow(m, mdp: TabularMDP, d_init: np.ndarray) -> None:
    """mu = mu_T for `occupancy: average`: state visits d[t, s] = Pr(s_t = s), t < T (variables
    visits[t, s] for t >= 1),
        d[0] = rho0,  d[t+1, s'] = sum_{s live, a} P(s'|s,a) pi(s,a) d[t, s] + sum_{s terminal} P(s'|s,.) d[t, s],
        sum_a mu(s,a) = (1/T) sum_t d[t, s]
    (with the link mu(s,a) = pi(s,a) sum_b mu(s,b): mu(s,a) = pi(a|s) (1/T) sum_t d[t, s]).
    `d_init`: the visits' initial value (the uniform policy's state occupancy)."""
    S, T, P = mdp.n_states, mdp.horizon, mdp.P
    d0 = np.asarray(mdp.rho0, dtype=float)
    m.TIME = pyo.RangeSet(1, T - 1) if T > 1 else pyo.Set(initialize=[])
    m.visits = pyo.Var(m.TIME, m.S, bounds=(0.0, 1.0), initialize=lambda m_, t, s: d_init[s])

    def visits(m_, t, s):
        return float(d0[s]) if t == 0 else m_.visits[t, s]

    def step(m_, t, u):
        live = sum(P[s, a, u] * m_.pi[s, a] * visits(m_, t - 1, s)
                   for (s, a) in m_.SA if P[s, a, u] > 0)
        dead = sum(P[s, 0, u] * visits(m_, t - 1, s) for s in range(S)
                   if mdp.terminal[s] and P[s, 0, u] > 0)
        return m_.visits[t, u] == live + dead

    m.visit_flow = pyo.Constraint(m.TIME, m.S, rule=step)
    m.flow = pyo.Constraint(m.S, rule=lambda m_, s: sum(m_.mu[s, a] for a in m_.A)
                            == (float(d0[s]) + sum(m_.visits[t, s] for t in m_.TIME)) / T)


def model_prob(m, mdp: TabularMDP, s: int, a: int, t: int):
    """Phat(t|s,a) as a Pyomo term (a constant on terminal rows and off the support)."""
    if mdp.terminal[s]:
        return 1.0 if s == t else 0.0
    return m.Phat[s, a, t] if mdp.K[s, a, t] else 0.0


def model_reward_term(m, mdp: TabularMDP, s: int, a: int):
    """rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s') as a Pyomo term."""
    return sum(mdp.R[s, a, t] * m.Phat[s, a, t] for t in range(mdp.n_states)
               if mdp.K[s, a, t] and mdp.R[s, a, t] != 0.0)


def value_bounds(mdp: TabularMDP) -> tuple[float, float]:
    """Any model's values lie in [min(0, min_K R), max(0, max_K R)] / (1-g)."""
    Rk = mdp.R[mdp.K & ~mdp.terminal[:, None, None]]
    lo = min(0.0, float(Rk.min(initial=0.0))) / (1 - mdp.gamma)
    hi = max(0.0, float(Rk.max(initial=0.0))) / (1 - mdp.gamma)
    return lo, hi


def policy_follower(m, mdp: TabularMDP) -> None:
    """Bellman optimality of pi in Phat at every state:
    w(s,a) = V(s) - rhat(s,a) - g sum_s' Phat(s'|s,a) V(s') >= 0,  pi(a|s) ⊥ w(s,a)."""
    g, S = mdp.gamma, mdp.n_states
    lo, hi = value_bounds(mdp)
    m.V = pyo.Var(m.S, bounds=(lo, hi), initialize=0.0)
    for s in range(S):
        if mdp.terminal[s]:
            m.V[s].fix(0.0)
    m.w = pyo.Var(m.SA, bounds=(0.0, hi - lo), initialize=0.0)
    m.bellman = pyo.Constraint(m.SA, rule=lambda m_, s, a: m_.w[s, a] == m_.V[s] - model_reward_term(m_, mdp, s, a)
                               - g * sum(m_.Phat[s, a, t] * m_.V[t] for t in range(S)
                                         if mdp.K[s, a, t] and not mdp.terminal[t]))
    m.optimality = Complementarity(m.SA, rule=lambda m_, s, a: complements(m_.pi[s, a] >= 0, m_.w[s, a] >= 0))


def kl_loss(m, mdp: TabularMDP, weights=None):
    """l(Phat, nu) = sum_{s,a} nu(s,a) kl(s,a),  kl(s,a) = sum_{s' in supp P} P log(P / Phat) >= 0
    (Gibbs: a valid bound that lets a global solver see l >= 0), with nu = mu, or with
    weights = (a, c) the mixture nu = a mu + c (c a constant (S,A) array)."""
    P = mdp.P
    lo = model_lower_bounds(mdp)
    kl_hi = -np.log(max(float(np.min(lo[(P > 0) & ~mdp.terminal[:, None, None]], initial=1.0)), 1e-300))
    m.kl = pyo.Var(m.SA, bounds=(0.0, kl_hi), initialize=0.0)

    def kl_def(m_, s, a):
        nz = np.flatnonzero(P[s, a] > 0)
        entropy = float(np.sum(P[s, a, nz] * np.log(P[s, a, nz])))
        return m_.kl[s, a] == entropy - sum(float(P[s, a, t]) * pyo.log(m_.Phat[s, a, t]) for t in nz)

    m.kl_def = pyo.Constraint(m.SA, rule=kl_def)
    if weights is None:
        return sum(m.mu[s, a] * m.kl[s, a] for (s, a) in m.SA)
    a_mu, c = weights
    return sum((a_mu * m.mu[s, a] + float(c[s, a])) * m.kl[s, a] for (s, a) in m.SA)


def extract(bm: BilevelModel) -> dict:
    """Arrays (policy (S,A), model (S,A,S)) from the model's current values."""
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
    if hasattr(m, "theta"):       # a restricted class: the model of the weights, a member
        cb = mdp.model_blocks
        thetas = []
        for b, blk in enumerate(cb.blocks):
            th = np.array([pyo.value(m.theta[b, k]) for k in range(blk.n_atoms)])
            thetas.append(floored_simplex(th, mdp.floor))
        return {"policy": pi, "model": cb.lift(thetas)}
    Phat = np.clip(Phat, 0.0, None)
    Phat /= Phat.sum(axis=-1, keepdims=True)
    return {"policy": pi, "model": Phat}


def floored_simplex(theta: np.ndarray, eta: float) -> np.ndarray:
    """theta with solver noise removed: clipped at eta, then rescaled above eta to sum 1."""
    x = np.clip(theta, eta, None) - eta
    room = 1.0 - eta * len(theta)
    return eta + (x / x.sum() * room if x.sum() > 0 else room / len(theta))
