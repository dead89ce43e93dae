"""What we know about the MAL family's follower best responses, as arrays (docs/DESIGN.md
section 5).

A deterministic policy pi (one action per live state) visits the pairs (s, pi(s)) of the states
Z(pi) it reaches in M from rho0. A MAL-family leader whose loss puts weight on a pair must fit
it: the model there is the floored fit `Pv` (P itself in the limit eta -> 0). Every other pair
is free: its model may be any distribution on the floored simplex of K(s,a),

    Delta_eta(K) = {q : q >= eta on K, q = 0 off K, sum q = 1},

whose vertices are the floored deltas  q_t = eta 1_K + (1 - |K| eta) e_t,  t in K. Their
one-step values are linear in a value function V:

    Q_t(s,a; V) = eta sum_{t' in K(s,a)} [R(s,a,t') + g V(t')] + (1 - |K| eta) [R(s,a,t) + g V(t)].

`forced` marks pairs whose loss weight does not depend on pi (MAL + random noise, alpha < 1:
every pair the uniform policy visits); they are fitted whatever pi does.

`check` decides whether pi is an equilibrium with the most hostile free pairs (the robust
value of the unreached states); it is exact in the limit eta = 0 and sound for eta > 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

import bilevel.game as game
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import value_iteration
from bilevel.tabular.fits import kl_fit

CHECK_TOL = 1e-9     # relative slack of a Bellman inequality in `check`



def contraction_fixed_point(step, V: np.ndarray, gamma: float, tol: float, what: str) -> np.ndarray:
    """The fixed point of a gamma-contraction `step` (in the max norm) by iteration from V, to
    within tol max(1, |V|) of it: stop when ||V' - V|| <= tol (1-g)/(2g) max(1, ||V'||) (so the
    stopping rule scales with the values: an absolute 1e-15 is below what doubles resolve at
    values near 1000), or when an iteration changes nothing."""
    c = tol * (1 - gamma) / (2 * gamma)
    for _ in range(1_000_000):
        V_new = step(V)
        diff = np.max(np.abs(V_new - V), initial=0.0)
        if diff <= c * max(1.0, np.max(np.abs(V_new), initial=0.0)) or diff == 0.0:
            return V_new
        V = V_new
    raise RuntimeError(f"{what} did not converge")

@dataclass(frozen=True, eq=False)
class FollowerStructure:
    """Coefficients of the MAL family's best-response structure on one MDP at floor `eta`.

    Pv[s,a,:]  the model on fitted pairs (P at eta = 0, else the floored fit P_eta)
    rv[s,a]    its reward  sum_t Pv R
    forced     (S,A) bool, pairs fitted whatever pi does
    KSET arrays  ks, ka, kt: one entry per (s,a,t in K(s,a)) on live states, grouped by (s,a)
    """

    mdp: TabularMDP
    eta: float
    forced: np.ndarray

    @cached_property
    def live(self) -> np.ndarray:
        return np.flatnonzero(~self.mdp.terminal)

    @cached_property
    def Pv(self) -> np.ndarray:
        m = self.mdp
        return np.array(m.P) if self.eta == 0.0 else kl_fit(m.P, m.K, self.eta)

    @cached_property
    def rv(self) -> np.ndarray:
        return np.einsum("sat,sat->sa", self.Pv, self.mdp.R)

    @cached_property
    def kset(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, a, t) of every support entry on live states, sorted by (s, a, t)."""
        K = self.mdp.K & ~self.mdp.terminal[:, None, None]
        return np.nonzero(K)

    @cached_property
    def k_size(self) -> np.ndarray:
        """|K(s,a)|, shape (S, A)."""
        return self.mdp.K.sum(axis=-1)

    # ---------------------------------------------------------------- one-step values

    def target_values(self, V: np.ndarray) -> np.ndarray:
        """Q_t(s,a; V) for every KSET entry (floored delta at t), shape (n_K,)."""
        ks, ka, kt = self.kset
        R, g = self.mdp.R, self.mdp.gamma
        step = R[ks, ka, kt] + g * V[kt]
        if self.eta == 0.0:
            return step
        S, A = self.k_size.shape
        spread = np.bincount(ks * A + ka, weights=step, minlength=S * A)[ks * A + ka]
        return self.eta * spread + (1.0 - self.k_size[ks, ka] * self.eta) * step

    def worst_free_values(self, V: np.ndarray) -> np.ndarray:
        """min_t Q_t(s,a; V) per pair, shape (S, A) (+inf off live states)."""
        S, A = self.k_size.shape
        out = np.full(S * A, np.inf)
        ks, ka, _ = self.kset
        np.minimum.at(out, ks * A + ka, self.target_values(V))
        return out.reshape(S, A)

    def fitted_values(self, V: np.ndarray) -> np.ndarray:
        """Q_Pv(s,a; V) = rv + g Pv V, shape (S, A)."""
        return self.rv + self.mdp.gamma * self.Pv @ V

    # ---------------------------------------------------------------- bounds

    @cached_property
    def value_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-state bounds on the value V = V*_Phat of any equilibrium model:
        lower  W_rob(s) = fixed point of  max_a min_t Q_t  (every pair hostile): no model on the
               floored simplices has a smaller optimal value;
        upper  at eta = 0, V*_M: fitted pairs use P and free pairs are hostile (min_t <= mean), so
               the model's optimal value is <= V*_M; at eta > 0 the optimistic fixed point
               max_a max_t Q_t, which bounds every model on the floored simplices."""
        lo = self._fixed_point(np.minimum)
        if self.eta == 0.0:
            hi, _ = value_iteration(self.mdp.P, self.mdp.r, self.mdp.gamma, tol=1e-12)
            hi = np.maximum(hi, lo)
        else:
            hi = self._fixed_point(np.maximum)
        return lo, hi

    def _fixed_point(self, pick, tol: float = 1e-12) -> np.ndarray:
        """V(s) = max_a pick_t Q_t(s,a;V) (pick = min: hostile, max: optimistic) on live states,
        V = 0 on terminal ones, by value iteration."""
        S, A = self.k_size.shape
        ks, ka, _ = self.kset
        g = self.mdp.gamma
        init = np.inf if pick is np.minimum else -np.inf

        def step(V):
            q = np.full(S * A, init)
            pick.at(q, ks * A + ka, self.target_values(V))
            q = q.reshape(S, A)
            return np.where(self.mdp.terminal, 0.0, np.max(np.where(np.isfinite(q), q, -np.inf), axis=1))

        return contraction_fixed_point(step, np.zeros(S), g, tol, "fixed point iteration")

    # ---------------------------------------------------------------- one policy

    def reached(self, actions: np.ndarray) -> np.ndarray:
        """Z(pi): live states reached in M from rho0 under the deterministic policy (under
        `occupancy: average`: within T - 1 steps, the states whose pairs carry weight in mu_T)."""
        m = self.mdp
        P_pi = m.P[np.arange(m.n_states), actions]
        seen = (m.rho0 > 0) & ~m.terminal
        frontier = seen.copy()
        steps = m.horizon - 1 if m.averaged else None
        while frontier.any() and (steps is None or steps > 0):
            steps = None if steps is None else steps - 1
            nxt = (P_pi[frontier] > 0).any(axis=0) & ~m.terminal & ~seen
            seen |= nxt
            frontier = nxt
        return seen

    def check(self, actions: np.ndarray, tol: float = CHECK_TOL) -> "Check":
        """Is the deterministic policy `actions` an equilibrium with the hostile free pairs?
        Values: V = fixed point of  V(s) = Q_Pv(s, pi(s); V) on Z(pi) and on forced pairs of pi,
        V(s) = max_a [Q_Pv if forced else min_t Q_t](s,a; V) elsewhere (the policy re-chosen
        there); pi is an equilibrium iff  Q(s,a; V) <= V(s)  for every reached s and every a
        (fitted pairs: Q_Pv; free pairs: min_t Q_t)."""
        m = self.mdp
        actions = np.asarray(actions, dtype=int).copy()
        Z = self.reached(actions)
        V = self._evaluate(actions, Z)
        Q = np.where(self.forced, self.fitted_values(V), self.worst_free_values(V))
        Q[Z, actions[Z]] = self.fitted_values(V)[Z, actions[Z]]
        excess = np.where(Z[:, None], Q - V[:, None], -np.inf)
        scale = tol * np.maximum(1.0, np.abs(V))[:, None]
        violations = [(int(s), int(a)) for s, a in zip(*np.nonzero(excess > scale))]
        free_best = np.argmax(np.where(np.isfinite(Q), Q, -np.inf), axis=1)
        actions[~Z & ~m.terminal] = free_best[~Z & ~m.terminal]
        return Check(actions=actions, reached=Z, V=V, Q=Q, violations=violations)

    def _evaluate(self, actions: np.ndarray, Z: np.ndarray, tol: float = 1e-12) -> np.ndarray:
        """The fixed point described in `check`: value iteration started from exact policy
        evaluation on Z (exact at eta = 0, where Z is closed under Pv)."""
        m = self.mdp
        S, g = m.n_states, m.gamma
        idx = np.arange(S)
        V = np.zeros(S)
        z = np.flatnonzero(Z)
        if z.size:
            Pz = self.Pv[z, actions[z]][:, z]
            V[z] = np.linalg.solve(np.eye(z.size) - g * Pz, self.rv[z, actions[z]])

        def step(V):
            fitted = self.fitted_values(V)
            V_new = np.max(np.where(self.forced, fitted, self.worst_free_values(V)), axis=1)
            V_new[Z] = fitted[idx[Z], actions[Z]]
            V_new[m.terminal] = 0.0
            return V_new

        return contraction_fixed_point(step, V, g, tol, "policy evaluation with hostile free pairs")

    def witness_model(self, actions: np.ndarray, fitted_states: np.ndarray,
                      V: np.ndarray) -> np.ndarray:
        """An equilibrium model for pi = `actions` with values V: Pv on the forced pairs and on
        pi's pairs at `fitted_states`; on pi's other pairs the mixture of the floored deltas at
        the worst and the best target whose one-step value is V(s) (clipped to their range);
        on every other pair the floored delta at the worst target. Terminal rows are
        self-loops. Whether pi is optimal in it is for the certificate to say."""
        m = self.mdp
        S, A = m.n_states, m.n_actions
        ks, ka, kt = self.kset
        vals = self.target_values(V)
        Phat = np.where(m.K, self.eta, 0.0)
        pair = ks * A + ka
        lo = np.full(S * A, np.inf)
        hi = np.full(S * A, -np.inf)
        np.minimum.at(lo, pair, vals)
        np.maximum.at(hi, pair, vals)
        arg_lo = np.full(S * A, -1)
        arg_hi = np.full(S * A, -1)
        for i in range(ks.size):     # first minimizer / maximizer per pair
            j = pair[i]
            if arg_lo[j] < 0 and vals[i] <= lo[j]:
                arg_lo[j] = kt[i]
            if arg_hi[j] < 0 and vals[i] >= hi[j]:
                arg_hi[j] = kt[i]
        own = np.zeros((S, A), dtype=bool)
        own[np.arange(S), actions] = True
        for j in np.flatnonzero(arg_lo >= 0):
            s, a = divmod(int(j), A)
            mass = 1.0 - self.k_size[s, a] * self.eta
            lam = 1.0
            if own[s, a] and hi[j] > lo[j]:          # weight on the worst target to hit V(s)
                lam = float(np.clip((hi[j] - V[s]) / (hi[j] - lo[j]), 0.0, 1.0))
            Phat[s, a, arg_lo[j]] += lam * mass
            Phat[s, a, arg_hi[j]] += (1.0 - lam) * mass
        fitted = self.forced.copy()
        fitted[fitted_states, actions[fitted_states]] = True
        Phat = np.where(fitted[:, :, None], self.Pv, Phat)
        Phat[m.terminal] = 0.0
        for s in np.flatnonzero(m.terminal):
            Phat[s, :, s] = 1.0
        return Phat


@dataclass(frozen=True, eq=False)
class Check:
    """Result of `FollowerStructure.check` for one deterministic policy."""

    actions: np.ndarray          # pi on Z, the hostile model's greedy action elsewhere
    reached: np.ndarray          # Z(pi), bool (S,)
    V: np.ndarray                # value of pi in the hostile model
    Q: np.ndarray                # one-step values used by the check
    violations: list             # (s, a) with Q(s,a) > V(s) on Z

    @property
    def equilibrium(self) -> bool:
        return not self.violations


def forced_pairs(mdp: TabularMDP, formulation: str, alpha: float | None) -> np.ndarray:
    """Pairs whose loss weight does not depend on the follower (`Formulation.forced_pairs`):
    for MAL + random noise with alpha < 1, every live pair with mu_rand(s,a) > 0 (uniform
    policy's true occupancy); else none."""
    return game.formulation(formulation).forced_pairs(mdp, alpha)
