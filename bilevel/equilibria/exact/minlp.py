"""Global equilibrium intervals of MAL + agent reward as a MINLP over deterministic follower
policies (an alternative to branching on the complementarity pairs of the MPEC).

On the MAL family the leader optimum and the ends of the equilibrium interval are attained by
deterministic follower policies (for a fixed model the leader objective is linear in the true
occupancy on the face of model-optimal policies, and J(pi, Phat) = V*_Phat(rho0) is constant
there). So the follower is a binary policy and its optimality a big-M condition:

    x[s,a] in {0,1},  sum_a x[s,a] = 1                                    (live states)
    w[s,a] = V[s] - rhat(s,a) - g sum_t Phat[s,a,t] V[t] >= 0,   w[s,a] <= Mw[s,a] (1 - x[s,a])
    mu: flow of the policy in M,  mu[s,a] <= nubar[s] x[s,a]
    kl[s,a] >= sum_{t in supp P} P log(P / Phat)     (convex; kl only enters with weight mu >= 0,
    z[s,a]  >= mu[s,a] kl[s,a]                         so both hold with = at an optimum)
    leader  = alpha sum z - (1 - alpha) rho0 . V,   true_return = sum r mu / (1 - g)

The simulation bound. Alone, the relaxation lets V reach its optimistic bound wherever x is
fractional (the big-M rows are slack), and the leader's gap is (1 - alpha)(W_opt - V)(rho0). At
an integer point V is the value of the policy in Phat and mu its true occupancy, so (simulation
lemma, with the flow of mu)
    (1 - g) rho0 . V = sum mu r + sum mu Delta,   Delta(s,a) = sum_t (Phat - P)(t|s,a) (R + g V(t)).
Split Phat(.|s,a) into its mass o off supp P and q = Phat / (1 - o) on supp P: then
KL(P || Phat) = KL(P || q) + l, l = -log(1 - o) >= o, and by Pinsker TV(P, q) <= sqrt(KL(P || q) / 2), so
    Delta <= span_in TV(P, q) + span_out o,
span_in / span_out the widths of R + g V over supp P / from supp P to K - supp P under the V
bounds (a width over supp P pairs two different targets: 0 where P has one successor). With
h = mu TV(P, q) and y = mu l this is
    (1 - g) rho0 . V <= sum mu r + sum span_in h + sum span_out y,
    2 h^2 <= mu (z - y)   (a rotated cone: z - y >= mu KL(P || q)),   y >= l(|K - supp P| eta) mu,
all valid at every integer point, so the relaxation only gains what a lie can buy, about
(1 - alpha)^2 span^2 / (8 alpha (1 - g)^2) per unit of occupancy, instead of (1 - alpha) (W_opt - V).
The cone's tangent planes at a grid of slopes are added as linear rows (SCIP's own
linearizations left the root bound loose).

Bounds, all derived from the MDP (`minlp_bounds`):
    V        [W_rob, W_opt]: the hostile and optimistic fixed points over the floored simplices
             (FollowerStructure.value_bounds), since V = V*_Phat for some floored Phat;
    Mw       W_opt(s) - min_t Q_t(s,a; W_rob)  (the smallest one-step value any floored model
             can give the pair);
    Phat     [eta, 1 - (|K|-1) eta];
    mu       nubar[s] = max over policies of the occupancy of s (value iteration on 1{s});
    kl       [KL(P || P_eta), max over the floored simplex's vertices].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.contrib.solver.solvers.scip.scip_direct import ScipDirect

from bilevel.equilibria.certificates import model_reward
from bilevel.equilibria.exact.structure import FollowerStructure
from bilevel.equilibria.mpec_route import set_objective
from bilevel.game.formulations import BilevelModel, formulation
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import policy_evaluation, value_iteration
from bilevel.tabular.fits import kl_fit, kl_rows
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import deterministic_policy
from solvers.ipopt import Ipopt
from solvers.scip import Scip


FORMULATION = "MAL_agent_reward"
BOUND_SLACK = 1e-9       # relative widening of every bound computed by an iteration
NLP_IPOPT = {"bound_relax_factor": 0.0}
# slopes th of the cone's tangent planes 2 sqrt(2) h <= th mu + (z - y) / th; at the optimum th
# = sqrt(KL(P || q)) of a lie, ~1e-3 here; the grid spans 1 .. 1e-6, a factor 2 apart (so the
# planes overestimate sqrt(mu (z - y) / 2) by at most 6 %)
CONE_GRID = tuple(2.0 ** -k for k in range(21))


@dataclass(frozen=True)
class MINLPBounds:
    """Bounds of the MINLP's variables, derived from the MDP (module docstring)."""

    V_lo: np.ndarray       # (S,)
    V_hi: np.ndarray       # (S,)
    w_hi: np.ndarray       # (S, A) big-M of the Bellman slack
    nu_hi: np.ndarray      # (S,) largest occupancy of each state over all policies
    p_hi: np.ndarray       # (S, A) largest model probability on K(s,a)
    kl_lo: np.ndarray      # (S, A)
    kl_hi: np.ndarray      # (S, A)
    span_in: np.ndarray    # (S, A) max_{t != t' in supp P(.|s,a)} (R + g V_hi)(t) - (R + g V_lo)(t')
    span_out: np.ndarray   # (S, A) max over K - supp P of R + g V_hi - min over supp P of R + g V_lo
    ell_lo: np.ndarray     # (S, A) -log(1 - o) at the smallest model mass o off supp P (the floor)
    ell_hi: np.ndarray     # (S, A) ... at the largest (0 where K = supp P)


