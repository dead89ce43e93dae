"""Deterministic follower policies: bilevel.equilibria.enumeration (and the exact MAL route)
against independent computations.

For a deterministic follower policy pi the enumeration bounds (SCIP) its leader optimum
    L(pi) = min_Phat leader(pi, Phat)  s.t.  pi optimal in Phat at every live state,
    leader = alpha l(Phat, mu) - (1-alpha) rho0.V^pi_Phat   (MAL: alpha = 1),
    l(Phat, mu) = sum_s mu(s, pi(s)) KL(P(.|s,pi(s)) || Phat(.|s,pi(s))).
The reference here computes L(pi) with numpy / scipy only. V^pi_Phat depends on pi's own rows
alone; a deviation row (s, b != pi(s)) enters only the constraint
    min_{q in Delta_eta(K(s,b))} q.(R(s,b,.) + g V) <= V(s),
a linear function minimized at a vertex of the floored simplex (eta 1_K + (1 - |K| eta) e_t).
So L(pi) is a search over pi's rows: a grid on their floored simplices, refined by SLSQP from
the best feasible grid points. The equilibria are {pi : L(pi) <= min L + band}, the interval
[min, max] of J(pi, M) over them, J by a linear solve. For MAL when every state is reached,
L(pi) = l(P_eta, mu) exactly when pi passes the hostile check (`hostile_equilibria`).
"""
import dataclasses
import itertools

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import rel_entr

from bilevel.equilibria import enumeration
from bilevel.equilibria import choose_solver, solve_formulation
from bilevel.equilibria.enumeration import deterministic_policies, enumerate_interval, policy_bounds
from bilevel.mdp import load_mdp
from bilevel.mdp.garnet import garnet
from conftest import MDPS, floored_fit
from solvers.scip import Scip


def simplex_grid(k, eta, n):
    """The points eta 1_K + (1 - |K| eta) c / n of the floored simplex on the mask k, for every
    composition c of n into |K| parts (n = 1: the vertices)."""
    idx = np.flatnonzero(k)
    pts = []
    for c in itertools.product(range(n + 1), repeat=idx.size - 1):
        if sum(c) <= n:
            q = np.zeros(k.size)
            q[idx] = eta + (1.0 - idx.size * eta) * np.array([*c, n - sum(c)]) / n
            pts.append(q)
    return np.array(pts)


def true_return(mdp, acts):
    """J(pi, M) = rho0 . (I - g P_pi)^{-1} r_pi for the deterministic policy acts (S,)."""
    s = np.arange(mdp.n_states)
    P_pi = mdp.P[s, acts]
    r_pi = (P_pi * mdp.R[s, acts]).sum(-1)
    return float(mdp.rho0 @ np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * P_pi, r_pi))


def optimal_return(mdp, sign=1.0):
    """max_pi J(pi, M) (sign = -1: min) over every deterministic policy, by linear solves."""
    live = np.flatnonzero(~mdp.terminal)
    best = -np.inf
    for acts in itertools.product(range(mdp.n_actions), repeat=live.size):
        a = np.zeros(mdp.n_states, dtype=int)
        a[live] = acts
        best = max(best, sign * true_return(mdp, a))
    return sign * best


