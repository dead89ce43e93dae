"""The MPEC route's interval in three steps, so that the two ends can run as parallel tasks:

    lead = leader_step(route)           L* = min leader over the single-level MPEC, and the band
                                        leader <= L* + tol (`Lead`)
    end_step(route, lead, "min"|"max")  min / max J(pi, M) over the MPEC within the band, from
                                        the leader-optimal point (`End`: the certified end, or
                                        why it failed, or an equilibrium that beats L*)
    settle(lead, ends)                  the interval, a failure, or a restart: an end step found
                                        an equilibrium with leader value below L* - tol (then
                                        L* is replaced after a local descent and both ends are
                                        computed again; section 4 of docs/DESIGN.md)

`solve_route` runs them in this process (the serial path). Every step is a pure function of the
MDP, the options and the `Lead` it is given: each end starts from the leader-optimal point, so
an end computed in another process (bilevel.equilibria.parallel_ends, after rebuilding the
model) is the one the serial path computes.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import pyomo.environ as pyo

import bilevel.game as game
from bilevel.equilibria.certificates import (FEASIBILITY_SLACK, FOLLOWER_GAP_TOL, certify,
                                             equilibrium_tolerance)
from bilevel.equilibria.interval import Equilibrium, EquilibriumInterval
from bilevel.equilibria.pull_back import pull_back
from bilevel.equilibria.mpec_route import (HOMOTOPY, POLISH_ONLY_PAIRS, SCIP_ABS_GAP, SCIP_GAP,
                                           WARM_SCHEDULE, _LEADER_RESTARTS, _certified_end,
                                           _descend_leader, _ipopt_best, _load, _other_equilibria,
                                           cap_leader, set_objective)
from bilevel.equilibria.starts import random_starts, starting_point, structured_starts
from bilevel.game.formulations import BilevelModel, build
from bilevel.mdp.graph import live_pairs
from bilevel.mpec.driver import MPECResult, solve_mpec
from bilevel.sweep.task import tagged, untagged
from bilevel.mpec.modes import ExactProduct, Scholtes
from solvers.base import Status
from solvers.ipopt import Ipopt
from solvers.scip import Scip

ENDS = (("min", pyo.minimize), ("max", pyo.maximize))


@dataclass
class Route:
    """One formulation on one MPEC back-end: the built model and every step's solver settings."""

    bm: BilevelModel
    which: str                     # "scip" | "ipopt"
    backend: object
    reduction: object
    kw: dict                       # cold starts of each step (IPOPT: model values + random)
    structured: list               # IPOPT's warm starts: follower-optimal structured points
    warm_schedule: tuple
    n_starts: int
    epsilon: float | None
    t0: float = field(default_factory=time.perf_counter)

    def tolerance(self, L: float) -> float:
        """The band's width at L* (without SCIP's proven gap)."""
        return equilibrium_tolerance(self.bm, L) if self.epsilon is None else self.epsilon


def open_route(mdp, formulation, alpha, which, starts, seed, time_limit, pal_reduction,
               ipopt_mode="auto", epsilon=None) -> Route:
    """Build the formulation's MPEC and the back-end of `which` (see solve_formulation)."""
    if ipopt_mode not in ("auto", "homotopy", "polish"):
        raise ValueError(f"unknown ipopt_mode {ipopt_mode!r} (auto | homotopy | polish)")
    polish_only = which == "ipopt" and (
        ipopt_mode == "polish" or (ipopt_mode == "auto" and (
            live_pairs(mdp) > POLISH_ONLY_PAIRS or game.formulation(formulation).polish_only)))
    if polish_only and pal_reduction == "closed_form":
        # the polish fixes one side of each pair to 0; a squared-norm side is degenerate there
        pal_reduction = "closed_form_split"
    bm = build(mdp, formulation, alpha=alpha, pal_reduction=pal_reduction)
    if which == "scip":
        return Route(bm, which, Scip(time_limit=time_limit, gap=SCIP_GAP, abs_gap=SCIP_ABS_GAP),
                     ExactProduct(), {}, [], WARM_SCHEDULE, 1, epsilon)
    if which != "ipopt":
        raise ValueError(f"unknown solver {which!r} (ipopt | scip | auto)")
    schedule, warm_schedule = ((), ()) if polish_only else (HOMOTOPY, WARM_SCHEDULE)
    structured = structured_starts(bm, follower_optimal=polish_only)
    # cold starts: the model's current values (the build's start; in the end steps the
    # leader-optimal point) and starts - 1 random follower-optimal points
    kw = {"starts": min(starts, 1), "x0s": random_starts(bm, max(0, starts - 1), seed)}
    return Route(bm, which, Ipopt(tol=1e-9, max_iter=3000), Scholtes(schedule=schedule), kw,
                 structured, warm_schedule, starts + len(structured), epsilon)