def _widen(lo, hi):
    return lo - BOUND_SLACK * np.maximum(1.0, np.abs(lo)), hi + BOUND_SLACK * np.maximum(1.0, np.abs(hi))


def _width(f_hi: np.ndarray, f_lo: np.ndarray) -> float:
    """max_{t != t'} f_hi(t) - f_lo(t') (>= 0; 0 for one point): a bound on max f - min f when
    f_lo <= f <= f_hi, since the max and the min of f at one point coincide."""
    if f_hi.size < 2:
        return 0.0
    d = f_hi[:, None] - f_lo[None, :]
    np.fill_diagonal(d, -np.inf)
    return max(0.0, float(d.max()))


def minlp_bounds(mdp: TabularMDP) -> MINLPBounds:
    """The bounds of the module docstring (floor eta > 0)."""
    S, A, g, eta = mdp.n_states, mdp.n_actions, mdp.gamma, mdp.floor
    fs = FollowerStructure(mdp, eta, np.zeros((S, A), dtype=bool))
    V_lo, V_hi = _widen(*fs.value_bounds)
    V_lo[mdp.terminal] = V_hi[mdp.terminal] = 0.0
    q_lo = fs.worst_free_values(V_lo)                  # min one-step value over floored models
    live = ~mdp.terminal
    w_hi = np.where(live[:, None], np.maximum(0.0, V_hi[:, None] - q_lo), 0.0)
    w_hi = w_hi + BOUND_SLACK * np.maximum(1.0, np.abs(w_hi))
    nu_hi = np.zeros(S)
    for s in np.flatnonzero(live):
        ind = np.zeros((S, A))
        ind[s] = 1.0
        V, _ = value_iteration(mdp.P, ind, g, tol=1e-12)
        nu_hi[s] = min(1.0, (1 - g) * float(mdp.rho0 @ V) * (1 + 1e-9) + 1e-12)
    k = mdp.K.sum(axis=-1)
    p_hi = 1.0 - (k - 1) * eta
    P = mdp.P
    Peta = kl_fit(P, mdp.K, eta)
    kl_lo = np.maximum(0.0, kl_rows(P, Peta) * (1 - 1e-9) - 1e-12)
    kl_hi = np.zeros((S, A))
    for s in np.flatnonzero(live):
        for a in range(A):
            kk = np.flatnonzero(mdp.K[s, a])
            nz = np.flatnonzero(P[s, a] > 0)
            best = 0.0
            for t in kk:                    # vertices of the floored simplex: the max of a convex fn
                q = np.where(mdp.K[s, a], eta, 0.0)
                q[t] = p_hi[s, a]
                best = max(best, float(np.sum(P[s, a, nz] * np.log(P[s, a, nz] / q[nz]))))
            kl_hi[s, a] = best * (1 + 1e-9) + 1e-12
    span_in, span_out = np.zeros((S, A)), np.zeros((S, A))
    ell_lo, ell_hi = np.zeros((S, A)), np.zeros((S, A))
    for s in np.flatnonzero(live):
        for a in range(A):
            f_hi, f_lo = mdp.R[s, a] + g * V_hi, mdp.R[s, a] + g * V_lo
            sup = P[s, a] > 0
            out = mdp.K[s, a] & ~sup
            span_in[s, a] = _width(f_hi[sup], f_lo[sup])
            if out.any():
                span_out[s, a] = max(0.0, float(np.max(f_hi[out]) - np.min(f_lo[sup])))
                ell_lo[s, a] = -np.log1p(-out.sum() * eta) * (1 - 1e-9)
                ell_hi[s, a] = -np.log(sup.sum() * eta) * (1 + 1e-9)
    span_in = span_in + BOUND_SLACK * np.maximum(1.0, np.abs(span_in))
    span_out = span_out + BOUND_SLACK * np.maximum(1.0, np.abs(span_out))
    return MINLPBounds(V_lo, V_hi, w_hi, nu_hi, p_hi, kl_lo, np.maximum(kl_hi, kl_lo), span_in, span_out,
                       ell_lo, ell_hi)


