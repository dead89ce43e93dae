"""Global equilibrium intervals of the MAL family on tiny MDPs by enumerating the follower's
deterministic policies: an independent route to the one in `equilibria` (no complementarity
branching), and a certificate where SCIP cannot close the full MPEC's gap.

For a MAL-family formulation and a deterministic policy pi (one action per live state),
    L(pi) = min_Phat leader(Phat, pi)  s.t.  pi optimal in Phat at every state
(the MPEC with pi fixed: w(s, pi(s)) = 0, w >= 0; only the Bellman terms Phat V stay bilinear)
is solved by SCIP with a time limit, which returns bounds lb(pi) <= L(pi) <= ub(pi) (lb = ub
when proved; pi is excluded when no model makes it optimal). The leader optimum
L* = min_Phat min_{pi optimal in Phat} leader is attained by a deterministic pi: on the face of
Phat-optimal policies the leader objective is linear in the occupancy mu_M^pi (the loss is
sum mu KL, the noise loss mixes mu with a constant, and J(pi, Phat) = V*_Phat is constant there).
So L* lies in [min lb, min ub], and with the equilibrium band tol of `equilibria`:
    pi is an equilibrium for sure   if ub(pi) <= min lb + tol,
    pi is not one for sure          if lb(pi) >  min ub + tol,
    otherwise undecided.
J(pi, M) does not depend on Phat, so the interval over deterministic equilibria is
[min, max] of J(pi, M) over the sure ones; an end is proved ("global") when no undecided policy
lies beyond it. When the bounds do not resolve L* (no policy is sure), the policy with the best
value found stands, "local". Policies mixing tied actions inside the band are not enumerated: their J lies
within the band's reach of these ends. Under `occupancy: average` that argument fails (J_T and
the mu_T-weighted loss are polynomials in pi, docs/DESIGN.md 5.9): the interval is over
deterministic follower policies and says so, certificate "local".

The leader limit: the classification needs a policy far above the band only to be known to be
there. The policies are solved in the order of leader(pi, P_eta) (P_eta the floored fit, the
policies optimal in it first: a guess at who attains L*), each with SCIP's dual limit
(`limits/dual`: SCIP stops once its lower bound reaches it)
    T = U + tol(U) + 2 g,   U = min(ub found so far, leader(pi, P_eta) over P_eta-optimal pi),
g = SCIP's absolute gap. A solve stopped at T is the unlimited solve cut short (same model and
parameters, SCIP deterministic; the limit only stops it), and SCIP's dual bound never decreases
along a solve nor exceeds its incumbent's value. So the bound lb' of the stopped solve is at most
the unlimited solve's lb and at most its incumbent's value, of which the certified ub is the
recomputation from arrays (taken within g of it, as SCIP's tolerances give). After all solves, a
policy whose bound reached T - g (or that SCIP stopped at T) is set aside when
    lb' > L_up + tol + g                                                        (*)
(L_up, tol from the bounds at hand). Its unlimited solve then has lb > L_up + tol and
ub > L_up + tol: the policy is neither sure nor undecided, and attains neither min lb (<= L_up)
nor min ub. The other policies' bounds are the unlimited ones, so L_low, L_up, tol, the sure and
undecided sets, the ends and the certificate are those of the unlimited enumeration. A policy
that reached T - g but fails (*) is solved again without the limit, and the check repeated (a
lower L_up only eases (*)). As U >= L_up when U_0 is (and x + tol(x) increases), T >= L_up + tol
+ 2 g: (*) fails only where leader(pi, P_eta) lies more than g below what SCIP certifies for that
pi. A set-aside policy has no certified ub (+inf), and a finite lb where the unlimited solve would
have proved it infeasible: the summary counts it under "set_aside", not "infeasible". A solve
that stops at its time limit depends on the machine's speed, with or without the leader limit.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from bilevel.mdp.graph import n_policies
from bilevel.equilibria.certificates import (FOLLOWER_GAP_TOL, certify, equilibrium_tolerance,
                                             leader_value)
from bilevel.equilibria.interval import Equilibrium, EquilibriumInterval
from bilevel.equilibria.mpec_route import set_objective
import bilevel.game as game
from bilevel.game.formulations import BilevelModel, build
from bilevel.mdp.model import TabularMDP
from bilevel.mpec.driver import solve_mpec
from bilevel.mpec.modes import ExactProduct, Scholtes
from bilevel.tabular.evaluation import bellman_residual, policy_evaluation
from solvers.base import Status
from solvers.ipopt import Ipopt
from solvers.scip import Scip

MAX_POLICIES = 4096
OPTIMAL_IN_FIT = 1e-9    # pi counts as optimal in P_eta when its Bellman residual is below this


@dataclass(frozen=True, eq=False)
class PolicyBound:
    """SCIP's result for one fixed deterministic policy."""

    actions: tuple            # action per live state
    J: float                  # J(pi, M): true return, independent of the model
    lb: float                 # lower bound on L(pi) (+inf: no model makes pi optimal)
    ub: float                 # best leader value found (+inf: none, or set aside at the limit)
    eq: Equilibrium | None    # the point achieving ub, every number recomputed
    limit: float = math.inf   # SCIP's dual limit T of this solve (+inf: none)
    set_aside: bool = False   # the bound reached T - g: only lb' <= lb is known (docstring)