class LeaderOptimum:
    """L(pi) for one deterministic policy (module docstring): grid, then SLSQP."""

    def __init__(self, mdp, acts, alpha):
        self.mdp, self.acts, self.alpha = mdp, np.asarray(acts), alpha
        self.live = np.flatnonzero(~mdp.terminal)
        g, S = mdp.gamma, mdp.n_states
        P_pi = mdp.P[np.arange(S), self.acts]
        d = (1.0 - g) * np.linalg.solve(np.eye(S) - g * P_pi.T, mdp.rho0)   # mu(s, pi(s))
        self.mu = d[self.live]
        self.K = mdp.K[self.live, self.acts[self.live]]                     # pi's rows' support
        self.deviations = [(s, b, simplex_grid(mdp.K[s, b], mdp.floor, 1))
                           for s in self.live for b in range(mdp.n_actions) if b != self.acts[s]]

    def values(self, rows):
        """V^pi in the models whose pi-rows are rows (N, n_live, S); V = 0 on terminal states."""
        m, L = self.mdp, self.live
        rhat = (rows * m.R[L, self.acts[L]]).sum(-1)
        V = np.zeros((rows.shape[0], m.n_states))
        V[:, L] = np.linalg.solve(np.eye(L.size) - m.gamma * rows[:, :, L], rhat[..., None])[..., 0]
        return V

    def evaluate(self, rows):
        """(leader objective, max deviation excess, index of the worst vertex per deviation)."""
        m = self.mdp
        V = self.values(rows)
        excess, worst = np.full(rows.shape[0], -np.inf), []
        for s, b, vert in self.deviations:
            q = (vert[None] * (m.R[s, b] + m.gamma * V[:, None, :])).sum(-1)
            excess = np.maximum(excess, q.min(1) - V[:, s])
            worst.append(q.argmin(1))
        P_pi = m.P[self.live, self.acts[self.live]]
        kl = rel_entr(P_pi, np.where(P_pi > 0, rows, 1.0)).sum(-1)
        leader = self.alpha * kl @ self.mu - (1.0 - self.alpha) * V @ m.rho0
        return leader, excess, worst

    def solve(self, n=20, starts=5):
        """min leader over the grid's feasible points, each of the `starts` best refined;
        +inf when no grid point makes pi optimal."""
        grids = [simplex_grid(k, self.mdp.floor, n) for k in self.K]
        idx = np.array(list(itertools.product(*[range(len(G)) for G in grids])))
        rows = np.stack([G[idx[:, i]] for i, G in enumerate(grids)], axis=1)
        leader, excess, worst = self.evaluate(rows)
        ok = np.flatnonzero(excess <= 1e-12)
        if not ok.size:
            return np.inf
        best = leader[ok].min()
        for j in ok[np.argsort(leader[ok])][:starts]:
            verts = [(s, b, vert[w[j]]) for (s, b, vert), w in zip(self.deviations, worst)]
            best = min(best, self._refine(rows[j], verts))
        return float(best)

    def _refine(self, rows0, verts):
        """SLSQP on pi's rows with each deviation held at its grid point's worst vertex (a
        restriction: every point it returns is feasible, checked again exactly)."""
        m, K = self.mdp, self.K

        def rows_of(x):
            r = np.zeros_like(rows0)
            r[K] = x
            return r[None]

        def slack(x):
            V = self.values(rows_of(x))[0]
            return np.array([V[s] - q @ (m.R[s, b] + m.gamma * V) for s, b, q in verts])

        res = minimize(lambda x: self.evaluate(rows_of(x))[0][0], rows0[K], method="SLSQP",
                       bounds=[(m.floor, 1.0)] * int(K.sum()),
                       constraints=[{"type": "eq", "fun": lambda x: rows_of(x)[0].sum(-1) - 1.0},
                                    {"type": "ineq", "fun": slack}],
                       options={"ftol": 1e-14, "maxiter": 500})
        r = rows_of(np.maximum(res.x, m.floor))
        r /= r.sum(-1, keepdims=True)
        leader, excess, _ = self.evaluate(r)
        return leader[0] if excess[0] <= 1e-10 else np.inf


# (name, mdp, formulation, alpha): the leader optimum of every policy is known independently
CASES = {
    # the decoy is the unique equilibrium: an optimistic lie beats the truth at alpha = 0.99
    "hidden_goal-agent_reward-0.99": ("hidden_goal", "MAL_agent_reward", 0.99),
    "hidden_goal-agent_reward-0.9999": ("hidden_goal", "MAL_agent_reward", 0.9999),
    # a Garnet whose 8 policies split: 2 equilibria, 4 that a costly lie makes optimal, 2 that
    # no model makes optimal (support = supp P: a model cannot invent transitions)
    "garnet9-MAL": ("garnet9", "MAL", None),
}


def _mdp(name):
    if name == "hidden_goal":
        return load_mdp(MDPS / "hidden_goal.yaml")
    return garnet(3, 2, 2, seed=9, gamma=0.9, support="true")


_cache = {}