def minlp_applies(mdp: TabularMDP) -> bool:
    """The MINLP models tabular models under the discounted occupancy only."""
    return not mdp.averaged and not mdp.restricted


def build_minlp(mdp: TabularMDP, alpha: float, bounds: MINLPBounds | None = None) -> BilevelModel:
    """The MINLP of the module docstring as a BilevelModel (reduction "binary-policy"); the
    model has `leader` and `true_return` expressions and no objective."""
    if not mdp.floor > 0.0:
        raise ValueError("the MINLP needs a model floor eta > 0 (log Phat on the support of P)")
    if not minlp_applies(mdp):
        raise ValueError("the MINLP is for tabular models and the discounted occupancy (its flow, "
                         "loss weights and simulation bound are discounted)")
    b = bounds or minlp_bounds(mdp)
    S, A, g, eta = mdp.n_states, mdp.n_actions, mdp.gamma, mdp.floor
    P, R, K = mdp.P, mdp.R, mdp.K
    live = [s for s in range(S) if not mdp.terminal[s]]
    is_live = ~mdp.terminal
    if not all(K[s, a][P[s, a] > 0].all() for s in live for a in range(A)):
        raise ValueError("the model support K must contain the support of P")
    m = pyo.ConcreteModel(name=f"{mdp.name}_minlp")
    m.LIVE = pyo.Set(initialize=live, ordered=True)
    m.SA = pyo.Set(initialize=[(s, a) for s in live for a in range(A)], dimen=2, ordered=True)
    m.KSET = pyo.Set(initialize=[(s, a, t) for (s, a) in m.SA for t in range(S) if K[s, a, t]],
                     dimen=3, ordered=True)
    p_eta = kl_fit(P, K, eta)

    m.x = pyo.Var(m.SA, domain=pyo.Binary, initialize=0)
    m.one_action = pyo.Constraint(m.LIVE, rule=lambda m_, s: sum(m_.x[s, a] for a in range(A)) == 1)
    m.Phat = pyo.Var(m.KSET, bounds=lambda m_, s, a, t: (eta, float(b.p_hi[s, a])),
                     initialize=lambda m_, s, a, t: float(p_eta[s, a, t]))
    m.model_simplex = pyo.Constraint(m.SA, rule=lambda m_, s, a: sum(
        m_.Phat[s, a, t] for t in range(S) if K[s, a, t]) == 1.0)
    m.V = pyo.Var(m.LIVE, bounds=lambda m_, s: (float(b.V_lo[s]), float(b.V_hi[s])),
                  initialize=lambda m_, s: float(b.V_lo[s]))
    m.w = pyo.Var(m.SA, bounds=lambda m_, s, a: (0.0, float(b.w_hi[s, a])), initialize=0.0)

    def bellman(m_, s, a):
        reward = sum(float(R[s, a, t]) * m_.Phat[s, a, t] for t in range(S) if K[s, a, t] and R[s, a, t] != 0)
        ahead = sum(m_.Phat[s, a, t] * m_.V[t] for t in range(S) if K[s, a, t] and is_live[t])
        return m_.w[s, a] == m_.V[s] - reward - g * ahead

    m.bellman = pyo.Constraint(m.SA, rule=bellman)
    m.slack_off = pyo.Constraint(m.SA, rule=lambda m_, s, a:
                                 m_.w[s, a] <= float(b.w_hi[s, a]) * (1 - m_.x[s, a]))
    m.mu = pyo.Var(m.SA, bounds=lambda m_, s, a: (0.0, float(b.nu_hi[s])), initialize=0.0)
    m.flow = pyo.Constraint(m.LIVE, rule=lambda m_, t: sum(m_.mu[t, a] for a in range(A))
                            == (1 - g) * float(mdp.rho0[t])
                            + g * sum(float(P[s, a, t]) * m_.mu[s, a] for (s, a) in m_.SA if P[s, a, t] > 0))
    m.mu_on = pyo.Constraint(m.SA, rule=lambda m_, s, a: m_.mu[s, a] <= float(b.nu_hi[s]) * m_.x[s, a])
    m.kl = pyo.Var(m.SA, bounds=lambda m_, s, a: (float(b.kl_lo[s, a]), float(b.kl_hi[s, a])),
                   initialize=lambda m_, s, a: float(b.kl_lo[s, a]))

    def kl_def(m_, s, a):
        nz = np.flatnonzero(P[s, a] > 0)
        entropy = float(np.sum(P[s, a, nz] * np.log(P[s, a, nz])))
        return m_.kl[s, a] + sum(float(P[s, a, t]) * pyo.log(m_.Phat[s, a, t]) for t in nz) >= entropy

    m.kl_def = pyo.Constraint(m.SA, rule=kl_def)
    m.z = pyo.Var(m.SA, bounds=lambda m_, s, a: (0.0, float(b.nu_hi[s] * b.kl_hi[s, a])), initialize=0.0)
    m.z_def = pyo.Constraint(m.SA, rule=lambda m_, s, a: m_.z[s, a] >= m_.mu[s, a] * m_.kl[s, a])
    m.loss = pyo.Expression(expr=sum(m.z[s, a] for (s, a) in m.SA))
    m.J_model = pyo.Expression(expr=sum(float(mdp.rho0[s]) * m.V[s] for s in live if mdp.rho0[s] > 0))
    # the simulation bound (valid at integer x; module docstring)
    out = [(s, a) for (s, a) in m.SA if b.ell_hi[s, a] > 0]
    m.OUT = pyo.Set(initialize=out, dimen=2, ordered=True)
    m.y = pyo.Var(m.OUT, bounds=lambda m_, s, a: (0.0, float(b.nu_hi[s] * b.ell_hi[s, a])), initialize=0.0)
    m.y_floor = pyo.Constraint(m.OUT, rule=lambda m_, s, a: m_.y[s, a] >= float(b.ell_lo[s, a]) * m_.mu[s, a])
    m.h = pyo.Var(m.SA, bounds=lambda m_, s, a: (0.0, float(b.nu_hi[s] * min(1.0, np.sqrt(b.kl_hi[s, a] / 2)))),
                  initialize=0.0)
    m.v = pyo.Var(m.SA, bounds=lambda m_, s, a: (0.0, float(b.nu_hi[s] * b.kl_hi[s, a])), initialize=0.0)
    m.v_def = pyo.Constraint(m.SA, rule=lambda m_, s, a: m_.v[s, a] == m_.z[s, a]
                             - (m_.y[s, a] if (s, a) in m_.OUT else 0.0))
    m.h_def = pyo.Constraint(m.SA, rule=lambda m_, s, a: 2 * m_.h[s, a] ** 2 <= m_.mu[s, a] * m_.v[s, a])
    # the cone's tangent planes sqrt(mu v) <= (th mu + v / th) / 2 on a grid of th, in the LP from
    # the start (SCIP's own linearizations of the cone left the root bound loose)
    m.CONE_CUTS = pyo.Set(initialize=[(s, a, k) for (s, a) in m.SA for k in range(len(CONE_GRID))],
                          dimen=3, ordered=True)
    m.h_cuts = pyo.Constraint(m.CONE_CUTS, rule=lambda m_, s, a, k: 2 * np.sqrt(2) * m_.h[s, a]
                              <= CONE_GRID[k] * m_.mu[s, a] + m_.v[s, a] / CONE_GRID[k])
    m.simulation = pyo.Constraint(expr=(1 - g) * m.J_model <= sum(
        float(mdp.r[s, a]) * m.mu[s, a] + float(b.span_in[s, a]) * m.h[s, a] for (s, a) in m.SA)
        + sum(float(b.span_out[s, a]) * m.y[s, a] for (s, a) in m.OUT))
    w_loss, w_J = formulation(FORMULATION).objective_weights(alpha)
    m.leader = pyo.Expression(expr=w_loss * m.loss - w_J * m.J_model)
    m.true_return = pyo.Expression(expr=sum(float(mdp.r[s, a]) * m.mu[s, a] for (s, a) in m.SA) / (1 - g))
    return BilevelModel(FORMULATION, mdp, m, alpha, "binary-policy")