def deterministic_policies(mdp: TabularMDP):
    """Every deterministic policy as (actions per live state, pi array (S, A)); terminal rows
    uniform (they carry no occupancy)."""
    live = [s for s in range(mdp.n_states) if not mdp.terminal[s]]
    for acts in itertools.product(range(mdp.n_actions), repeat=len(live)):
        pi = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
        for s, a in zip(live, acts):
            pi[s] = 0.0
            pi[s, a] = 1.0
        yield acts, pi, live


def fit_guess(bm: BilevelModel, policies) -> tuple[list[int], float]:
    """The solve order and U_0: policies optimal in the floored fit P_eta (Bellman residual
    below OPTIMAL_IN_FIT max(1, |V|)) first, each group by leader(pi, P_eta) ascending; U_0 the
    least leader(pi, P_eta) over the P_eta-optimal pi (+inf: none). A guess only: (*) of the
    module docstring keeps the result exact whatever it is."""
    mdp = bm.mdp
    Peta = mdp.reference_fit()        # P_eta; a restricted class: its fit to the uniform policy's data
    rhat = mdp.model_reward(Peta)
    keys, U0 = [], math.inf
    for _, pi, _ in policies:
        V = policy_evaluation(Peta, rhat, mdp.gamma, pi)
        residual = bellman_residual(Peta, rhat, mdp.gamma, pi, V)
        optimal = residual <= OPTIMAL_IN_FIT * max(1.0, float(np.abs(V).max()))
        value = leader_value(bm.formulation, mdp, pi, Peta, bm.alpha)
        keys.append((not optimal, value))
        if optimal:
            U0 = min(U0, value)
    return sorted(range(len(keys)), key=keys.__getitem__), U0


def leader_limit(bm: BilevelModel, U: float, g: float) -> float:
    """SCIP's dual limit T = U + tol(U) + 2 g (+inf while U is)."""
    return U + equilibrium_tolerance(bm, U) + 2.0 * g if math.isfinite(U) else math.inf


def solve_policy(bm: BilevelModel, acts, pi, live, time_limit: float, g: float,
                 limit: float = math.inf, log=None) -> PolicyBound:
    """SCIP on the MPEC with pi fixed (stopping at the gap g, or at the dual limit `limit`);
    the point is certified unless the bound reached limit - g (set aside: ub = +inf)."""
    mdp, m = bm.mdp, bm.model
    for s in live:
        for a in range(mdp.n_actions):
            m.pi[s, a].fix(float(pi[s, a]))
    options = {"limits/dual": limit} if math.isfinite(limit) else None
    backend = Scip(time_limit=time_limit, gap=1e-9, abs_gap=g, options=options)
    r = solve_mpec(m, ExactProduct(), backend)
    lb = r.bound if r.bound is not None and math.isfinite(r.bound) else -math.inf
    aside = r.status != Status.INFEASIBLE and (lb >= limit - g or "duallimit" in r.message)
    ub, eq = math.inf, None
    if r.status == Status.INFEASIBLE:
        lb = math.inf
    elif r.point is not None and not aside:
        for v, x in r.point.items():
            v.set_value(x, skip_validation=True)
        eq = certify(bm, r.complementarity_violation)
        if eq.follower_gap > FOLLOWER_GAP_TOL:
            eq = polish_point(bm, eq)
        if eq.follower_gap <= FOLLOWER_GAP_TOL:
            ub = eq.leader_objective
        lb = min(lb, ub)
    if log:
        note = f", leader limit {limit:.9g}" if math.isfinite(limit) else ""
        log(f"{bm.formulation} pi={acts}: L in [{lb:.9g}, {ub:.9g}] ({r.status.value}{note})")
    return PolicyBound(acts, mdp.true_return(pi), lb, ub, eq, limit, aside)


def polish_point(bm: BilevelModel, eq: Equilibrium) -> Equilibrium:
    """SCIP's point for a fixed policy that misses the follower certificate by its feasibility
    tolerance: with pi fixed the MPEC has no complementarity left (its pairs are fixed sides),
    so IPOPT (tol 1e-9) re-solves it from that point (an active-set polish). The polished point
    replaces SCIP's only when it passes the certificate; its leader value is then a certified
    upper bound ub for the policy (possibly a little above SCIP's)."""
    m = bm.model
    res = solve_mpec(m, Scholtes(schedule=()), Ipopt(tol=1e-9, max_iter=3000))
    if not res.ok or res.point is None:
        return eq
    for v, x in res.point.items():
        v.set_value(x, skip_validation=True)
    polished = certify(bm, res.complementarity_violation)
    return polished if polished.follower_gap <= FOLLOWER_GAP_TOL else eq


