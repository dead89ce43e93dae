"""The MPEC route's settings and the pieces of its steps (bilevel.equilibria.mpec_interval
runs the steps): equilibrium intervals with independent certificates (docs/DESIGN.md sections 2
and 4). For one formulation:
  1. leader optimum  L* = min leader(Phat, pi)  over the single-level MPEC;
  2. the interval    min / max J(pi, M)  s.t. the MPEC and  leader <= L* + tol,
     tol = 1e-6 max(1, |L*|) + floor allowance (loss-based leaders only: 2 eta max_sa |K(s,a)|,
     the most a floored fit can cost, so that the floor does not pick among equilibria)
     + the proven absolute gap of step 1 when SCIP stops at its relative gap (SCIP_GAP), so
     the band contains every truly leader-optimal equilibrium;
  3. each end is re-checked without the MPEC: the follower's gap (value iteration in Phat for the
     policy follower; the closed-form KL fit for the model follower), the complementarity
     violation, and J, episode reward, loss and J(pi, Phat) recomputed from the arrays.
Solutions are strong (optimistic) Stackelberg equilibria: the leader picks among the follower's
best responses. `certificate: global` only when SCIP proved all three solves; else `local`.
"""
from __future__ import annotations

import math

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap

import bilevel.game as game
from bilevel.equilibria.certificates import (FEASIBILITY_SLACK, FOLLOWER_GAP_TOL, certify,
                                             snap_to_best_response)
from bilevel.equilibria.interval import Equilibrium
from bilevel.equilibria.starts import starting_point
from bilevel.game.formulations import BilevelModel, extract
from bilevel.mpec.driver import MPECResult, solve_mpec
from bilevel.mpec.modes import Scholtes
from solvers.ipopt import Ipopt


# IPOPT past this many live pairs: no Scholtes homotopy (hundreds to thousands of iterations per
# step at ~26 ms each on a 10x10 grid); every start is follower-optimal and goes straight to the
# active-set polish, a smooth NLP on the start's complementarity branch (1 s on the 10x10 grid)
POLISH_ONLY_PAIRS = 200
# ... and always for a formulation with `polish_only` (bilevel.game: MAL + agent reward)
SCIP_GAP = 1e-3              # relative gap at which SCIP stops ...
SCIP_ABS_GAP = 1e-5          # ... or absolute gap (L* ~ 0); either way the proven gap widens tol
HOMOTOPY = (1e-1, 1e-3, 1e-5, 1e-7, 1e-9)   # Scholtes eps schedule (then an active-set polish)
WARM_SCHEDULE = (1e-6, 1e-8, 1e-10)   # Scholtes eps for starts that are already complementary
WARM_IPOPT = {"warm_start_init_point": "yes", "bound_push": 1e-10, "bound_frac": 1e-10,
              "mu_init": 1e-8}            # keep IPOPT at a start that is already an equilibrium


def set_objective(m, expr, sense=pyo.minimize):
    """Make `sense expr` the model's one objective (m.eq_objective), replacing the previous."""
    if m.component("eq_objective") is not None:
        m.del_component("eq_objective")
    m.eq_objective = pyo.Objective(expr=expr, sense=sense)


def _ipopt_best(m, backend, reduction, kw, warm_points, sense=pyo.minimize, warm_schedule=WARM_SCHEDULE):
    """Best of two IPOPT runs: `warm_points` (exact equilibria already: the structured starts,
    then step 1's leader-optimal points) run `warm_schedule` (a short homotopy from a small eps,
    so the relaxation does not walk away from them; () in polish mode) with WARM_IPOPT; the
    cold starts in `kw` run `reduction`'s full schedule."""
    warm_backend = Ipopt(tol=backend.tol, max_iter=backend.max_iter, options=WARM_IPOPT)
    warm = solve_mpec(m, Scholtes(schedule=warm_schedule), warm_backend, starts=0, x0s=warm_points)
    cold = solve_mpec(m, reduction, backend, **kw)
    found = [r for r in (warm, cold) if r.ok]
    if not found:
        return cold if cold.starts_tried else warm
    sign = 1.0 if sense == pyo.minimize else -1.0
    best = min(found, key=lambda r: sign * r.objective)
    for v, x in best.point.items():        # solve_mpec loaded `cold` last: reload the winner
        v.set_value(x, skip_validation=True)
    if best is warm and cold.ok:
        best = MPECResult(**{**best.__dict__, "solutions": best.solutions + cold.solutions,
                             "starts_tried": warm.starts_tried + cold.starts_tried,
                             "starts_succeeded": warm.starts_succeeded + cold.starts_succeeded})
    return best