def actions_of(bm: BilevelModel) -> np.ndarray:
    """The deterministic policy in the model's x (argmax per live state; 0 on terminal ones)."""
    mdp, m = bm.mdp, bm.model
    acts = np.zeros(mdp.n_states, dtype=int)
    for s in m.LIVE:
        acts[s] = int(np.argmax([pyo.value(m.x[s, a]) for a in range(mdp.n_actions)]))
    return acts


def model_of(bm: BilevelModel) -> np.ndarray:
    """Phat (S, A, S) from the model's values, projected on the simplices; terminal self-loops."""
    mdp, m = bm.mdp, bm.model
    S = mdp.n_states
    Phat = np.zeros((S, mdp.n_actions, S))
    for s in range(S):
        if mdp.terminal[s]:
            Phat[s, :, s] = 1.0
    for (s, a, t) in m.KSET:
        Phat[s, a, t] = pyo.value(m.Phat[s, a, t])
    Phat = np.clip(Phat, 0.0, None)
    return Phat / Phat.sum(axis=-1, keepdims=True)


def policy_array(mdp: TabularMDP, actions) -> np.ndarray:
    """One-hot on live states, uniform on terminal ones (they carry no decision)."""
    pi = deterministic_policy(actions, mdp.n_actions)
    pi[mdp.terminal] = 1.0 / mdp.n_actions
    return pi