def enumerated(case):
    """(mdp, interval, per-policy bounds, reference {actions: (J, L)}) once per case. The bounds
    are those enumerate_interval itself computed (recorded on their way through)."""
    if case not in _cache:
        name, formulation, alpha = CASES[case]
        mdp = _mdp(name)
        seen, real = [], enumeration.policy_bounds

        def recording(*args, **kw):
            out = real(*args, **kw)
            seen.append(out[0])
            return out
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(enumeration, "policy_bounds", recording)
            interval = enumerate_interval(mdp, formulation, alpha, time_limit=10.0)   # 2 s left a policy undecided on a loaded machine
        bounds = seen[0] if seen else policy_bounds(mdp, formulation, alpha, time_limit=10.0)[0]
        ref = {}
        for acts, _, live in deterministic_policies(mdp):
            a = np.zeros(mdp.n_states, dtype=int)
            a[live] = acts
            ref[tuple(acts)] = (true_return(mdp, a),
                                LeaderOptimum(mdp, a, 1.0 if alpha is None else alpha).solve())
        _cache[case] = (mdp, interval, bounds, ref)
    return _cache[case]


@pytest.mark.parametrize("case", list(CASES))
def test_policy_bounds_bracket_the_reference_leader_optimum(case):
    """lb(pi) <= L(pi) <= ub(pi) with L(pi) from the grid search; a policy SCIP proves
    infeasible has no feasible grid point, and J(pi, M) is the linear solve's. A policy set
    aside at the leader limit has its lower bound only (L(pi) may be +inf)."""
    _, _, bounds, ref = enumerated(case)
    assert len(bounds) == len(ref)
    for b in bounds:
        J, L = ref[tuple(b.actions)]
        assert b.J == pytest.approx(J, abs=1e-9)
        if b.lb == np.inf:
            assert L == np.inf, b.actions
            continue
        assert b.lb <= L + 1e-6, (b.actions, b.lb, L)
        if b.set_aside:
            continue
        assert np.isfinite(L), b.actions          # the reference finds a feasible model too
        assert L <= b.ub + 1e-5, (b.actions, L, b.ub)
    # not trivial: some policy's leader optimum is far above the best one
    assert any(L > min(L for _, L in ref.values()) + 1e-3 for _, L in ref.values())


@pytest.mark.parametrize("case", list(CASES))
def test_enumerated_interval_is_the_reference_one(case):
    """Leader optimum, equilibrium set and both ends against the reference; every policy outside
    the band misses it by far more than the band (so the comparison is robust)."""
    mdp, r, _, ref = enumerated(case)
    assert r.ok and r.certificate == "global"
    L_star = min(L for _, L in ref.values())
    assert r.leader_objective == pytest.approx(L_star, abs=1e-5)
    inside = {a: J for a, (J, L) in ref.items() if L <= L_star + r.tolerance}
    assert all(L > L_star + 10 * r.tolerance + 1e-4 for a, (_, L) in ref.items() if a not in inside)
    assert r.low.J == pytest.approx(min(inside.values()), abs=1e-8)
    assert r.high.J == pytest.approx(max(inside.values()), abs=1e-8)
    live = np.flatnonzero(~mdp.terminal)
    for end in (r.low, r.high):
        assert tuple(end.policy[live].argmax(1)) in inside


def test_reference_intervals_are_the_expected_ones():
    """What the three cases show: on hidden_goal the decoy (J = 0.98504) at alpha = 0.99, the
    goal (J* = 73.9604) at the default 0.9999; the Garnet's MAL interval does not reach its
    minimum return (the hostile model cannot hide every better action)."""
    for case, expected in (("hidden_goal-agent_reward-0.99", (0.98504, 0.98504)),
                           ("hidden_goal-agent_reward-0.9999", (73.9604, 73.9604))):
        r = enumerated(case)[1]
        assert (r.low.J, r.high.J) == pytest.approx(expected, abs=1e-4)
    mdp, r, _, _ = enumerated("garnet9-MAL")
    assert r.high.J == pytest.approx(optimal_return(mdp), abs=1e-9)
    assert r.low.J > optimal_return(mdp, sign=-1.0) + 1.0


