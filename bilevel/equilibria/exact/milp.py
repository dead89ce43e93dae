"""The MAL family's extreme equilibria as a MILP over deterministic follower policies
(docs/DESIGN.md section 5.2).

Variables (live states only; terminal values are 0):
    x[s,a] in {0,1}   the policy, sum_a x[s,a] = 1
    z[s]   in {0,1}   s counts as reached:  z[s] = 1 where rho0(s) > 0,
                      z[t] >= z[s] + x[s,a] - 1  for P(t|s,a) > 0   (z may over-cover Z(pi):
                      fitting an unvisited pair is one of the models the leader may choose)
    mu[s,a] >= 0      true occupancy of pi in M (flow), mu[s,a] <= x[s,a]
    V[s] in [W_rob(s), V_hi(s)]   pi's value in the equilibrium model
    y[s,a,t] in {0,1} free pair (s,a) may be sent to the floored delta at t
    u[s,a,t] in {0,1} (eta > 0) the model of pi's own unreached pair (s,a) is the delta at t
Constraints, with Q_v(s,a;V) = rv + g Pv V and Q_t the floored-delta values (structure.py):
    fitted pair, reached:  V[s] = Q_v(s,a;V)           if x[s,a] = z[s] = 1   (big-M)
    forced pair:           V[s] >= Q_v(s,a;V), and = if x[s,a] = 1
    free pair:             sum_t y[s,a,t] >= 1,  Q_t(s,a;V) - V[s] <= M (1 - y[s,a,t])
    own unreached pair:    sum_t u[s,a,t] >= x[s,a] - z[s],  V[s] - Q_t <= M (1 - u) + M z[s]
Objective: min or max  J(pi, M) = sum r mu / (1-g). Every big-M is derived from the bounds of
the variables in its row (interval arithmetic), and a target t is dropped from a pair when its
row can never hold, or the pair's row kept out when some target always holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bilevel.equilibria.exact.structure import Check, FollowerStructure
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import deterministic_policy
from solvers.base import SolveResult
from solvers.milp import MILP

FEAS = 1e-9   # rows whose bound-derived range is within this of satisfied count as always holding


class HidingMILP:
    """The MILP of one FollowerStructure; `solve(sense)` returns (SolveResult, actions)."""

    def __init__(self, fs: FollowerStructure):
        self.fs = fs
        m = fs.mdp
        S, A = m.n_states, m.n_actions
        g = m.gamma
        live = ~m.terminal
        self.lo, self.hi = fs.value_bounds
        p = self.p = MILP()
        L = np.flatnonzero(live)
        self.L = L
        self.x = np.full((S, A), -1)
        self.x[L] = p.binary((L.size, A))
        self.z = np.full(S, -1)
        self.z[L] = p.binary(L.size)
        self.mu = np.full((S, A), -1)
        self.mu[L] = p.var((L.size, A), 0.0, 1.0)
        self.V = np.full(S, -1)
        self.V[L] = p.var(L.size, self.lo[L], self.hi[L])
        for s in L:
            p.row(self.x[s], np.ones(A), 1.0, 1.0)
            if m.rho0[s] > 0:
                p.lb[self.z[s]] = 1.0
        # reachability and occupancy
        for s in L:
            for a in range(A):
                for t in np.flatnonzero(m.P[s, a] > 0):
                    if live[t] and t != s:
                        p.row([self.z[t], self.z[s], self.x[s, a]], [1, -1, -1], lo=-1.0)
                p.row([self.mu[s, a], self.x[s, a]], [1.0, -1.0], hi=0.0)
        for t in L:
            cols, coefs = list(self.mu[t]), [1.0] * A
            for s in L:
                for a in range(A):
                    if m.P[s, a, t] > 0:
                        cols.append(self.mu[s, a])
                        coefs.append(-g * m.P[s, a, t])
            p.row(cols, coefs, (1 - g) * m.rho0[t], (1 - g) * m.rho0[t])
        p.set_cost(self.mu[L].ravel(), (m.r[L] / (1 - g)).ravel())
        # J = rho0 . V: the states rho0 charges are reached, where V = V^pi_M (a valid equality
        # that ties the values to the occupancy in the LP relaxation)
        st = [s for s in L if m.rho0[s] > 0]
        p.row(list(self.mu[L].ravel()) + [self.V[s] for s in st],
              list((m.r[L] / (1 - g)).ravel()) + [-m.rho0[s] for s in st], 0.0, 0.0)
        self._bellman_rows()
        self.y, self.u = {}, {}
        self._free_rows()

    # ------------------------------------------------------------------ linear forms in V

    def _form(self, const, coef_by_state: dict):
        """(cols, coefs, const, max, min) of  const + sum c_t V[t]  with terminal V = 0."""
        cols, coefs = [], []
        hi = lo = const
        for t, c in coef_by_state.items():
            if c == 0.0 or self.fs.mdp.terminal[t]:
                continue
            cols.append(self.V[t])
            coefs.append(c)
            hi += max(c * self.lo[t], c * self.hi[t])
            lo += min(c * self.lo[t], c * self.hi[t])
        return cols, coefs, const, hi, lo

    def _fitted_gap(self, s, a):
        """V[s] - Q_v(s,a;V) as a form."""
        fs, g = self.fs, self.fs.mdp.gamma
        coef = {t: -g * fs.Pv[s, a, t] for t in np.flatnonzero(fs.Pv[s, a] > 0)}
        coef[s] = coef.get(s, 0.0) + 1.0
        return self._form(-fs.rv[s, a], coef)

    def _target_excess(self, s, a, t):
        """Q_t(s,a;V) - V[s] as a form (floored delta at t)."""
        fs, m = self.fs, self.fs.mdp
        g, eta = m.gamma, fs.eta
        K = np.flatnonzero(m.K[s, a])
        w = {k: eta for k in K}
        w[t] = w.get(t, 0.0) + 1.0 - K.size * eta
        const = sum(w[k] * m.R[s, a, k] for k in w)
        coef = {k: g * w[k] for k in w}
        coef[s] = coef.get(s, 0.0) - 1.0
        return self._form(const, coef)

    # ------------------------------------------------------------------ rows

    def _bellman_rows(self):
        p, fs, A = self.p, self.fs, self.fs.mdp.n_actions
        for s in self.L:
            for a in range(A):
                cols, coefs, c0, hi, lo = self._fitted_gap(s, a)
                if fs.forced[s, a]:
                    # V[s] - Q_v >= 0 ;  V[s] - Q_v <= hi (1 - x)
                    p.row(cols, coefs, lo=-c0)
                    p.row(cols + [self.x[s, a]], coefs + [max(hi, 0.0)], hi=max(hi, 0.0) - c0)
                else:
                    # |V[s] - Q_v| <= M (2 - x - z)
                    Mp, Mm = max(hi, 0.0), max(-lo, 0.0)
                    p.row(cols + [self.x[s, a], self.z[s]], coefs + [Mp, Mp], hi=2 * Mp - c0)
                    p.row(cols + [self.x[s, a], self.z[s]], coefs + [-Mm, -Mm], lo=-2 * Mm - c0)

    def _free_rows(self):
        p, fs, m = self.p, self.fs, self.fs.mdp
        for s in self.L:
            for a in range(m.n_actions):
                if fs.forced[s, a]:
                    continue
                forms = {t: self._target_excess(s, a, t) for t in np.flatnonzero(m.K[s, a])}
                if not any(f[3] <= FEAS for f in forms.values()):   # no target always holds
                    ys = []
                    for t, (cols, coefs, c0, hi, lo) in forms.items():
                        if lo > FEAS:
                            continue                  # this target never holds
                        y = int(p.binary(1)[0])
                        self.y[s, a, t] = y
                        ys.append(y)
                        p.row(cols + [y], coefs + [hi], hi=hi - c0)
                    p.row(ys, np.ones(len(ys)), lo=1.0)
                if fs.eta > 0.0:
                    us = []
                    for t, (cols, coefs, c0, hi, lo) in forms.items():
                        # V[s] - Q_t <= M (1 - u) + M z :  -(form) ...
                        M = max(-lo, 0.0)
                        if M <= FEAS:
                            continue
                        u = int(p.binary(1)[0])
                        self.u[s, a, t] = u
                        us.append(u)
                        p.row([*cols, u, self.z[s]], [-c for c in coefs] + [M, -M], hi=M + c0)
                    if us and len(us) == len(forms):
                        p.row(us + [self.x[s, a], self.z[s]], [1.0] * len(us) + [-1.0, 1.0], lo=0.0)

    # ------------------------------------------------------------------ start and solve

    def start_from(self, chk: Check) -> np.ndarray:
        """A MILP point from a passing check (an incumbent for HiGHS)."""
        fs, m = self.fs, self.fs.mdp
        x0 = np.array(self.p.lb, float)
        pi = deterministic_policy(chk.actions, m.n_actions)
        mu = occupancy(m.P, m.rho0, m.gamma, pi)
        for s in self.L:
            x0[self.x[s]] = pi[s]
            x0[self.z[s]] = float(chk.reached[s])
            x0[self.mu[s]] = mu[s]
            x0[self.V[s]] = np.clip(chk.V[s], self.lo[s], self.hi[s])
        vals = fs.target_values(chk.V)
        ks, ka, kt = fs.kset
        for i in range(ks.size):
            key = (ks[i], ka[i], kt[i])
            if key in self.y:
                x0[self.y[key]] = float(vals[i] <= chk.V[ks[i]] + 1e-12 * max(1, abs(chk.V[ks[i]])))
            if key in self.u:
                x0[self.u[key]] = float(not chk.reached[ks[i]] and chk.actions[ks[i]] == ka[i]
                                        and vals[i] >= chk.V[ks[i]] - 1e-12)
        return x0

    def solve(self, maximize: bool, time_limit: float | None = None, start=None,
              abs_gap: float = 1e-7) -> tuple[SolveResult, "MILPPoint | None"]:
        # at eta > 0 the floor's effects are of order eta: integrality slack times a big-M must
        # stay below them
        tol = 1e-10 if self.fs.eta > 0 else None
        res = self.p.solve(maximize=maximize, time_limit=time_limit, start=start,
                           rel_gap=0.0, abs_gap=abs_gap, feasibility_tol=tol)
        if res.x is None:
            return res, None
        m = self.fs.mdp
        actions = np.zeros(m.n_states, dtype=int)
        actions[self.L] = np.argmax(res.x[self.x[self.L]], axis=1)
        fitted = np.zeros(m.n_states, dtype=bool)
        fitted[self.L] = res.x[self.z[self.L]] > 0.5
        V = np.zeros(m.n_states)
        V[self.L] = res.x[self.V[self.L]]
        return res, MILPPoint(actions, fitted, V)


@dataclass(frozen=True, eq=False)
class MILPPoint:
    """A MILP solution: the policy, the states whose policy pair is fitted (z), the values."""

    actions: np.ndarray
    fitted: np.ndarray
    V: np.ndarray
