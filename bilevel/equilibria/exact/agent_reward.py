"""The interval of MAL + agent reward from the binary-follower MINLP of `bilevel.equilibria.exact.minlp`,
the tree of partial policies of `bilevel.equilibria.exact.policy_tree` and the listing of
`bilevel.equilibria.exact.listing`.

Steps: L* = min leader by SCIP on the MINLP, started from certified equilibria (`incumbents`:
the floored fit with its greedy policy, the optimal policy of M with the hostile witness model,
each improved by IPOPT with the policy fixed; and any `starts` of another route, as `auto`
passes IPOPT's ends); SCIP's point is re-certified from arrays (`certify_point`) together with
its polish by the same fixed-policy NLP, and the one with the smaller leader objective stands.
Every candidate's model is first raised onto the floor (`on_floor`): the bounds that put
policies out hold for Phat >= eta, and at alpha near 1 a solver's 1e-8 below it is 1e-4 in J.
The band is leader <= L_best + tol (L_best the best certified leader value found, tol =
equilibrium_tolerance(L_best)), from arrays: it contains the band around L* and lies within
SCIP's proven gap on L* of it. Then max and min of J(pi, M) over the band by the tree of
partial policies (`tree_end`; by listing deterministic policies, `listed_end`, where the tree's
node rows do not exist): each candidate policy is put out by the proved bound of `lie_bound`,
in by a certified equilibrium (`_certifier`), or settled with its class (the policies that
agree with it where it goes) by the occupancy box split over the actions off it, or alone by
SCIP on the MINLP with the policy fixed (`_policy_solver`); the ones left undecided bound the
end. Under a `budget` each step
gets the time left over the steps left (the max end runs first). The certificate is "global"
only when SCIP proved L* and both searches settled every policy beyond their end; SCIP's proofs
hold up to its feasibility tolerance, like every SCIP route here.

Reach (alpha = 0.9999, benchmarks/agent_reward_reach.py and RESULTS.md 13-14): see
docs/DESIGN.md 5.6. On deterministic MDPs (one successor per pair) the lie on supp P vanishes;
on stochastic ones the per-policy bound separates the policies at the band's edge that the
static relaxation (about 0.06 in J at g = 0.9) cannot, and the tree's node rows, the same bound
at values boxed over a node's completions, separate whole subtrees of them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap

from bilevel.equilibria.certificates import (FEASIBILITY_SLACK, FOLLOWER_GAP_TOL,
                                             equilibrium_tolerance, model_reward)
from bilevel.equilibria.exact.minlp import FORMULATION, FixedPolicyNLP, StartedScip, actions_of, build_minlp, minlp_bounds, model_of, point_from_arrays, policy_array
from bilevel.equilibria.exact.lie_bound import policy_occupancy_values
from bilevel.equilibria.exact.listing import listed_end, second_look
from bilevel.equilibria.exact.occupancy_box import split_out
from bilevel.equilibria.exact.policy_tree import tree_available, tree_end
from bilevel.equilibria.exact.routes import certify_point
from bilevel.equilibria.exact.search import hiding_descent
from bilevel.equilibria.exact.structure import FollowerStructure
from bilevel.equilibria.interval import Equilibrium, EquilibriumInterval
from bilevel.equilibria.mpec_route import set_objective
from bilevel.game.formulations import BilevelModel, resolve_alpha
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import value_iteration
from bilevel.tabular.fits import kl_fit
from solvers.base import SolveResult, Status


SOLVER = "exact-minlp"
J_GAP = 1e-7             # relative gap at which SCIP stops on J(pi, M) (also absolute, times max(1, |J|))
# SCIP stops on L* at this share of equilibrium_tolerance (absolute gap; the proven gap widens the
# band). Half: the root bound of the simulation relaxation is within it on garnet(16..25, 3, 2)
# (a tenth left S = 16 and 25 unproved after 120 s, the root bound never moving)
LEADER_GAP_SHARE = 0.5
# SCIP parameters of every solve: optimization-based bound tightening every 5 levels, not only
# at the root (garnet(6..12, 3, 2, neighbors): the step on min J went from 42 s to 7 s at S = 6;
# S = 8 closed in 28 s instead of not in 120 s)
SCIP_OPTIONS: dict = {"propagating/obbt/freq": 5}
# under a budget, IPOPT's iterations per fixed-policy NLP (they converge in 15-250 on Garnets of
# 3-16 states; the odd one takes 600-1,700 and seconds, and its start stays a candidate)
BUDGET_NLP_ITERATIONS = 300
MIN_SOLVE_SECONDS = 0.5  # under a budget, the least time a SCIP solve gets
# SCIP's time on one policy the listing's bound leaves open (the MINLP with the policy fixed)
POLICY_SECONDS = 1.0
SECOND_LOOK_SECONDS = 20.0     # the same, for an undecided policy beyond a complete search's end


@dataclass(frozen=True, eq=False)
class Candidate:
    """A certified equilibrium (deterministic policy, model) and the MINLP point at it."""

    actions: np.ndarray
    eq: Equilibrium
    point: ComponentMap
    how: str


def on_floor(mdp: TabularMDP, Phat: np.ndarray) -> np.ndarray:
    """Phat with every entry on K raised to the floor eta, the mass taken from its row's largest
    entry (terminal rows kept): a solver's point may lie up to its bound tolerance below eta
    (IPOPT: 1e-8), and the bounds that put policies out hold for Phat >= eta only."""
    lo = np.where(mdp.K, mdp.floor, 0.0)
    Q = np.where(mdp.K, Phat, 0.0)
    raise_ = np.where(mdp.K & (Q < lo) & ~mdp.terminal[:, None, None], lo - Q, 0.0)
    Q = Q + raise_
    top = Q.argmax(axis=-1)[..., None]
    np.put_along_axis(Q, top, np.take_along_axis(Q, top, axis=-1) - raise_.sum(axis=-1, keepdims=True), axis=-1)
    return Q


def _candidate(bm, actions, Phat, how) -> Candidate | None:
    mdp = bm.mdp
    Phat = on_floor(mdp, Phat)
    eq = certify_point(mdp, FORMULATION, bm.alpha, policy_array(mdp, actions), Phat)
    if eq.follower_gap > FOLLOWER_GAP_TOL:
        return None
    return Candidate(np.asarray(actions, dtype=int).copy(), eq, point_from_arrays(bm, actions, Phat), how)


def incumbents(bm: BilevelModel, nlp: FixedPolicyNLP, say) -> list[Candidate]:
    """Certified equilibria to start SCIP from, best leader objective first: the floored fit
    P_eta with its greedy policy, and the optimal policy of M (or the hiding descent from it)
    with the hostile witness model; each then improved by IPOPT with its policy fixed."""
    mdp = bm.mdp
    eta = mdp.floor
    Peta = kl_fit(mdp.P, mdp.K, eta)
    _, pi_eta = value_iteration(Peta, model_reward(mdp, Peta), mdp.gamma, tol=1e-13)
    seeds = [(np.argmax(pi_eta, axis=1), Peta, "greedy policy of the floored fit P_eta")]
    fs = FollowerStructure(mdp, eta, np.zeros((mdp.n_states, mdp.n_actions), dtype=bool))
    _, pi_star = value_iteration(mdp.P, mdp.r, mdp.gamma, tol=1e-13)
    chk = hiding_descent(fs, np.argmax(pi_star, axis=1))
    if chk is not None:
        seeds.append((chk.actions, fs.witness_model(chk.actions, chk.reached, chk.V),
                      "optimal policy of M (hiding descent) with the hostile witness model"))
    out = []
    for actions, Phat, how in seeds:
        actions = np.where(mdp.terminal, 0, actions)
        for model, label in ((Phat, how), (nlp.solve(actions, Phat), how + ", IPOPT")):
            c = None if model is None else _candidate(bm, actions, model, label)
            if c is not None:
                out.append(c)
                say(f"{FORMULATION}: incumbent {label}: leader {c.eq.leader_objective:.9g}, "
                    f"J {c.eq.J:.9g}")
    return sorted(out, key=lambda c: c.eq.leader_objective)


def _step_record(res: SolveResult, time_limit: float) -> dict:
    return {"status": res.status.value, "time_limit": time_limit, "objective": res.objective,
            "bound": res.bound, "gap": res.gap, "seconds": round(res.seconds, 3),
            "nodes": res.iterations,
            "starts_accepted": res.timings.get("starts_accepted"), "message": res.message}


def _proved_gap(res: SolveResult, at: float | None = None) -> float:
    """|at - SCIP's bound| (`at`: the value reported, by default SCIP's own objective); inf
    without a finite bound."""
    value = res.objective if at is None else at
    if value is None or res.bound is None or not math.isfinite(res.bound):
        return math.inf
    return abs(value - res.bound)


def _scip_point(bm: BilevelModel, nlp: FixedPolicyNLP, how: str) -> tuple[Candidate | None, dict]:
    """The point SCIP left in the model, certified from arrays, and its polish: the
    fixed-policy NLP from it (exact follower optimality where SCIP's feasibility tolerance
    left a gap, and the model's local optimum of the leader objective; J(pi, M) does not move).
    Returns the certified one with the smaller leader objective (None: neither passes) and a
    note on the polish."""
    actions, Phat = actions_of(bm), model_of(bm)
    raw = certify_point(bm.mdp, FORMULATION, bm.alpha, policy_array(bm.mdp, actions), Phat)
    c = _candidate(bm, actions, Phat, how)
    model = nlp.solve(actions, Phat)
    p = None if model is None else _candidate(bm, actions, model, how + ", polished")
    note = {"follower_gap_before": raw.follower_gap,
            "follower_gap_after": None if p is None else p.eq.follower_gap,
            "leader_objective_before": raw.leader_objective,
            "leader_objective_after": None if p is None else p.eq.leader_objective}
    found = [e for e in (c, p) if e is not None]
    return min(found, key=lambda e: e.eq.leader_objective, default=None), note


def _certifier(bm: BilevelModel, nlp: FixedPolicyNLP):
    """certify(actions) for the end searches: the policy's hostile witness model (the floored fit
    where it goes, the worst target elsewhere; FollowerStructure) and the floored fit, each
    alone and polished by IPOPT with the policy fixed; the certified equilibrium with the
    smaller leader objective, or None."""
    mdp = bm.mdp
    fs = FollowerStructure(mdp, mdp.floor, np.zeros((mdp.n_states, mdp.n_actions), dtype=bool))
    Peta = kl_fit(mdp.P, mdp.K, mdp.floor)

    def certify(actions) -> Equilibrium | None:
        chk = fs.check(actions)
        found = []
        for acts, Phat in ((chk.actions, fs.witness_model(chk.actions, chk.reached, chk.V)),
                           (actions, Peta)):
            for model in (Phat, nlp.solve(acts, Phat)):
                c = None if model is None else _candidate(bm, acts, model, "listing")
                if c is not None:
                    found.append(c)
        return min(found, key=lambda c: c.eq.leader_objective).eq if found else None

    return certify


def _policy_solver(bm: BilevelModel, nlp: FixedPolicyNLP, band: float, seconds: float):
    """decide(actions) for the end searches: "out" when `split_out` puts every policy of the
    class out (the policies that agree with it where it goes, the same J; half the time, when
    the policy leaves states unreached); "out_policy" when SCIP on the MINLP with this policy
    fixed proves its bound past the band (no equilibrium with this policy in the band: the other
    completions of its class stay open); "in" with a certified point in the band; else
    "undecided". (SCIP with x fixed only where the policy goes would speak for the class, but
    SCIP's bundled IPOPT aborted in METIS on the 10x10 gridworld's MINLP so fixed.)"""
    m, mdp = bm.model, bm.mdp

    def decide(actions) -> tuple[str, Equilibrium | None]:
        t0 = time.perf_counter()
        d, V = policy_occupancy_values(mdp, actions)
        if not ((d > 0) | mdp.terminal).all() and \
                split_out(mdp, bm.alpha, actions, band, seconds / 2, d=d, V=V):
            return "out", None
        for (s, a) in m.SA:
            m.x[s, a].fix(1.0 if a == actions[s] else 0.0)
        set_objective(m, m.leader)
        scip = StartedScip(time_limit=max(MIN_SOLVE_SECONDS, seconds - (time.perf_counter() - t0)),
                           gap=1e-9, abs_gap=0.0, options={**SCIP_OPTIONS, "limits/dual": band})
        try:
            res = scip.solve(m)
            point = _scip_point(bm, nlp, "SCIP with the policy fixed")[0] \
                if res.status in (Status.OPTIMAL, Status.FEASIBLE) else None
        finally:
            for v in m.x.values():
                v.unfix()
        if res.status == Status.INFEASIBLE or (res.bound is not None and res.bound > band):
            return "out_policy", None
        if point is not None and point.eq.leader_objective <= band:
            return "in", point.eq
        return "undecided", None

    return decide


def _minlp_end_bound(bm: BilevelModel, sense: str, band: float, time_limit: float,
                     starts) -> float | None:
    """SCIP's proved bound on min / max J(pi, M) over the MINLP's points with leader <= band.
    SCIP's feasibility tolerance only widens that set, so the bound holds for the band's
    equilibria; None without a finite bound."""
    m = bm.model
    m.eq_leader_bound = pyo.Constraint(expr=m.leader <= band)
    set_objective(m, m.true_return, pyo.minimize if sense == "min" else pyo.maximize)
    try:
        res = StartedScip(time_limit=time_limit, gap=J_GAP, abs_gap=0.0, options=SCIP_OPTIONS,
                          starts=tuple(starts)).solve(m, load=False)
    finally:
        m.del_component(m.eq_leader_bound)
    return res.bound if res.bound is not None and math.isfinite(res.bound) else None


def agent_reward_interval(mdp: TabularMDP, alpha: float | None = None, time_limit: float = 60.0,
                          log=None, budget: float | None = None,
                          starts: tuple = ()) -> EquilibriumInterval:
    """The equilibrium interval of MAL + agent reward by the MINLP of the module docstring.
    `time_limit` (s) bounds each of the three SCIP solves; "global" only when all three prove
    their gap, "local" otherwise (the ends are then certified equilibria of the band around
    the best leader value found). `budget` (s, optional) bounds the whole call: each solve gets
    at most the time left over the solves left. `starts`: (Equilibrium, how) pairs from another
    route (the MPEC's ends); each one's greedy deterministic policy with its model joins the
    incumbents if it passes the certificate."""
    t0 = time.perf_counter()
    alpha = resolve_alpha(FORMULATION, alpha)
    say = log or (lambda msg: None)

    def limit(solves_left: int) -> float:
        if budget is None:
            return time_limit
        left = budget - (time.perf_counter() - t0)
        return max(MIN_SOLVE_SECONDS, min(time_limit, left / solves_left))

    def fail(why, details=None):
        return EquilibriumInterval(FORMULATION, "failed", reason=why, alpha=alpha, solver=SOLVER,
                                   seconds=time.perf_counter() - t0, details=details or {})

    bounds = minlp_bounds(mdp)      # shared by the MINLP and the end searches
    bm = build_minlp(mdp, alpha, bounds)
    m = bm.model
    nlp = FixedPolicyNLP(bm) if budget is None else \
        FixedPolicyNLP(bm, max_iter=BUDGET_NLP_ITERATIONS)
    cands = incumbents(bm, nlp, say)
    for eq, how in starts:
        actions = np.where(mdp.terminal, 0, np.argmax(eq.policy, axis=1))
        c = _candidate(bm, actions, eq.model, how)
        if c is not None:
            cands.append(c)
            say(f"{FORMULATION}: incumbent {how}: leader {c.eq.leader_objective:.9g}, J {c.eq.J:.9g}")
    cands.sort(key=lambda c: c.eq.leader_objective)
    steps, polished, downgrades = {}, {}, []   # polished: the fixed-policy NLP from each SCIP point

    # 1. the leader optimum
    set_objective(m, m.leader)
    L_inc = cands[0].eq.leader_objective if cands else 0.0
    lead_limit = limit(3)
    scip = StartedScip(time_limit=lead_limit, gap=1e-9,
                       abs_gap=LEADER_GAP_SHARE * equilibrium_tolerance(bm, L_inc), options=SCIP_OPTIONS,
                       starts=tuple(c.point for c in cands))
    say(f"{FORMULATION}: leader optimum (SCIP, {len(cands)} starts)")
    lead = scip.solve(m)
    steps["leader"] = _step_record(lead, lead_limit)
    best = None
    if lead.status in (Status.OPTIMAL, Status.FEASIBLE):
        best, polished["leader"] = _scip_point(bm, nlp, "SCIP leader optimum")
    if best is None:
        if not cands:
            return fail(f"leader optimum: {lead.status.value} ({lead.message}), no certified "
                        "incumbent", {"steps": steps})
        best = cands[0]
        downgrades.append(f"leader step: {lead.status.value}; the best incumbent stands")
    lead_proved = lead.status == Status.OPTIMAL and best.how.startswith("SCIP")
    L = float(lead.objective) if lead.objective is not None and best.how.startswith("SCIP") \
        else best.eq.leader_objective
    L_check = best.eq.leader_objective
    bound = lead.bound if lead.bound is not None and math.isfinite(lead.bound) else -math.inf
    proven_gap = _proved_gap(lead) if lead_proved else 0.0
    if not lead_proved:
        downgrades.append("leader optimum not proved: the band is around the best value found")
    # the band: the nominal tolerance around the best certified leader value found, L_best. It
    # contains the band around L* (L_best >= L*) and lies within SCIP's proved gap on L* of it;
    # unlike a band widened by that gap, two runs that certify the same optimum share it
    L_best = min([L_check] + [c.eq.leader_objective for c in cands])
    tol = equilibrium_tolerance(bm, L_best)
    allowance = FEASIBILITY_SLACK * max(1.0, abs(L))
    say(f"{FORMULATION}: L* = {L:.9g} (bound {bound:.9g}, recomputed {L_check:.9g}), tol {tol:.3g}")

    # 2. max / min J(pi, M) over the band (bilevel.equilibria.exact.policy_tree / .listing)
    strict = L_best + tol
    in_band = {c.actions.tobytes(): c for c in [best] + cands if c.eq.leader_objective <= strict}
    certify = _certifier(bm, nlp)
    ends, gaps = {}, {"leader": proven_gap if lead_proved else _proved_gap(lead)}
    certificate = "global" if lead_proved else "local"
    # the tree of partial policies where its node rows exist, else the listing
    search, how = (tree_end, "policy tree") if tree_available(mdp, alpha, bounds) \
        else (listed_end, "listing")
    # the max end first: it is J* or near it and settled at once, so under a budget the min end,
    # the hard one, gets what is left
    for left, name in zip((2, 1), ("max", "min")):
        end_limit = limit(left)
        say(f"{FORMULATION}: {name} J(pi, M) over the band ({how}, {len(in_band)} starts)")
        res = search(mdp, alpha, strict, name, certify, end_limit,
                     starts=tuple(c.eq for c in in_band.values()),
                     decide=_policy_solver(bm, nlp, strict, POLICY_SECONDS), bounds=bounds)
        if budget is None:      # the undecided policies beyond the end, each with more time
            res = second_look(res, name, _policy_solver(bm, nlp, strict, SECOND_LOOK_SECONDS),
                              end_limit)
        steps[name] = {"search": how, "status": res.status, "time_limit": end_limit, "bound": res.bound,
                       "gap": res.gap, "seconds": round(res.seconds, 3), "nodes": res.nodes,
                       "out": res.out, "undecided": len(res.undecided), "accepted": res.accepted}
        if res.end is None:
            starts = sorted(in_band.values(), key=lambda c: c.eq.J, reverse=name == "max")
            end = starts[0]
            downgrades.append(f"{name} step: {res.status}, no policy certified; the best start in "
                              "the band stands")
            gaps[name] = math.inf
            certificate = "local"
        else:
            end = Candidate(np.where(mdp.terminal, 0, np.argmax(res.end.policy, axis=1)), res.end,
                            None, how)
            end_bound = res.bound
            if res.gap > J_GAP * max(1.0, abs(res.end.J)) and budget is None:
                # the search stopped short: SCIP on the whole MINLP may bound the end closer
                b = _minlp_end_bound(bm, name, strict, end_limit,
                                     [c.point for c in in_band.values() if c.point is not None])
                steps[name]["minlp_bound"] = b
                if b is not None:       # the closer of the two bounds, never beyond the end
                    end_bound = max(end_bound, min(b, end.eq.J)) if name == "min" \
                        else min(end_bound, max(b, end.eq.J))
            gaps[name] = abs(end.eq.J - end_bound)
            if gaps[name] > J_GAP * max(1.0, abs(res.end.J)):
                certificate = "local"
                downgrades.append(f"{name} J not proved: {res.status}, {len(res.undecided)} "
                                  f"undecided policies, bound {end_bound:.9g}")
        if end.eq.leader_objective < bound - equilibrium_tolerance(bm, L) - allowance:
            downgrades.append(f"{name} end: leader objective {end.eq.leader_objective:.9g} below "
                              f"the proved bound {bound:.9g}")
            certificate = "local"
        ends[name] = end
        in_band[end.actions.tobytes()] = end
    low, high = ends["min"].eq, ends["max"].eq
    if low.J > high.J:
        low, high = high, low
    rel = [s["gap"] for s in steps.values() if s["gap"] is not None and math.isfinite(s["gap"])]
    details = {"route": "MINLP: binary follower policy, big-M Bellman slack, true occupancy flow",
               "proved_gap": gaps, "how": {k: e.how for k, e in ends.items()},
               "solver_gap": max(rel, default=None), "leader_bound": bound,
               "leader_objective_recomputed": L_check, "steps": steps,
               "incumbents": [{"how": c.how, "leader_objective": c.eq.leader_objective, "J": c.eq.J}
                              for c in cands]}
    details["polish"] = polished
    if budget is not None:
        details["budget"] = budget
    if downgrades:
        details["certificate_downgraded"] = downgrades
    return EquilibriumInterval(FORMULATION, "solved", alpha=alpha, certificate=certificate,
                               solver=SOLVER, starts=len(cands), leader_objective=L_best, tolerance=tol,
                               low=low, high=high, seconds=time.perf_counter() - t0, details=details)