_LEADER_RESTARTS = 3     # at most this many restarts of the interval from an improved L*
_POLISH_MAX_GAP = 1e-3   # a global end whose follower gap is at most this is polished, not dropped


def _snaps(bm: BilevelModel) -> bool:
    """Whether a point failing its follower certificate is snapped to the follower's closed-form
    best response (`snap_to_best_response`; PAL's model follower)."""
    return game.formulation(bm.formulation).closed_form_follower


def cap_leader(m, cap: float) -> None:
    """The end steps' constraint leader <= cap on the model (replacing an earlier cap)."""
    if m.component("eq_leader_bound") is not None:
        m.del_component("eq_leader_bound")
    m.eq_leader_bound = pyo.Constraint(expr=m.leader <= cap)


def _load(point) -> None:
    """Set the model's variables to `point` ({VarData: value})."""
    for v, x in point.items():
        v.set_value(x, skip_validation=True)


def _snapshot(m) -> ComponentMap:
    """The current values of every variable of `m` (to restore with `_load`)."""
    return ComponentMap((v, v.value) for v in m.component_data_objects(pyo.Var, descend_into=True)
                        if v.value is not None)


def _polish_policy_follower(bm: BilevelModel, violation) -> Equilibrium | None:
    """MAL family: make a point whose policy is a follower optimum up to a small gap an exact
    one. The policy is rounded to its greedy deterministic policy (argmax of pi in each state)
    and completed from arrays (V, w of that policy in Phat); if the rounded policy is not yet
    optimal in Phat, it is fixed and IPOPT moves the rest of the point (the model among it)
    straight to the active-set polish, under the current objective and leader bound.
    Returns the re-certified point, or None when the polish fails."""
    mdp, m = bm.mdp, bm.model
    x = extract(bm)
    pi = np.zeros_like(x["policy"])
    pi[np.arange(mdp.n_states), x["policy"].argmax(axis=1)] = 1.0
    start = starting_point(bm, pi, x["model"])
    _load(start)
    eq = certify(bm, violation)
    if eq.follower_gap <= FOLLOWER_GAP_TOL:
        return eq
    policy_vars = [m.pi[s, a] for (s, a) in m.SA]
    for v in policy_vars:
        v.fix()
    try:
        res = solve_mpec(m, Scholtes(schedule=()), Ipopt(tol=1e-9, max_iter=3000, options=WARM_IPOPT),
                         starts=0, x0s=[start])
    finally:
        for v in policy_vars:
            v.unfix()
    if not res.ok:
        return None
    return certify(bm, res.complementarity_violation)