@dataclass
class Lead:
    """The leader optimum and the band it defines: leader <= L + tol; an equilibrium with
    leader value below `beaten` proves L was not the optimum. `result` holds the points (bound
    to the route's model)."""

    result: MPECResult
    L: float
    L_check: float                 # the leader value recomputed from arrays at the point
    proven_gap: float              # SCIP's proven absolute gap on L (0: IPOPT)
    certificate: str
    gaps: list
    tol: float = 0.0
    band: float = 0.0
    beaten: float = 0.0
    seconds: float = 0.0

    def rebanded(self, route: Route) -> "Lead":
        """The band of L: tol = the route's tolerance + proven gap; the allowance covers the
        solvers' feasibility tolerance (every leader value is recomputed from arrays)."""
        self.tol = route.tolerance(self.L) + self.proven_gap
        allowance = FEASIBILITY_SLACK * max(1.0, abs(self.L))
        self.band = max(self.L, self.L_check) + self.tol + allowance
        self.beaten = min(self.L, self.L_check) - self.tol - allowance
        return self

    def to_json(self) -> dict:
        """Strict JSON (non-finite numbers tagged: `tagged`)."""
        return tagged({**{k: v for k, v in asdict(self).items() if k != "result"},
                       "result": self.result.to_json()})

    @classmethod
    def from_json(cls, d: dict, model=None) -> "Lead":
        """The inverse of to_json, the points bound to `model`'s variables (None: no result)."""
        d = untagged(d)
        result = None if model is None else MPECResult.from_json(d["result"], model)
        return cls(**{**{k: v for k, v in d.items() if k != "result"}, "result": result})



def leader_step(route: Route) -> Lead | str:
    """L* = min leader over the MPEC (IPOPT: best of the warm structured starts and the cold
    ones); the failure reason when no start solved it."""
    m = route.bm.model
    set_objective(m, m.leader)
    if route.which == "ipopt":
        res = _ipopt_best(m, route.backend, route.reduction, route.kw, route.structured,
                          pyo.minimize, route.warm_schedule)
    else:
        res = solve_mpec(m, route.reduction, route.backend, **route.kw)
    if not res.ok:
        return f"leader optimum: {res.status.value} ({res.message})"
    L = float(res.objective)
    proven = abs(L - res.bound) if (res.bound is not None and math.isfinite(res.bound)) else 0.0
    lead = Lead(res, L, certify(route.bm, res.complementarity_violation).leader_objective, proven,
                res.certificate, [res.gap] if res.gap is not None else [])
    lead.seconds = time.perf_counter() - route.t0
    return lead.rebanded(route)


@dataclass
class End:
    """One end step's outcome (see `settle` for how it is read)."""

    name: str
    failure: str = ""              # the step itself failed: the interval fails
    fallback: str = ""             # IPOPT found nothing: the leader optimum stands as this end
    global_: bool = False          # the solver proved this step
    gap: float | None = None
    end_gap: float | None = None   # the proved absolute gap of the end (SCIP)
    eq: Equilibrium | None = None
    why: str = ""                  # the end fails its certificate
    local: str = ""                # why the end's proof does not survive its repair
    snapped: dict | None = None
    polished: dict | None = None
    better: Equilibrium | None = None   # an equilibrium below lead.beaten
    seconds: float = 0.0

    def to_json(self) -> dict:
        """Strict JSON (non-finite numbers tagged)."""
        d = asdict(self)
        for k in ("eq", "better"):
            d[k] = None if getattr(self, k) is None else getattr(self, k).to_json()
        return tagged(d)

    @classmethod
    def from_json(cls, d: dict) -> "End":
        d = untagged(d)
        return cls(**{**d, **{k: None if d[k] is None else Equilibrium.from_json(d[k])
                               for k in ("eq", "better")}})


