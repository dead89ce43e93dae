"""An end of MAL + agent reward's band by a tree of partial policies (docs/DESIGN.md 5.6, "The
ends by a tree of partial policies").

A node allows a set of actions A(s) at each state. Its bound is the MILP (HiGHS) over the
deterministic policies it allows:

    min / max  J = sum_{s,a} r(s,a) mu(s,a) / (1 - g)
    s.t.  mu the true occupancy flow,  mu(s,a) <= nu_hi(s) x(s,a),  x binary, x(s,a) = 0 off A(s),
          sum mu a_static <= band                                   (the listing's row)
          sum mu (f - kappa_j w_node) <= band + C_j   for each tangent j (the node's rows)
          J better than the best accepted end

with f = lie_bound.floor_coefficients, (kappa_j, C_j) = lie_bound.linear_lie_bounds and w_node
the variance bounds over the node's completion box (completion_box): every equilibrium in the
band whose policy the node allows satisfies them, so the MILP's optimum bounds the node. The
box shrinks as states are fixed, and at a policy's own values the rows come within about twice
the lie of `lie_bound`; the static row alone credits some hundred times more.

Best first: the open node with the best bound is solved; its optimal policy pi is settled
(listing.Verdicts: out, in, undecided, worse). In: it is the node's best, the node closes.
Otherwise the node less pi's class (the policies agreeing with pi where it goes) is split
(Murty): with s_1, s_2, ... the free states of the class, heaviest occupancy first, child i
fixes s_1 .. s_{i-1} to pi and removes pi(s_i) from A(s_i). The search ends when no open node
can beat the best accepted end; the proved bound is the best open node's bound, or an
undecided policy's J when better.
"""
from __future__ import annotations

import heapq
import math
import time

import numpy as np

from bilevel.equilibria.exact.completion_box import completion_box, outer_box, variance_bounds
from bilevel.equilibria.exact.lie_bound import floor_coefficients, linear_coefficients, linear_lie_bounds
from bilevel.equilibria.exact.listing import J_REL_GAP, ListedEnd, Verdicts
from bilevel.mdp.model import TabularMDP
from solvers.base import Status
from solvers.milp import MILP

FAILED = "failed"
FIRST_SECONDS = 5.0          # for the first incumbent's MILP
NODE_GAP = J_REL_GAP


class _NodeMILP:
    """The node MILP of the module docstring (solvers.milp, HiGHS), its rows in units of J
    (HiGHS's tolerances are absolute). The rows every node shares are built once; a node adds
    its action bounds, its tangent rows and the cutoff to a copy."""

    def __init__(self, mdp: TabularMDP, alpha: float, band: float, sign: float, bounds):
        S, A, g = mdp.n_states, mdp.n_actions, mdp.gamma
        self.mdp, self.band = mdp, band
        self.scale = sc = 1.0 / (1 - alpha)
        self.tangents = linear_lie_bounds(mdp, alpha, bounds)
        self.floor = floor_coefficients(mdp, alpha, bounds) * sc
        self.live = live = ~mdp.terminal
        p = self.shared = MILP()
        self.mu = p.var((S, A), ub=np.repeat(live, A).astype(float))
        self.x = p.var((S, A), 0.0, 1.0, integer=True)
        nu = np.maximum(bounds.nu_hi, 1e-12)
        for t in np.flatnonzero(live):
            src = np.argwhere(mdp.P[:, :, t] > 0)
            p.row(np.concatenate([self.mu[t], self.mu[src[:, 0], src[:, 1]]]),
                  np.concatenate([np.ones(A), -g * mdp.P[src[:, 0], src[:, 1], t]]),
                  (1 - g) * float(mdp.rho0[t]), (1 - g) * float(mdp.rho0[t]))
            p.row(self.x[t], np.ones(A), 1.0, 1.0)
            for a in range(A):
                p.row([self.mu[t, a], self.x[t, a]], [1.0, -nu[t]], hi=0.0)
        self.cols = self.mu[live].ravel()
        p.row(self.cols, (linear_coefficients(mdp, alpha, bounds) * sc)[live].ravel(),
              hi=band * sc + 1e-9 * max(1.0, abs(band) * sc))
        self.cost = sign * mdp.r[live].ravel() / (1 - g)
        p.set_cost(self.cols, self.cost)

    def solve(self, allowed: np.ndarray, w: np.ndarray | None, cutoff: float, seconds: float):
        """(sign * J, actions, state occupancy) of the node's optimum, None when the node has no
        policy that can be in the band and better than `cutoff`, or FAILED. `w` None: a
        heuristic's MILP instead, with the row sum mu f <= band (no lie at all) for the tangents."""
        mdp, sc, live = self.mdp, self.scale, self.live
        p = self.shared.copy()
        for j, ok in zip(self.x.ravel(), np.where(live[:, None], allowed, True).ravel()):
            p.ub[j] = float(ok)
        for kappa, C in self.tangents if w is not None else [(0.0, 0.0)]:
            p.row(self.cols, (self.floor - kappa * sc * (w if w is not None else 0.0))[live].ravel(),
                  hi=(self.band + C) * sc)
        if math.isfinite(cutoff):
            p.row(self.cols, self.cost, hi=cutoff - J_REL_GAP * max(1.0, abs(cutoff)))
        res = p.solve(time_limit=max(0.05, seconds), rel_gap=NODE_GAP, abs_gap=0.0)
        if res.status == Status.SOLVER_ERROR:     # HiGHS's "Solve error", rare: once more, tighter
            res = p.solve(time_limit=max(0.05, seconds), rel_gap=NODE_GAP, abs_gap=0.0,
                          feasibility_tol=1e-8)
        if res.status == Status.INFEASIBLE:
            return None
        if res.status != Status.OPTIMAL:
            return FAILED
        xs, ms = res.x[self.x], np.maximum(res.x[self.mu], 0.0)
        key = min(float(res.objective), float(res.bound))     # HiGHS's dual bound, within its gap
        return key, np.where(mdp.terminal, 0, np.argmax(xs, axis=1)), ms.sum(axis=1), float(res.objective)