def point_from_arrays(bm: BilevelModel, actions, Phat: np.ndarray) -> ComponentMap:
    """Every variable of the MINLP at (deterministic policy `actions`, model Phat): V, w of the
    policy in Phat, its true occupancy mu, kl and z = mu kl."""
    mdp, m = bm.mdp, bm.model
    g = mdp.gamma
    pi = policy_array(mdp, actions)
    rhat = model_reward(mdp, Phat)
    V = policy_evaluation(Phat, rhat, g, pi)
    V[mdp.terminal] = 0.0
    Q = rhat + g * Phat @ V
    mu = occupancy(mdp.P, mdp.rho0, g, pi)
    kl = kl_rows(mdp.P, Phat)
    x = ComponentMap()
    for s in m.LIVE:
        x[m.V[s]] = float(V[s])
    for (s, a) in m.SA:
        chosen = a == actions[s]
        x[m.x[s, a]] = 1.0 if chosen else 0.0
        x[m.w[s, a]] = 0.0 if chosen else float(max(0.0, V[s] - Q[s, a]))
        x[m.mu[s, a]] = float(mu[s, a]) if chosen else 0.0
        x[m.kl[s, a]] = float(kl[s, a])
        x[m.z[s, a]] = float(mu[s, a] * kl[s, a]) if chosen else 0.0
        sup = mdp.P[s, a] > 0
        o = float(Phat[s, a, ~sup].sum())
        tv = 0.5 * float(np.abs(Phat[s, a, sup] / (1.0 - o) - mdp.P[s, a, sup]).sum())
        m_sa = float(mu[s, a]) if chosen else 0.0
        x[m.h[s, a]] = m_sa * tv
        x[m.v[s, a]] = max(0.0, x[m.z[s, a]] - (m_sa * float(-np.log1p(-o)) if (s, a) in m.OUT else 0.0))
        if (s, a) in m.OUT:
            x[m.y[s, a]] = m_sa * float(-np.log1p(-o))
    for (s, a, t) in m.KSET:
        x[m.Phat[s, a, t]] = float(Phat[s, a, t])
    return x


