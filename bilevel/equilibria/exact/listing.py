"""An end of MAL + agent reward's band by listing deterministic follower policies in the order
of J, each one settled from arrays (docs/DESIGN.md 5.6, "The ends by listing policies").

SCIP solves the MILP over deterministic policies

    min / max  J(pi, M) = sum_{s,a} r(s,a) mu(s,a) / (1 - g)
    s.t.  mu the true occupancy flow of pi,  mu(s,a) <= x(s,a),  x binary, one action per live state,
          sum mu a <= band                (a = lie_bound.linear_coefficients: valid at every equilibrium)

with a constraint handler that settles every integer candidate pi before SCIP may keep it:

  * out:       lie_bound(pi) > band, or else occupancy_box.occupancy_bound(pi) > band (tighter,
               slower), a proof that no equilibrium with pi lies in the band. It is cut off
               together with every policy that agrees with it on the states it reaches (both
               bounds hold for all of them): sum_{s in Z(pi)} x(s, pi(s)) <= |Z(pi)| - 1;
  * in:        `certify(pi)` returns a certified equilibrium with leader <= band (IPOPT with the
               policy fixed, every number recomputed): SCIP keeps pi as a solution;
  * else `decide(pi)` may still put it out with its class (the occupancy box split by the
    actions where pi does not go), or alone (SCIP on the MINLP with the policy fixed), or in;
  * undecided: none of these; cut off like an excluded one, its J recorded;
  * worse:     not better than an accepted policy (it cannot move the end): cut off unsettled.

When SCIP proves its optimum, every policy with a better J was cut off as out or undecided, so
the end lies between SCIP's optimum (an equilibrium in the band) and the best undecided J; the
proved gap is their distance (0 without undecided policies). Stopped at the time limit, SCIP's
dual bound takes the place of its optimum in that bound. The band is the one of the MINLP's
constraint `leader <= L + tol`, from arrays: no solver tolerance widens it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
from pyscipopt import SCIP_RESULT, Conshdlr, Model, quicksum

from bilevel.equilibria.exact.lie_bound import lie_bound, linear_coefficients, policy_occupancy_values
from bilevel.equilibria.exact.minlp import minlp_bounds
from bilevel.equilibria.exact.occupancy_box import occupancy_bound
from bilevel.equilibria.interval import Equilibrium
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import deterministic_policy

J_REL_GAP = 1e-9       # SCIP's relative gap on J (the MILP's values are exact sums of the flow)


@dataclass
class ListedEnd:
    """The result of `listed_end`: the end (None when no candidate was certified), SCIP's status,
    the proved bound on the end and the counts of settled policies."""

    end: Equilibrium | None
    status: str
    bound: float                    # the end is proved to lie within [bound, end.J] (min) / [end.J, bound] (max)
    out: int = 0
    undecided: list = field(default_factory=list)       # J of each undecided policy
    accepted: int = 0
    nodes: int = 0
    seconds: float = 0.0

    undecided_actions: list = field(default_factory=list)     # their policies

    @property
    def gap(self) -> float:
        return math.inf if self.end is None else abs(self.end.J - self.bound)


def _actions(model: Model, x: dict, mdp: TabularMDP, sol=None) -> np.ndarray:
    """The deterministic policy of the binary x in `sol` (None: the LP solution); 0 on terminal
    states."""
    vals = np.array([[model.getSolVal(sol, x[s, a]) for a in range(mdp.n_actions)]
                     for s in range(mdp.n_states)])
    return np.where(mdp.terminal, 0, vals.argmax(axis=1))


class _Settle(Conshdlr):
    """The constraint handler of the module docstring."""

    def __init__(self, owner: "Verdicts", x: dict):
        self.owner, self.x = owner, x

    def conscheck(self, constraints, solution, checkintegrality, checklprows, printreason,
                  completely, **kw):
        verdict, _ = self.owner.settle(_actions(self.model, self.x, self.owner.mdp, solution))
        return {"result": SCIP_RESULT.FEASIBLE if verdict == "in" else SCIP_RESULT.INFEASIBLE}

    def _enforce(self):
        actions = _actions(self.model, self.x, self.owner.mdp)
        verdict, reached = self.owner.settle(actions)
        if verdict == "in":
            return {"result": SCIP_RESULT.FEASIBLE}
        self.model.addCons(quicksum(self.x[s, actions[s]] for s in reached) <= len(reached) - 1)
        return {"result": SCIP_RESULT.CONSADDED}

    def consenfolp(self, constraints, nusefulconss, solinfeasible):
        return self._enforce()

    def consenfops(self, constraints, nusefulconss, solinfeasible, objinfeasible):
        return self._enforce()

    def conslock(self, constraint, locktype, nlockspos, nlocksneg):
        pass                                   # no dual reductions (turned off below)


class Verdicts:
    """The verdicts on deterministic policies of `settle`, cached per policy, and the accepted
    equilibria; shared by the listing and the policy tree (bilevel.equilibria.exact.policy_tree)."""

    def __init__(self, mdp: TabularMDP, alpha: float, band: float, sense: str, certify, decide,
                 bounds=None):
        self.mdp, self.alpha, self.band, self.certify, self.decide = mdp, alpha, band, certify, decide
        self.sign = 1.0 if sense == "min" else -1.0
        self.bounds = bounds or minlp_bounds(mdp)
        self.verdicts: dict = {}
        self.accepted: dict = {}
        self.undecided: list = []
        self.undecided_actions: list = []
        self.out = 0
        self.best = math.inf            # sign * J of the best accepted policy

    def accept(self, actions, eq: Equilibrium) -> None:
        self.verdicts[np.asarray(actions).tobytes()] = ("in", [])
        self.accepted[np.asarray(actions).tobytes()] = eq
        self.best = min(self.best, self.sign * eq.J)

    def start(self, eq: Equilibrium) -> np.ndarray | None:
        """Accept a certified equilibrium from another route when it lies in the band; its
        deterministic policy, or None."""
        if eq.leader_objective > self.band:
            return None
        actions = np.where(self.mdp.terminal, 0, np.argmax(eq.policy, axis=1))
        self.accept(actions, eq)
        return actions

    def settle(self, actions) -> tuple[str, list]:
        """("out" | "in" | "undecided" | "worse", the states of the cut), cached per policy: the
        live states pi reaches (J, the bounds, the certifier, which re-chooses the actions
        elsewhere, and `decide`'s split are the same for every policy that agrees there), or
        every live state for a policy SCIP put out alone; "worse": not better than an accepted policy, so it cannot move the
        end (cut off without a verdict)."""
        key = np.asarray(actions).tobytes()
        if key in self.verdicts:
            return self.verdicts[key]
        mdp = self.mdp
        d, V = policy_occupancy_values(mdp, actions)
        reached = [int(s) for s in np.flatnonzero((d > 0) & ~mdp.terminal)]
        J = float(mdp.rho0 @ V)
        lb = lie_bound(mdp, self.alpha, actions, self.bounds, d=d, V=V)
        if lb is not None and lb["leader_lo"] > self.band:
            verdict = "out"
            self.out += 1
        elif self.sign * J >= self.best:
            verdict = "worse"
        elif occupancy_bound(mdp, self.alpha, actions, self.band, d=d, V=V)["out"]:
            verdict = "out"                     # for every policy that agrees with pi on Z(pi)
            self.out += 1
        else:
            eq = self.certify(np.asarray(actions))
            verdict = "in" if eq is not None and eq.leader_objective <= self.band else "undecided"
            if verdict == "undecided" and self.decide is not None:
                verdict, eq = self.decide(np.asarray(actions))
            if verdict == "in" and abs(eq.J - J) <= 1e-9 * max(1.0, abs(J)):
                self.accept(actions, eq)
                return "in", reached
            if verdict == "out":        # decide's split: the class is out
                self.out += 1
            elif verdict == "out_policy":
                # SCIP's verdict is on this policy: its actions where it does not go still enter
                # the model's follower condition, so the cut covers every live state
                verdict = "out"
                self.out += 1
                reached = [int(s) for s in np.flatnonzero(~mdp.terminal)]
            else:
                verdict = "undecided"
                self.undecided.append(J)
                self.undecided_actions.append(np.asarray(actions).copy())
        self.verdicts[key] = (verdict, reached)
        return self.verdicts[key]


def listed_end(mdp: TabularMDP, alpha: float, band: float, sense: str, certify,
               time_limit: float, starts=(), decide=None, bounds=None) -> ListedEnd:
    """The min (`sense` "min") or max ("max") of J(pi, M) over the band's equilibria by the
    listing of the module docstring. `certify(actions)` returns a certified equilibrium with
    that deterministic policy or None; `decide(actions)`, for a policy neither the bound nor
    `certify` settles, returns ("out" | "in" | "undecided", equilibrium or None) from a solve
    with the policy fixed; `starts`: certified equilibria in the band, SCIP's first solutions."""
    t0 = time.perf_counter()
    S, A, g = mdp.n_states, mdp.n_actions, mdp.gamma
    live = ~mdp.terminal
    listing = Verdicts(mdp, alpha, band, sense, certify, decide, bounds)
    m = Model()
    m.hideOutput()
    mu = {(s, a): m.addVar(lb=0.0, ub=1.0 if live[s] else 0.0) for s in range(S) for a in range(A)}
    x = {(s, a): m.addVar(vtype="B") for s in range(S) for a in range(A)}
    for t in np.flatnonzero(live):
        m.addCons(quicksum(mu[t, a] for a in range(A))
                  - g * quicksum(float(mdp.P[s, a, t]) * mu[s, a] for s in range(S) for a in range(A)
                                 if mdp.P[s, a, t] > 0) == (1 - g) * float(mdp.rho0[t]))
        m.addCons(quicksum(x[t, a] for a in range(A)) == 1)
    for k in mu:
        m.addCons(mu[k] <= x[k])
    coef = linear_coefficients(mdp, alpha, listing.bounds) / (1 - alpha)     # in units of J: SCIP's tolerances are absolute
    m.addCons(quicksum(float(coef[k]) * mu[k] for k in mu if live[k[0]])
              <= band / (1 - alpha) + 1e-9 * max(1.0, abs(band) / (1 - alpha)))
    m.setObjective(quicksum(float(mdp.r[k]) / (1 - g) * mu[k] for k in mu if live[k[0]]),
                   "minimize" if sense == "min" else "maximize")
    m.includeConshdlr(_Settle(listing, x), "settle", "settles deterministic policies from arrays",
                      chckpriority=-10, enfopriority=-10, needscons=False)
    m.setParam("misc/allowstrongdualreds", False)
    m.setParam("misc/allowweakdualreds", False)
    m.setParam("limits/time", max(0.1, float(time_limit)))
    m.setParam("limits/gap", J_REL_GAP)
    for eq in starts:
        actions = listing.start(eq)
        if actions is None:
            continue
        sol = m.createSol()
        occ = occupancy(mdp.P, mdp.rho0, g, deterministic_policy(actions, A))
        for (s, a), v in mu.items():
            m.setSolVal(sol, v, float(occ[s, a]) if live[s] else 0.0)
            m.setSolVal(sol, x[s, a], 1.0 if a == actions[s] else 0.0)
        m.addSol(sol)
    m.optimize()
    status, nsols = m.getStatus(), m.getNSols()
    end = None
    if nsols:
        end = listing.accepted.get(_actions(m, x, mdp, m.getBestSol()).tobytes())
    sign = listing.sign
    if status == "optimal" and end is not None:
        bound = end.J
    else:
        dual = m.getDualbound()
        bound = dual if abs(dual) < m.infinity() else -sign * math.inf
    for J in listing.undecided:
        if sign * (J - bound) < 0:
            bound = J
    return ListedEnd(end, status, bound, listing.out, listing.undecided, len(listing.accepted),
                     int(m.getNNodes()), time.perf_counter() - t0, listing.undecided_actions)


def second_look(res: ListedEnd, sense: str, decide, time_limit: float) -> ListedEnd:
    """A complete search's end (status "optimal") with its undecided policies beyond the end
    given to `decide` again (a longer solve with the policy fixed), best first, until
    `time_limit`. Every policy beyond the end was settled or left undecided, so the end is the
    best of the old one and the policies now "in", and the bound the best still undecided."""
    if res.status != "optimal" or res.end is None:
        return res
    t0, sign = time.perf_counter(), 1.0 if sense == "min" else -1.0
    end, left = res.end, []
    for J, actions in sorted(zip(res.undecided, res.undecided_actions), key=lambda u: sign * u[0]):
        if sign * (J - end.J) >= 0:
            break
        verdict, eq = ("undecided", None) if time.perf_counter() - t0 > time_limit else decide(actions)
        if verdict == "in" and abs(eq.J - J) <= 1e-9 * max(1.0, abs(J)):
            end = eq
        elif verdict != "out":      # "out_policy" leaves the class's other completions open
            left.append((J, actions))
    bound = min([sign * end.J] + [sign * J for J, _ in left if sign * (J - end.J) < 0])
    return replace(res, end=end, bound=sign * bound, undecided=[J for J, _ in left],
                   undecided_actions=[a for _, a in left], seconds=res.seconds + time.perf_counter() - t0)