def end_step(route: Route, lead: Lead, name: str) -> End:
    """min (name "min") or max J(pi, M) subject to the MPEC and leader <= L + tol, started from
    the leader-optimal point; the point is certified (`_certified_end`) and every equilibrium
    of the step is compared with lead.beaten."""
    t0 = time.perf_counter()
    bm, m = route.bm, route.bm.model
    sense = dict(ENDS)[name]
    _load(lead.result.point)
    cap_leader(m, lead.L + lead.tol)
    set_objective(m, m.true_return, sense)
    if route.which == "ipopt":
        res = _ipopt_best(m, route.backend, route.reduction, route.kw,
                          list(route.structured) + [p for _, p in lead.result.solutions], sense,
                          route.warm_schedule)
    else:
        res = solve_mpec(m, route.reduction, route.backend, **route.kw)
    out = End(name)
    step_solved = res.ok
    if not res.ok and route.which == "ipopt":
        # no start of this step converged: the leader-optimal point is itself an equilibrium
        # in the band, so it stands as this end (local, and said so)
        out.fallback = f"{res.status.value}: {res.message}"
        _load(lead.result.point)
        res = lead.result
    if not res.ok:
        out.failure = f"{name} J over equilibria: {res.status.value} ({res.message})"
        out.seconds = time.perf_counter() - t0
        return out
    out.global_, out.gap = res.certificate == "global", res.gap
    out.end_gap = (abs(float(res.objective) - float(res.bound))
                   if res is not lead.result and res.certificate == "global"
                   and res.bound is not None and math.isfinite(res.bound) else None)
    snapped, polished = {}, {}
    out.eq, out.why, out.local = _certified_end(bm, name, res, route.which, lead.band,
                                                f"{lead.L + lead.tol:.9g}", snapped, polished)
    out.snapped, out.polished = snapped.get(name), polished.get(name)
    if (route.which == "scip" and out.why and out.snapped is not None and out.global_
            and out.eq.follower_gap <= FOLLOWER_GAP_TOL and out.eq.leader_objective > lead.band
            and res.bound is not None and math.isfinite(res.bound)):
        pull_back(route, lead, name, float(res.bound), out)
    seen = ([out.eq] if out.eq.follower_gap <= FOLLOWER_GAP_TOL else []) + \
        (_other_equilibria(bm, res) if step_solved else [])
    best = min(seen, key=lambda e: e.leader_objective, default=None)
    if best is not None and best.leader_objective < lead.beaten:
        out.better = best
    out.seconds = time.perf_counter() - t0
    return out


@dataclass
class Outcome:
    """What `settle` makes of a lead and its ends: an interval (`interval`), or a restart from
    `better` (found by the `name` step)."""

    interval: EquilibriumInterval | None = None
    name: str = ""
    better: Equilibrium | None = None


def settle(info: dict, lead: Lead, ends: list[End], improvements: list, downgrades: list,
           seconds: float) -> Outcome:
    """The ends in order (min, then max) as the interval: the first end that failed its step
    fails it; the first that beats L* asks for a restart (later ends are not read); ends that
    fail their certificates fail it. `info` (`route_info`): formulation, alpha, which,
    n_starts, ipopt_mode, epsilon. `downgrades` gains the ends' reasons for a local
    certificate."""
    certificate, gaps = lead.certificate, list(lead.gaps)
    chosen, fallbacks, snapped, polished, end_gaps, failure = {}, {}, {}, {}, {}, ""
    for end in ends:
        if end.fallback:
            fallbacks[end.name] = end.fallback
        if end.failure:
            return Outcome(failed(info, failure or end.failure, seconds, improvements, downgrades))
        if not end.global_:
            certificate = "local"
        if end.gap is not None:
            gaps.append(end.gap)
        end_gaps[end.name] = end.end_gap
        if end.snapped is not None:
            snapped[end.name] = end.snapped
        if end.polished is not None:
            polished[end.name] = end.polished
        if end.local:
            certificate = "local"
            downgrades.append(end.local)
        if end.better is not None:
            return Outcome(name=end.name, better=end.better)
        if end.why:
            failure = failure or end.why     # the other end may still show that L* is beaten
            continue
        chosen[end.name] = end.eq
    if failure:
        return Outcome(failed(info, failure, seconds, improvements, downgrades))
    low, high = chosen["min"], chosen["max"]
    if low.J > high.J:  # numerical noise: recomputed values decide the order
        low, high = high, low
    details = {"solver_gap": max((g for g in gaps if math.isfinite(g)), default=None),
               "proved_gap": end_gaps if certificate == "global" else
               {k: None for k in end_gaps},
               "leader_objective_recomputed": lead.L_check}
    if info["ipopt_mode"] is not None:
        details["ipopt_mode"] = info["ipopt_mode"]
    for key, value in (("ends_at_leader_optimum", fallbacks), ("snapped_to_best_response", snapped),
                       ("polished_to_follower_optimum", polished),
                       ("leader_optimum_improved", improvements),
                       ("certificate_downgraded", downgrades)):
        if value:
            details[key] = value
    if info["epsilon"] is not None:
        details["epsilon"] = info["epsilon"]
    return Outcome(EquilibriumInterval(info["formulation"], "solved", alpha=info["alpha"],
                                       certificate=certificate, solver=info["which"],
                                       starts=info["n_starts"], leader_objective=lead.L,
                                       tolerance=lead.tol, low=low, high=high, seconds=seconds,
                                       details=details))