def _load(point) -> None:
    for v, val in point.items():
        v.set_value(val, skip_validation=True)


class _StartingScipDirect(ScipDirect):
    """Pyomo's scip_direct, adding full start solutions (every original SCIP variable,
    the objective's epigraph variable among them) before SCIP solves."""

    def __init__(self, starts=(), **kwds):
        super().__init__(**kwds)
        self._starts = tuple(starts)
        self.accepted = 0

    def _mipstart(self):
        scip = self._solver_model
        for point in self._starts:
            _load(point)
            sol = scip.createSol()
            for pyomo_var, scip_var in self._pyomo_var_to_solver_var_map.items():
                val = point[pyomo_var] if pyomo_var in point else pyomo_var.value
                scip.setSolVal(sol, scip_var, float(0.0 if val is None else val))
            if self._objective is not None:
                scip.setSolVal(sol, self._obj_var, float(pyo.value(self._objective.expr)))
            self.accepted += bool(scip.addSol(sol, free=True))


@dataclass(frozen=True)
class StartedScip(Scip):
    """`solvers.scip.Scip` (same parameters and status rules) with start solutions: `starts`
    are full points {VarData: value} handed to SCIP before it solves."""

    starts: tuple = field(default=(), compare=False)

    def _direct(self):
        return _StartingScipDirect(self.starts)

    def _solve_options(self) -> dict:
        return {"warmstart_discrete_vars": bool(self.starts)}

    def _timings(self, opt, scip) -> dict:
        return {"starts": len(self.starts), "starts_accepted": opt.accepted}


class FixedPolicyNLP:
    """The MINLP with the policy fixed, an NLP in (Phat, V, w, mu, kl, z), compiled once for
    IPOPT with the leader objective: the chosen pairs' slack w is fixed to 0 and the other pairs'
    occupancy to 0 (so the big-M rows and the policy rows are left out)."""

    def __init__(self, bm: BilevelModel, max_iter: int = 3000):
        self.bm = bm
        m = bm.model
        rows = (m.one_action, m.slack_off, m.mu_on, m.v_def, m.h_def, m.h_cuts, m.simulation)
        for c in rows:
            c.deactivate()
        for v in m.x.values():
            v.domain = pyo.UnitInterval
        set_objective(m, m.leader)
        try:
            self.nlp = Ipopt(tol=1e-10, max_iter=max_iter, options=NLP_IPOPT).compile(m)
        finally:
            for v in m.x.values():
                v.domain = pyo.Binary
            for c in rows:
                c.activate()

    def solve(self, actions, Phat: np.ndarray) -> np.ndarray | None:
        """A local minimizer of the leader objective over models for the policy `actions`,
        started at Phat; None when IPOPT fails."""
        bm, m = self.bm, self.bm.model
        start = point_from_arrays(bm, actions, Phat)
        _load(start)
        held = []
        for (s, a) in m.SA:
            v = m.w[s, a] if a == actions[s] else m.mu[s, a]
            held.append((v, v.ub))
            v.setub(0.0)
            v.set_value(0.0)
        try:
            res = self.nlp.solve(load=True)
        finally:
            for v, ub in held:
                v.setub(ub)
        if not res.ok:
            return None
        return model_of(bm)