def unsettled(bm: BilevelModel, bounds: list[PolicyBound], g: float) -> list[int]:
    """The set-aside policies failing (*): lb' <= L_up + tol + g."""
    L_up = min(b.ub for b in bounds)
    cut = L_up + equilibrium_tolerance(bm, L_up) + g if math.isfinite(L_up) else math.inf
    return [i for i, b in enumerate(bounds) if b.set_aside and not b.lb > cut]


def policy_bounds(mdp: TabularMDP, formulation: str, alpha=None, time_limit: float = 2.0,
                  log=None) -> tuple[list[PolicyBound], object]:
    """[PolicyBound per deterministic policy] (in `deterministic_policies` order), and the
    BilevelModel used. Solved in `fit_guess` order under the leader limit; set-aside policies
    failing (*) are solved again without it (module docstring)."""
    if not game.formulation(formulation).enumerable:
        raise ValueError(f"enumeration covers the MAL family (a policy follower), not {formulation!r}")
    n = n_policies(mdp)
    if n > MAX_POLICIES:
        raise ValueError(f"{n} deterministic policies: enumeration is for tiny MDPs "
                         f"(at most {MAX_POLICIES})")
    bm = build(mdp, formulation, alpha=alpha)
    m = bm.model
    set_objective(m, m.leader)
    # the bounds need only resolve the equilibrium band: SCIP stops at a tenth of its width
    g = equilibrium_tolerance(bm, 0.0) / 10
    policies = list(deterministic_policies(mdp))
    order, U = fit_guess(bm, policies)
    out: list = [None] * len(policies)
    for i in order:
        out[i] = solve_policy(bm, *policies[i], time_limit, g, leader_limit(bm, U, g), log)
        U = min(U, out[i].ub)
    while redo := unsettled(bm, out, g):
        for i in redo:
            out[i] = solve_policy(bm, *policies[i], time_limit, g, log=log)
    for v in m.pi.values():
        v.unfix()
    return out, bm


def enumerate_interval(mdp: TabularMDP, formulation: str, alpha=None, time_limit: float = 2.0,
                       log=None) -> EquilibriumInterval:
    """The equilibrium interval of `formulation` over deterministic follower policies (see the
    module docstring); certificate "global" when both ends are proved, else "local"."""
    t0 = time.perf_counter()
    bounds, bm = policy_bounds(mdp, formulation, alpha, time_limit, log)
    L_low = min(b.lb for b in bounds)
    L_up = min(b.ub for b in bounds)
    if not math.isfinite(L_up):
        return EquilibriumInterval(formulation, "failed", alpha=bm.alpha, solver="enumerate",
                                   reason="no policy with a certified point",
                                   seconds=time.perf_counter() - t0)
    tol = equilibrium_tolerance(bm, L_up)
    sure = [b for b in bounds if b.ub <= L_low + tol]
    resolved = bool(sure)
    if not resolved:   # the bounds do not resolve L*: the best point found stands (local)
        sure = [min(bounds, key=lambda b: b.ub)]
    undecided = [b for b in bounds if b not in sure and b.lb <= L_up + tol]
    low = min(sure, key=lambda b: b.J)
    high = max(sure, key=lambda b: b.J)
    proved_low = not any(b.J < low.J for b in undecided)
    proved_high = not any(b.J > high.J for b in undecided)
    summary = {"policies": len(bounds), "infeasible": sum(b.lb == math.inf for b in bounds),
               "set_aside": sum(b.set_aside for b in bounds),
               "leader_optimum_resolved": resolved,
               "equilibria": len(sure) if resolved else 0, "undecided": len(undecided),
               "leader_bounds": [L_low, L_up],
               "unproved_ends": [e for e, ok in (("min", proved_low), ("max", proved_high))
                                 if not ok]}
    if mdp.averaged:
        summary["mixed_policies"] = ("not covered under occupancy: average: the T-step return and "
                                     "the mu_T-weighted loss are not linear in an occupancy, so "
                                     "mixtures may reach beyond the deterministic ends")
    details = {"enumeration": summary}
    proved = resolved and proved_low and proved_high and not mdp.averaged
    return EquilibriumInterval(formulation, "solved", alpha=bm.alpha,
                               certificate="global" if proved else "local",
                               solver="enumerate", starts=len(bounds), leader_objective=L_up,
                               tolerance=tol, low=low.eq, high=high.eq,
                               seconds=time.perf_counter() - t0, details=details)