def route_info(route: Route) -> dict:
    """What `settle` needs of the route (plain JSON: it travels with a split solve)."""
    return {"formulation": route.bm.formulation, "alpha": route.bm.alpha, "which": route.which,
            "n_starts": route.n_starts, "epsilon": route.epsilon,
            "ipopt_mode": None if route.which != "ipopt" else
            ("polish" if not route.reduction.schedule else "homotopy")}


def failed(info: dict, why: str, seconds: float, improvements=(), downgrades=()) -> EquilibriumInterval:
    """A failed interval of the route `info` (`route_info`), with the leader restarts and the
    certificate downgrades so far in its details."""
    details = {}
    if improvements:
        details["leader_optimum_improved"] = improvements
    if downgrades:
        details["certificate_downgraded"] = downgrades
    return EquilibriumInterval(info["formulation"], "failed", reason=why, alpha=info["alpha"],
                               solver=info["which"], seconds=seconds, details=details)


def failed_interval(route: Route, why: str) -> EquilibriumInterval:
    """The route's interval failed at its leader step."""
    return failed(route_info(route), why, time.perf_counter() - route.t0)


def restart(route: Route, lead: Lead, name: str, found: Equilibrium,
            improvements: list, downgrades: list) -> Lead:
    """A new Lead from an equilibrium `found` below L*: a local descent of the leader from it;
    a proven L* becomes local. Its points: the descended one first, then the old ones still in
    the new band."""
    bm = route.bm
    if lead.certificate == "global":
        downgrades.append(f"the {name} step found an equilibrium with leader objective "
                          f"{found.leader_objective:.9g} below the proven leader optimum {lead.L:.9g}")
    eq = _descend_leader(bm, found, route.warm_schedule if route.which == "ipopt" else WARM_SCHEDULE)
    improvements.append({"old": lead.L, "new": eq.leader_objective, "found_by": name,
                         "found": found.leader_objective})
    L = eq.leader_objective
    point = starting_point(bm, eq.policy, eq.model)
    new_tol = route.tolerance(L) + lead.proven_gap
    result = MPECResult(Status.LOCALLY_OPTIMAL, L, point,
                        ((L, point),) + tuple((o, p) for o, p in lead.result.solutions
                                              if o <= L + new_tol),
                        complementarity_violation=eq.complementarity_violation,
                        certificate="local", message="an equilibrium of an interval step")
    _load(point)
    return Lead(result, L, L, lead.proven_gap, "local", list(lead.gaps)).rebanded(route)


def solve_route(mdp, formulation, alpha, which, starts, seed, time_limit, pal_reduction,
                log, ipopt_mode="auto", epsilon=None) -> EquilibriumInterval:
    """The MPEC route in this process: leader step, the min and max end steps, settle; on a
    restart, again from the improved L* (at most _LEADER_RESTARTS times)."""
    say = log or (lambda msg: None)
    route = open_route(mdp, formulation, alpha, which, starts, seed, time_limit, pal_reduction,
                       ipopt_mode, epsilon)
    say(f"{formulation}: leader optimum ({which})")
    lead = leader_step(route)
    if isinstance(lead, str):
        return failed_interval(route, lead)
    improvements, downgrades = [], []
    for restarts in range(_LEADER_RESTARTS + 1):
        ends = []
        for name, _ in ENDS:
            say(f"{formulation}: {name} J(pi, M) over equilibria ({which})")
            ends.append(end_step(route, lead, name))
            if ends[-1].fallback:
                say(f"{formulation}: {name} J step failed ({ends[-1].fallback}); the leader optimum stands")
            if ends[-1].failure or ends[-1].better is not None:
                break
        outcome = settle(route_info(route), lead, ends, improvements, downgrades,
                         time.perf_counter() - route.t0)
        if outcome.interval is not None:
            return outcome.interval
        if restarts == _LEADER_RESTARTS:
            break
        old = lead.L
        lead = restart(route, lead, outcome.name, outcome.better, improvements, downgrades)
        say(f"{formulation}: the {outcome.name} step found an equilibrium with leader objective "
            f"{outcome.better.leader_objective:.9g} < L* = {old:.9g}; L* = {lead.L:.9g} "
            "(after a local descent from it), interval recomputed")
    return failed(route_info(route), f"leader optimum: the {outcome.name} step found leader objective "
                  f"{outcome.better.leader_objective:.9g} below L* = {lead.L:.9g} after "
                  f"{_LEADER_RESTARTS} restarts", time.perf_counter() - route.t0,
                  improvements, downgrades)