def test_deterministic_policies_are_every_action_choice_on_live_states(hidden_goal):
    """hidden_goal: 2 live states (C is terminal), 2 actions: the 4 one-hot choices, terminal
    row uniform."""
    pols = list(deterministic_policies(hidden_goal))
    assert sorted(acts for acts, _, _ in pols) == sorted(itertools.product(range(2), repeat=2))
    for acts, pi, live in pols:
        assert list(live) == [0, 1]
        assert np.array_equal(pi[:2], np.eye(2)[list(acts)])
        assert np.allclose(pi[2], 0.5)


# ------------------------------------------------------------------ the leader limit

@pytest.fixture
def node_limited_scip(monkeypatch):
    """SCIP stopped by a node count instead of the clock, so that a solve it cuts short repeats
    exactly (the comparisons below are number for number)."""
    real = Scip.solve

    def solve(self, model, load=True):
        options = {**(self.options or {}), "limits/totalnodes": 200}
        return real(dataclasses.replace(self, time_limit=60.0, options=options), model, load)
    monkeypatch.setattr(Scip, "solve", solve)


def recorded(mdp, formulation, alpha):
    """(interval, per-policy bounds, number of SCIP solves) of one enumerate_interval run."""
    seen, calls = [], []
    real_bounds, real_solve = enumeration.policy_bounds, enumeration.solve_policy

    def recording(*args, **kw):
        out = real_bounds(*args, **kw)
        seen.append(out[0])
        return out

    def counting(*args, **kw):
        calls.append(1)
        return real_solve(*args, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enumeration, "policy_bounds", recording)
        mp.setattr(enumeration, "solve_policy", counting)
        interval = enumerate_interval(mdp, formulation, alpha)
    return interval, seen[0], len(calls)


def reported(r):
    """The interval as reported, less its time and the two counts the leader limit may move."""
    d = r.to_json()
    d.pop("seconds")
    moved = ("set_aside", "infeasible")
    d["enumeration"] = {k: v for k, v in d["enumeration"].items() if k not in moved}
    return d


@pytest.mark.parametrize("case", ["hidden_goal-agent_reward-0.9999", "garnet9-MAL"])
def test_the_leader_limit_changes_the_work_not_the_result(case, node_limited_scip, monkeypatch):
    """Against the enumeration without SCIP's dual limit (module docstring, (*)): the same
    interval number for number; the policies solved through have the same bounds, the ones set
    aside a lower bound below the unlimited one and above L_up + tol. With a first guess U_0
    far below L*, every policy reaches the limit, fails (*) and is solved again without it:
    the unlimited bounds again, after 2n solves."""
    name, formulation, alpha = CASES[case]
    mdp = _mdp(name)
    limited, bounds, _ = recorded(mdp, formulation, alpha)
    with monkeypatch.context() as mp:
        mp.setattr(enumeration, "leader_limit", lambda bm, U, g: np.inf)
        full, full_bounds, n = recorded(mdp, formulation, alpha)
    assert reported(limited) == reported(full)
    assert any(b.set_aside for b in bounds)          # not trivial: the limit cut solves short
    cut = limited.leader_objective + limited.tolerance
    for b, f in zip(bounds, full_bounds):
        assert b.actions == f.actions and not f.set_aside
        if b.set_aside:
            assert cut < b.lb <= f.lb, (b.actions, b.lb, f.lb)
        else:
            assert (b.lb, b.ub) == (f.lb, f.ub), b.actions
    real_guess = enumeration.fit_guess
    with monkeypatch.context() as mp:
        mp.setattr(enumeration, "fit_guess", lambda bm, pols: (real_guess(bm, pols)[0], -1e6))
        again, again_bounds, calls = recorded(mdp, formulation, alpha)
    assert calls == 2 * n and reported(again) == reported(full)
    assert [(b.lb, b.ub) for b in again_bounds] == [(f.lb, f.ub) for f in full_bounds]


# ------------------------------------------------------------------ the exact MAL route