def tree_available(mdp: TabularMDP, alpha: float, bounds=None) -> bool:
    """Whether the node rows exist (`linear_lie_bounds` is finite: not on hidden_goal, g = 0.99,
    nor on the gridworlds of mdps/, g = 0.95) and add to the static row (some live pair has two
    successors: with one, every variance is 0); otherwise the listing is the faster search
    (benchmarks/RESULTS.md 14: deterministic Garnets of 25 and 40 states, 1.6 and 3.4 s against
    2.4 and 7.7 s)."""
    stochastic = bool(((mdp.P > 0).sum(axis=-1)[~mdp.terminal] > 1).any())
    return stochastic and linear_lie_bounds(mdp, alpha, bounds) is not None


def tree_end(mdp: TabularMDP, alpha: float, band: float, sense: str, certify, time_limit: float,
             starts=(), decide=None, bounds=None) -> ListedEnd:
    """The min (`sense` "min") or max ("max") of J(pi, M) over the band's equilibria by the tree
    of the module docstring; arguments and result as `listing.listed_end` (`nodes`: the nodes
    whose optimal policy was settled)."""
    t0 = time.perf_counter()
    verdicts = Verdicts(mdp, alpha, band, sense, certify, decide, bounds)
    sign = verdicts.sign
    for eq in starts:
        verdicts.start(eq)
    node_milp = _NodeMILP(mdp, alpha, band, sign, verdicts.bounds)
    live = ~mdp.terminal
    failed: list[float] = []                    # bounds of nodes whose MILP failed

    def left() -> float:
        return time_limit - (time.perf_counter() - t0)

    def push(heap, allowed, box, key):
        lo, hi = completion_box(mdp, allowed, *box)
        sol = node_milp.solve(allowed, variance_bounds(mdp, allowed, lo, hi), verdicts.best, left())
        if sol is None:
            return
        if sol is FAILED:
            # out of time, the node stays open with its parent's bound (the loop then stops);
            # else HiGHS failed twice and the parent's bound counts in the gap
            if left() > 0:
                failed.append(key)
            else:
                heapq.heappush(heap, (key, next(counter), allowed, (lo, hi), None))
            return
        heapq.heappush(heap, (sol[0], next(counter), allowed, (lo, hi), sol))

    # a first incumbent: the best policy whose floor part alone is in the band, settled (a
    # heuristic: it only sharpens the cutoff of the node MILPs)
    first = node_milp.solve(np.ones((mdp.n_states, mdp.n_actions), dtype=bool), None,
                            verdicts.best, min(left(), FIRST_SECONDS))
    if first is not None and first is not FAILED:
        verdicts.settle(first[1])
    counter = iter(range(1 << 62))
    root = np.zeros((mdp.n_states, mdp.n_actions), dtype=bool)
    root[live] = True
    root[mdp.terminal, 0] = True
    heap: list = []
    push(heap, root, outer_box(mdp), -math.inf)
    nodes, status = 0, "optimal"
    while heap and heap[0][0] < verdicts.best - J_REL_GAP * max(1.0, abs(verdicts.best)):
        if left() <= 0:
            status = "time limit"
            break
        key, _, allowed, box, sol = heapq.heappop(heap)
        nodes += 1
        _, actions, d, _ = sol
        verdict, cls = verdicts.settle(actions)
        if verdict in ("in", "worse") and sol[3] - key <= J_REL_GAP * max(1.0, abs(key)):
            continue            # pi is the node's best: the node is settled
        fixed = allowed.copy()
        for s in sorted((s for s in cls if fixed[s].sum() > 1), key=lambda s: -d[s]):
            child = fixed.copy()
            child[s, actions[s]] = False
            fixed[s] = False
            fixed[s, actions[s]] = True
            push(heap, child, box, key)
    if failed:
        status = "node MILP failed"
    candidates = [heap[0][0]] if heap and status != "optimal" else []
    bound = min(candidates + failed + [sign * J for J in verdicts.undecided] + [verdicts.best])
    end = min(verdicts.accepted.values(), key=lambda e: sign * e.J) if verdicts.accepted else None
    if end is None and status == "optimal" and not verdicts.undecided and not failed:
        status = "infeasible"
    return ListedEnd(end, status, sign * bound, verdicts.out, verdicts.undecided,
                     len(verdicts.accepted), nodes, time.perf_counter() - t0,
                     verdicts.undecided_actions)
