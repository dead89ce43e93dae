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
within the band's reach of these ends.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from bilevel.mdp.graph import n_policies
from bilevel.equilibria.certificates import FOLLOWER_GAP_TOL, certify, equilibrium_tolerance
from bilevel.equilibria.interval import Equilibrium, EquilibriumInterval
from bilevel.equilibria.mpec_route import set_objective
import bilevel.game as game
from bilevel.game.formulations import build
from bilevel.mdp.model import TabularMDP
from bilevel.mpec.driver import solve_mpec
from bilevel.mpec.modes import ExactProduct
from bilevel.tabular.evaluation import policy_return
from solvers.base import Status
from solvers.scip import Scip

MAX_POLICIES = 4096


@dataclass(frozen=True, eq=False)
class PolicyBound:
    """SCIP's result for one fixed deterministic policy."""

    actions: tuple            # action per live state
    J: float                  # J(pi, M): true return, independent of the model
    lb: float                 # lower bound on L(pi) (+inf: no model makes pi optimal)
    ub: float                 # best leader value found (+inf: none)
    eq: Equilibrium | None    # the point achieving ub, every number recomputed


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


def policy_bounds(mdp: TabularMDP, formulation: str, alpha=None, time_limit: float = 2.0,
                  log=None) -> tuple[list[PolicyBound], object]:
    """[PolicyBound per deterministic policy], and the BilevelModel used."""
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
    backend = Scip(time_limit=time_limit, gap=1e-9, abs_gap=equilibrium_tolerance(bm, 0.0) / 10)
    out = []
    for acts, pi, live in deterministic_policies(mdp):
        for s in live:
            for a in range(mdp.n_actions):
                m.pi[s, a].fix(float(pi[s, a]))
        r = solve_mpec(m, ExactProduct(), backend)
        lb = r.bound if r.bound is not None and math.isfinite(r.bound) else -math.inf
        ub, eq = math.inf, None
        if r.status == Status.INFEASIBLE:
            lb = math.inf
        elif r.point is not None:
            for v, x in r.point.items():
                v.set_value(x, skip_validation=True)
            eq = certify(bm, r.complementarity_violation)
            if eq.follower_gap <= FOLLOWER_GAP_TOL:
                ub = eq.leader_objective
            lb = min(lb, ub)
        out.append(PolicyBound(acts, policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, pi),
                               lb, ub, eq))
        if log:
            log(f"{formulation} pi={acts}: L in [{lb:.9g}, {ub:.9g}] ({r.status.value})")
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
               "leader_optimum_resolved": resolved,
               "equilibria": len(sure) if resolved else 0, "undecided": len(undecided),
               "leader_bounds": [L_low, L_up],
               "unproved_ends": [e for e, ok in (("min", proved_low), ("max", proved_high))
                                 if not ok]}
    details = {"enumeration": summary}
    return EquilibriumInterval(formulation, "solved", alpha=bm.alpha,
                               certificate="global" if resolved and proved_low and proved_high
                               else "local",
                               solver="enumerate", starts=len(bounds), leader_objective=L_up,
                               tolerance=tol, low=low.eq, high=high.eq,
                               seconds=time.perf_counter() - t0, details=details)