def hostile_equilibria(mdp):
    """{actions: (J(pi, M), excess)} per deterministic pi, rho0 > 0 everywhere (every state
    reached: only deviation pairs are free). Model P_eta on pi's pairs (by root finding:
    max(eta, P / lambda) on K, sum 1), V = V^pi in it, and
        excess = max_{s, b != pi(s)} min_t q_t.(R(s,b,.) + g V) - V(s),
    q_t the floored vertices of K(s,b); pi is a MAL equilibrium iff excess <= 0."""
    assert (mdp.rho0 > 0).all() and not mdp.terminal.any()
    S, A, g, eta = mdp.n_states, mdp.n_actions, mdp.gamma, mdp.floor
    Peta = floored_fit(mdp)
    vertices = {(s, b): simplex_grid(mdp.K[s, b], eta, 1) for s, b in np.ndindex(S, A)}
    out = {}
    for acts in itertools.product(range(A), repeat=S):
        a = np.array(acts)
        P_pi = Peta[np.arange(S), a]
        V = np.linalg.solve(np.eye(S) - g * P_pi, (P_pi * mdp.R[np.arange(S), a]).sum(-1))
        excess = max((vertices[s, b] @ (mdp.R[s, b] + g * V)).min() - V[s]
                     for s, b in np.ndindex(S, A) if b != a[s])
        out[acts] = (true_return(mdp, a), excess)
    return out


@pytest.mark.parametrize("S,seed", [(3, 0), (3, 1), (3, 2), (11, 1), (11, 2)])
def test_exact_mal_worst_case_is_the_brute_force_one(S, seed):
    """rho0 uniform: MAL's interval is [min, max] of J over the policies passing the hostile
    check (max = J*). 11 states: 2048 policies, past the size where the exact route checks each
    itself (a MILP then). MAL + random noise fits every pair (the uniform policy visits them
    all): [J*, J*]."""
    mdp = garnet(S, 2, 2, seed=seed, gamma=0.9)
    J_star = optimal_return(mdp)
    ref = hostile_equilibria(mdp)
    assert min(abs(x) for _, x in ref.values()) > 1e-6     # no tie the floor could break
    inside = [J for J, x in ref.values() if x <= 0]
    if (S, seed) != (3, 1):                                 # (3, 1): every policy hides
        assert min(inside) > min(J for J, _ in ref.values()) + 0.1
    mal, noise = solve_formulation(mdp, "MAL"), solve_formulation(mdp, "MAL_random_noise")
    assert mal.ok and noise.ok and mal.certificate == "global"
    assert (mal.low.J, mal.high.J) == pytest.approx((min(inside), max(inside)), abs=1e-8)
    assert max(inside) == pytest.approx(J_star, abs=1e-8)
    assert (noise.low.J, noise.high.J) == pytest.approx((J_star, J_star), abs=1e-6)


# ------------------------------------------------------------------ the other global routes

@pytest.fixture(scope="module")
def fixes_mdp():
    """4 states, 2 actions, start in state 0 (a state a policy never reaches can hide)."""
    return garnet(4, 2, 2, seed=1008264091, gamma=0.9, initial="first", support="all")


def test_enumeration_agrees_with_the_global_mpec_on_mal(fixes_mdp):
    """Two global routes: SCIP on the MPEC (complementarity branched) and SCIP per fixed
    follower policy."""
    enum = enumerate_interval(fixes_mdp, "MAL", time_limit=2.0)
    mpec = solve_formulation(fixes_mdp, "MAL", solver="scip", time_limit=20.0)
    assert enum.certificate == "global" and mpec.certificate == "global"
    assert enum.low.J == pytest.approx(mpec.low.J, abs=1e-4)
    assert enum.high.J == pytest.approx(mpec.high.J, abs=1e-4)


@pytest.mark.slow
def test_enumeration_agrees_with_the_global_mpec_on_random_noise(fixes_mdp):
    enum = enumerate_interval(fixes_mdp, "MAL_random_noise", 0.9, time_limit=2.0)
    mpec = solve_formulation(fixes_mdp, "MAL_random_noise", alpha=0.9, solver="scip",
                             time_limit=20.0)
    assert enum.certificate == "global" and mpec.certificate == "global"
    assert enum.low.J == pytest.approx(mpec.low.J, abs=1e-4)
    assert enum.high.J == pytest.approx(mpec.high.J, abs=1e-4)


