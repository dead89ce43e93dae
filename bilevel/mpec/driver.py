"""The MPEC driver `solve_mpec`: reduce the complementarity pairs, solve, restore.

Every active `pyomo.mpec.Complementarity` in a model is read as pairs  a >= 0 _|_ b >= 0
(a, b Pyomo expressions; see `complementarity_pairs` for the accepted forms). A reduction
(`bilevel.mpec.modes`) replaces the pairs by ordinary constraints in a new Block, deactivates
the Complementarity components, and `invert` undoes both (variable values stay):

    Scholtes(schedule):  a >= 0, b >= 0, a*b <= eps,  eps a Var fixed by bounds (lb = ub).
    ExactProduct():      a >= 0, b >= 0, a*b == 0                        (SCIP, global)
    BigM(M=None):        a >= 0, b >= 0, a <= M_a z, b <= M_b (1 - z), z binary   (SCIP;
                         M_a, M_b derived from proven bounds of the sides unless given)

`solve_mpec` runs a reduced model on a back-end: IPOPT with multistart and (for Scholtes) the
eps homotopy with warm starts on ONE compiled NLP, or SCIP once. Its solutions are
optimistic (strong) Stackelberg solutions when the pairs come from a follower's KKT system.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.core.expr import value as pvalue

from bilevel.mpec.modes import InverseData, Scholtes
from bilevel.mpec.pairs import complementarity_violation
from solvers.base import Status
from solvers.ipopt import Ipopt
from solvers.scip import Scip


# --------------------------------------------------------------------------------------------
# driver
@dataclass(frozen=True)
class MPECResult:
    """Outcome of `solve_mpec`. `objective`/`point` are None unless a start succeeded (or SCIP
    has an incumbent: status FEASIBLE, with `gap`/`bound`). `solutions` are the distinct
    successful local solutions, best first. certificate: "global" (SCIP proved the gap),
    "local" (IPOPT KKT point / SCIP incumbent), "none"."""

    status: Status
    objective: float | None
    point: Any                         # ComponentMap {VarData: value} or None
    solutions: tuple = ()              # ((objective, point), ...)
    starts_tried: int = 0
    starts_succeeded: int = 0
    complementarity_violation: float | None = None
    seconds: float = 0.0
    certificate: str = "none"
    gap: float | None = None
    bound: float | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status.ok

    def to_json(self) -> dict:
        named = (lambda pt: None if pt is None else {v.name: float(x) for v, x in pt.items()})
        return {"status": self.status.value, "objective": self.objective,
                "point": named(self.point),
                "solutions": [{"objective": o, "point": named(p)} for o, p in self.solutions],
                "starts_tried": self.starts_tried, "starts_succeeded": self.starts_succeeded,
                "complementarity_violation": self.complementarity_violation,
                "seconds": self.seconds, "certificate": self.certificate, "gap": self.gap,
                "bound": self.bound, "message": self.message}

    @classmethod
    def from_json(cls, d: dict, model) -> "MPECResult":
        """The inverse of to_json, its points bound to the variables of the same names in
        `model` (the same formulation built again from the same MDP)."""
        bound = (lambda named: None if named is None else
                 ComponentMap((model.find_component(name), x) for name, x in named.items()))
        return cls(**{**d, "status": Status(d["status"]), "point": bound(d["point"]),
                      "solutions": tuple((s["objective"], bound(s["point"])) for s in d["solutions"])})


def _objective_sense(model) -> int:
    objs = list(model.component_data_objects(pyo.Objective, active=True, descend_into=True))
    return -1 if objs and objs[0].sense == pyo.maximize else 1


def random_start(lb, ub, rng, box=10.0):
    """Uniform in [lb, ub] cut to a finite box: [lb, min(ub, lb + box)] when lb is finite,
    [ub - box, ub] when only ub is, [-box, box] for free variables."""
    lo = np.where(np.isfinite(lb), lb, np.where(np.isfinite(ub), ub - box, -box))
    hi = np.where(np.isfinite(ub), ub, np.where(np.isfinite(lb), lb + box, box))
    hi = np.where(np.isfinite(lb) & np.isfinite(ub), np.minimum(ub, lb + box), hi)
    return rng.uniform(lo, np.maximum(hi, lo))


def _same(a, b, xa, xb, obj_tol, x_tol):
    if abs(a - b) > obj_tol * (1 + abs(a)):
        return False
    scale = 1 + max(np.max(np.abs(xa), initial=0), np.max(np.abs(xb), initial=0))
    return float(np.max(np.abs(xa - xb), initial=0)) <= x_tol * scale


# IPOPT options of the Scholtes steps before the last: each step only warm-starts the next, so
# it is capped (MPEC multipliers are not unique and IPOPT can spend thousands of iterations on a
# point the next step moves anyway). Its tolerance stays tight: a step stopped at tol 1e-6 left
# the next step, under a tight leader bound, infeasible (fixes study, MAL + agent reward).
HOMOTOPY_STEP = {"max_iter": 1000}
# the polish is a warm-started smooth NLP: it converges in a few dozen iterations or not at all
# (a wrong side fixed to 0 makes it infeasible), so it is capped
POLISH = {"max_iter": 200}


def polish(nlp, inv: InverseData):
    """Active-set polish after a Scholtes homotopy: for each pair fix the smaller side to 0 by
    bounds (eps = 0), re-solve the now smooth NLP warm-started, restore the bounds.
    Returns the SolveResult; the model keeps the polished iterate (load="always")."""
    saved = []
    for a, b in inv.sides:
        side = a if pvalue(a) <= pvalue(b) else b
        saved.append((side, side.lb, side.ub))
        side.setlb(0.0)
        side.setub(0.0)
        side.set_value(0.0, skip_validation=True)
    Scholtes.set_eps(inv, 0.0)
    try:
        return nlp.solve(load="always", options=POLISH)
    finally:
        # in reverse: a variable that is a side of several pairs was saved once per pair, the
        # later saves holding the 0 bounds of the earlier ones
        for side, lb, ub in reversed(saved):
            side.setlb(lb)
            side.setub(ub)


def solve_mpec(model, reduction, backend, starts: int = 1, seed: int = 0, x0s=(),
               keep_distinct: bool = True, *, box: float = 10.0, comp_tol: float | None = None,
               obj_tol: float = 1e-6, x_tol: float = 1e-4, polish_active_set: bool = True
               ) -> MPECResult:
    """Reduce the complementarity pairs of `model`, solve, load the best point, restore.

    IPOPT: starting points are the caller's `x0s` (mappings {VarData: value}, partial is fine:
    the rest keeps the model's initial values), then the model's initial values, then
    `starts - 1` seeded random points (`random_start`, width `box`). With Scholtes, each start
    runs the eps homotopy on one compiled NLP, each step warm-started from the last iterate.
    A start succeeds when its final solve is a KKT point and the complementarity violation
    max|min(a, b)| <= comp_tol (default: sqrt of the last Scholtes eps, which is what a*b <= eps
    guarantees, and at least 1e-6; callers check the follower's optimality independently).
    Two solutions are the same when objectives agree to
    obj_tol*(1+|f|) and points (original model variables) to x_tol*(1+max|x|) in max-norm.
    With `polish_active_set` (Scholtes only), each start ends with `polish` (also after a last
    step that stopped at its iteration limit): the final point
    then satisfies a*b = 0 exactly when the polished solve converges; otherwise the homotopy's
    last iterate is judged as it is.
    SCIP: one global solve; certificate "global" iff it proved the gap.
    """
    t0 = time.perf_counter()
    sense = _objective_sense(model)
    model, inv = reduction.apply(model)
    blk = model.component(inv.block_name)
    try:
        if isinstance(backend, Scip):
            return _solve_scip(model, inv, backend, t0)
        if not isinstance(backend, Ipopt):
            raise TypeError(f"unknown backend {backend!r}")
        nlp = backend.compile(model)
        own = [i for i, v in enumerate(nlp.variables) if v.parent_block() is not blk
               and not _inside(v, blk)]
        lb, ub = nlp.bounds()
        base = nlp.initial_point(lb, ub)
        rng = np.random.default_rng(seed)
        points = [nlp.initial_point(lb, ub, x0) if x0 is not None else base for x0 in x0s]
        points += [base] if starts >= 1 else []
        points += [np.clip(np.where(lb == ub, base, random_start(lb, ub, rng, box)), lb, ub)
                   for _ in range(max(0, starts - 1))]
        if not points:
            return MPECResult(Status.SOLVER_ERROR, None, None, (), 0, 0, None,
                              time.perf_counter() - t0, "none", message="no starting point given")
        schedule = reduction.schedule if isinstance(reduction, Scholtes) else (None,)
        if comp_tol is None:
            last_eps = schedule[-1] if schedule else None
            comp_tol = max(1e-6, float(np.sqrt(last_eps))) if last_eps is not None else 1e-6
        found, failures = [], Counter()
        for x0 in points:
            _set_values(nlp.variables, x0)
            _sync_slacks(inv)
            res = None
            for k, eps in enumerate(schedule):
                if eps is not None:
                    Scholtes.set_eps(inv, eps)
                last = k == len(schedule) - 1
                res = nlp.solve(load="always", options=None if last else HOMOTOPY_STEP)
            if polish_active_set and isinstance(reduction, Scholtes):
                before = np.array([v.value for v in nlp.variables], dtype=float)
                pres = polish(nlp, inv)
                if pres.ok and complementarity_violation(inv.pairs) <= comp_tol:
                    res = pres
                else:
                    _set_values(nlp.variables, before)
                    res = res or pres     # polish only (empty schedule): its failure stands
            viol = complementarity_violation(inv.pairs)
            if res.ok and viol <= comp_tol:
                xfull = np.array([v.value for v in nlp.variables], dtype=float)
                found.append((res.objective, xfull, viol))
            else:
                failures[res.status if not res.ok else Status.SOLVER_ERROR] += 1
        seconds = time.perf_counter() - t0
        if not found:
            status = Status.INFEASIBLE if set(failures) == {Status.INFEASIBLE} else \
                failures.most_common(1)[0][0]
            return MPECResult(status, None, None, (), len(points), 0, None, seconds, "none",
                              message=f"no start succeeded: {dict(failures)}")
        found.sort(key=lambda t: sense * t[0])
        distinct = []
        for obj, x, viol in found:
            if not keep_distinct and distinct:
                break
            if not any(_same(obj, o, x[own], y[own], obj_tol, x_tol) for o, y, _ in distinct):
                distinct.append((obj, x, viol))
        best_obj, best_x, best_viol = distinct[0]
        _set_values(nlp.variables, best_x)
        pt = (lambda x: ComponentMap((nlp.variables[i], float(x[i])) for i in own))
        return MPECResult(Status.LOCALLY_OPTIMAL, float(best_obj), pt(best_x),
                          tuple((float(o), pt(x)) for o, x, _ in distinct), len(points),
                          len(found), float(best_viol), time.perf_counter() - t0, "local",
                          message=f"IPOPT, {len(found)}/{len(points)} starts succeeded")
    finally:
        reduction.invert(model, inv)


def _sync_slacks(inv: InverseData) -> None:
    """Set each lifted slack to the value of the side it stands for (s = a), so that a start
    given on the model's own variables is consistent (the polish reads the sides' values)."""
    for p, (sa, sb) in zip(inv.pairs, inv.sides):
        for e, side in ((p.a, sa), (p.b, sb)):
            if side is not e:
                val = pvalue(e, exception=False)
                if val is not None:
                    side.set_value(max(0.0, float(val)), skip_validation=True)


def _inside(v, blk) -> bool:
    b = v.parent_block()
    while b is not None:
        if b is blk:
            return True
        b = b.parent_block()
    return False


def _set_values(variables, x):
    for v, val in zip(variables, x):
        if not v.fixed:
            v.set_value(float(val), skip_validation=True)


def _solve_scip(model, inv, backend: Scip, t0) -> MPECResult:
    res = backend.solve(model, load=True)
    seconds = time.perf_counter() - t0
    if res.status not in (Status.OPTIMAL, Status.FEASIBLE):
        return MPECResult(res.status, None, None, (), 1, 0, None, seconds, "none",
                          gap=res.gap, bound=res.bound, message=res.message)
    blk = model.component(inv.block_name)
    pt = ComponentMap((v, float(x)) for v, x in res.x.items() if not _inside(v, blk))
    viol = complementarity_violation(inv.pairs)
    cert = "global" if res.status == Status.OPTIMAL else "local"
    return MPECResult(res.status, res.objective, pt, ((res.objective, pt),), 1,
                      1 if res.status == Status.OPTIMAL else 0, viol, seconds, cert,
                      gap=res.gap, bound=res.bound, message=res.message)