def _certified_end(bm: BilevelModel, name: str, res: MPECResult, which: str, band: float,
                   bound_text: str, snapped: dict, polished: dict) -> tuple:
    """Certify the point `res` left in the model as the `name` end, repairing it first when its
    follower certificate fails: PAL is snapped to the closed-form best response (any solver);
    a global (SCIP) point of the MAL family within _POLISH_MAX_GAP is polished
    (`_polish_policy_follower`). The band check is on the point as reported (after any repair).
    Returns (equilibrium, failure reason or "", reason the end is only local or "")."""
    eq = certify(bm, res.complementarity_violation)
    before, repair, local = eq, "", ""
    if eq.follower_gap > FOLLOWER_GAP_TOL and _snaps(bm):
        snap_to_best_response(bm)
        eq = certify(bm, res.complementarity_violation)
        repair = " after the snap to the follower's best response"
        snapped[name] = {"leader_objective_before": before.leader_objective,
                         "leader_objective_after": eq.leader_objective}
    elif FOLLOWER_GAP_TOL < eq.follower_gap <= _POLISH_MAX_GAP and which == "scip":
        fixed = _polish_policy_follower(bm, res.complementarity_violation)
        repair = " after the polish to an exact follower optimum"
        if fixed is None:
            return eq, (f"{name} end fails its certificate: follower gap {eq.follower_gap:.3g} > "
                        f"{FOLLOWER_GAP_TOL:g} and its polish failed"), ""
        eq = fixed
        polished[name] = {"follower_gap_before": before.follower_gap,
                          "follower_gap_after": eq.follower_gap, "J_before": before.J,
                          "J_after": eq.J, "leader_objective_before": before.leader_objective,
                          "leader_objective_after": eq.leader_objective}
    if eq is not before and res.certificate == "global" and res.objective is not None:
        # the solver proved its objective (J) within its gap: the repaired point keeps that
        # proof only if the repair moved J (both recomputed from arrays) by at most that gap
        proven = abs(res.objective - res.bound) if (res.bound is not None and
                                                    math.isfinite(res.bound)) else 0.0
        if abs(eq.J - before.J) > proven + FEASIBILITY_SLACK * max(1.0, abs(before.J)):
            local = (f"{name} end: J moved from {before.J:.9g} to {eq.J:.9g}{repair}, more "
                     f"than the solver's proven gap {proven:.3g}")
    if eq.follower_gap > FOLLOWER_GAP_TOL:
        return eq, (f"{name} end fails its certificate: follower gap {eq.follower_gap:.3g} > "
                    f"{FOLLOWER_GAP_TOL:g}{repair}"), local
    if eq.leader_objective > band:
        return eq, (f"{name} end fails its certificate: leader objective "
                    f"{eq.leader_objective:.9g}{repair} above L* + tol = {bound_text}"), local
    return eq, "", local


def _other_equilibria(bm: BilevelModel, res: MPECResult) -> list[Equilibrium]:
    """The step's other distinct local solutions (IPOPT) that are equilibria: each is loaded,
    snapped (PAL) when its follower certificate fails, re-certified, and kept when it passes.
    The model's values are restored."""
    others = res.solutions[1:]
    if not others:
        return []
    saved, out = _snapshot(bm.model), []
    try:
        for _, point in others:
            _load(point)
            eq = certify(bm, None)
            if eq.follower_gap > FOLLOWER_GAP_TOL and _snaps(bm):
                snap_to_best_response(bm)
                eq = certify(bm, None)
            if eq.follower_gap <= FOLLOWER_GAP_TOL:
                out.append(eq)
    finally:
        _load(saved)
    return out


def _descend_leader(bm: BilevelModel, found: Equilibrium, schedule) -> Equilibrium:
    """A local descent of the leader objective from `found` (an equilibrium that beat L*, but
    found by an interval step, so not a leader optimum itself): IPOPT from it, warm (Scholtes
    `schedule`, then the active-set polish), without the leader bound. The result is
    re-certified (PAL: snapped when its follower certificate fails) and replaces `found` only
    when it is an equilibrium with a smaller recomputed leader objective."""
    m = bm.model
    if m.component("eq_leader_bound") is not None:
        m.del_component("eq_leader_bound")
    set_objective(m, m.leader)
    start = starting_point(bm, found.policy, found.model)
    res = solve_mpec(m, Scholtes(schedule=schedule), Ipopt(tol=1e-9, max_iter=3000, options=WARM_IPOPT),
                     starts=0, x0s=[start])
    if not res.ok:
        return found
    eq = certify(bm, res.complementarity_violation)
    if eq.follower_gap > FOLLOWER_GAP_TOL and _snaps(bm):
        snap_to_best_response(bm)
        eq = certify(bm, res.complementarity_violation)
    if eq.follower_gap > FOLLOWER_GAP_TOL or eq.leader_objective >= found.leader_objective:
        return found
    return eq