def test_mal_worst_equilibrium_is_the_minimum_return(fixes_mdp):
    """On this MDP every policy can be made optimal by a model that fits its data (hostile
    elsewhere), so MAL's interval is [min_pi J, max_pi J] of M (brute force over the 16
    policies); the low end's policy is optimal in its model (brute force in Phat)."""
    r = enumerate_interval(fixes_mdp, "MAL", time_limit=2.0)
    assert r.certificate == "global"
    assert r.low.J == pytest.approx(optimal_return(fixes_mdp, sign=-1.0), abs=1e-9)
    assert r.high.J == pytest.approx(optimal_return(fixes_mdp), abs=1e-9)
    assert optimal_return(fixes_mdp) - r.low.J > 3.0
    Phat, g, S = r.low.model, fixes_mdp.gamma, fixes_mdp.n_states
    rhat = (Phat * fixes_mdp.R).sum(-1)

    def V(pi):
        return np.linalg.solve(np.eye(S) - g * np.einsum("sa,sat->st", pi, Phat), (pi * rhat).sum(1))
    best = np.max([V(np.eye(2)[list(a)]) for a in itertools.product(range(2), repeat=S)], axis=0)
    assert np.all(V(r.low.policy) >= best - 1e-6)


@pytest.mark.slow
def test_agent_reward_is_certified_at_the_optimum_where_ipopt_once_stopped_short(fixes_mdp):
    """--solver auto enumerates the 16 follower policies. IPOPT from one start once reported a
    worst gap of 0.173 here: a local leader optimum, 1.7e-5 above L*, so not an equilibrium;
    the enumeration proves the interval is [J*, J*] (J* by brute force)."""
    ar = solve_formulation(fixes_mdp, "MAL_agent_reward", alpha=0.9999, solver="auto", time_limit=2.0)
    assert ar.solver == "enumerate" and ar.certificate == "global"
    J_star = optimal_return(fixes_mdp)
    assert ar.low.J == pytest.approx(J_star, abs=1e-9) and ar.high.J == pytest.approx(J_star, abs=1e-9)


def test_pal_and_large_mdps_are_refused(fixes_mdp):
    with pytest.raises(ValueError, match="MAL family"):
        policy_bounds(fixes_mdp, "PAL")
    with pytest.raises(ValueError, match="tiny MDPs"):          # 2^13 = 8192 policies
        policy_bounds(garnet(13, 2, 2, seed=0, gamma=0.9), "MAL")


def test_auto_certifies_agent_reward_on_hidden_goal_and_ipopt_agrees(hidden_goal):
    """--solver auto enumerates the 4 follower policies of hidden_goal for MAL + agent reward
    (global), and IPOPT's local interval (independent route) is the same."""
    auto = solve_formulation(hidden_goal, "MAL_agent_reward")
    assert auto.solver == "enumerate" and auto.certificate == "global"
    assert auto.to_json()["enumeration"]["policies"] == 4
    local = solve_formulation(hidden_goal, "MAL_agent_reward", solver="ipopt")
    assert local.certificate == "local"
    assert auto.low.J == pytest.approx(local.low.J, abs=1e-4)
    assert auto.high.J == pytest.approx(local.high.J, abs=1e-4)


def test_routing_exact_for_mal_and_the_enumeration_for_agent_reward(fixes_mdp):
    """auto: MAL goes to the exact route (no MPEC), MAL + agent reward (no exact route) to the
    follower-policy enumeration on this 16-policy MDP (the slow test above runs it); --solver
    enumerate keeps MAL on the enumeration, and both MAL routes give the same interval."""
    assert solve_formulation(fixes_mdp, "MAL", solver="auto").solver == "exact"
    assert choose_solver(fixes_mdp, "auto", "MAL_agent_reward") == "enumerate"
    enum = solve_formulation(fixes_mdp, "MAL", solver="enumerate", time_limit=2.0)
    exact = solve_formulation(fixes_mdp, "MAL", solver="exact")
    assert enum.solver == "enumerate" and enum.certificate == exact.certificate == "global"
    assert enum.low.J == pytest.approx(exact.low.J, abs=1e-6)
    assert enum.high.J == pytest.approx(exact.high.J, abs=1e-6)
