"""LPs through HiGHS (highspy).

`linprog` solves  min/max c.x  s.t.  A_eq x = b_eq,  A_ub x <= b_ub,  lb <= x <= ub
and returns the primal x and the row duals (y_eq, y_ub) in HiGHS's sign convention
(for a minimization, c - A^T y >= 0 at the optimum).
"""
from __future__ import annotations

import os
import sys
import time

import highspy
import numpy as np
import scipy.sparse as sp

from solvers.base import SolveResult, Status

_BANNER_SHOWN = False


def new_highs() -> "highspy.Highs":
    """A silent Highs instance. HiGHS prints a copyright banner to fd 1 on the first
    construction in a process; it is sent to /dev/null so `--json` output stays clean."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _BANNER_SHOWN = True
    h.setOptionValue("output_flag", False)
    return h


_STATUS = {
    "kOptimal": Status.OPTIMAL,
    "kInfeasible": Status.INFEASIBLE,
    "kUnbounded": Status.UNBOUNDED,
    "kUnboundedOrInfeasible": Status.INFEASIBLE,
    "kIterationLimit": Status.ITERATION_LIMIT,
    "kTimeLimit": Status.TIME_LIMIT,
}


def linprog(c, A_eq=None, b_eq=None, A_ub=None, b_ub=None, lb=0.0, ub=np.inf,
            maximize: bool = False, time_limit: float | None = None) -> SolveResult:
    """Solve an LP with HiGHS; `x` is the primal array, `duals` = (y_eq, y_ub)."""
    t0 = time.perf_counter()
    c = np.asarray(c, dtype=float).ravel()
    n = c.size
    blocks, lo, hi = [], [], []
    n_eq = 0
    if A_eq is not None:
        A_eq = sp.csr_matrix(A_eq)
        b_eq = np.asarray(b_eq, dtype=float).ravel()
        blocks.append(A_eq); lo.append(b_eq); hi.append(b_eq); n_eq = A_eq.shape[0]
    if A_ub is not None:
        A_ub = sp.csr_matrix(A_ub)
        b_ub = np.asarray(b_ub, dtype=float).ravel()
        blocks.append(A_ub); lo.append(np.full(A_ub.shape[0], -np.inf)); hi.append(b_ub)
    A = sp.vstack(blocks).tocsc() if blocks else sp.csc_matrix((0, n))
    lo = np.concatenate(lo) if lo else np.zeros(0)
    hi = np.concatenate(hi) if hi else np.zeros(0)

    h = new_highs()
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = A.shape[0]
    lp.col_cost_ = c
    lp.col_lower_ = np.clip(np.broadcast_to(np.asarray(lb, float), (n,)), -inf, inf)
    lp.col_upper_ = np.clip(np.broadcast_to(np.asarray(ub, float), (n,)), -inf, inf)
    lp.row_lower_ = np.clip(lo, -inf, inf)
    lp.row_upper_ = np.clip(hi, -inf, inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr
    lp.a_matrix_.index_ = A.indices
    lp.a_matrix_.value_ = A.data
    lp.sense_ = highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize
    h.passModel(lp)
    h.run()
    name = h.modelStatusToString(h.getModelStatus())
    key = str(h.getModelStatus()).split(".")[-1]
    status = _STATUS.get(key, Status.SOLVER_ERROR)
    seconds = time.perf_counter() - t0
    if not status.ok:
        return SolveResult(status, message=f"HiGHS: {name}", seconds=seconds)
    sol = h.getSolution()
    y = np.asarray(sol.row_dual, dtype=float)
    info = h.getInfo()
    return SolveResult(Status.OPTIMAL, objective=float(info.objective_function_value),
                       x=np.asarray(sol.col_value, dtype=float), duals=(y[:n_eq], y[n_eq:]),
                       iterations=int(info.simplex_iteration_count), seconds=seconds,
                       message=f"HiGHS: {name}")


class Highs:
    """LPs written in Pyomo, solved by `linprog`; values and duals mapped back.

    `solve(model)` reads the active linear constraints lo <= a.x + a0 <= hi and the active
    linear objective (fixed variables are constants). Duals use the sensitivity convention
    d(objective*)/d(bound) (Pyomo/AMPL, as `solvers.ipopt`); they go to `result.duals`
    (ComponentMap) and to an IMPORT Suffix `dual` if the model has one.
    """

    def __init__(self, time_limit: float | None = None):
        self.time_limit = time_limit

    def solve(self, model, load=True) -> SolveResult:
        import pyomo.environ as pyo
        from pyomo.common.collections import ComponentMap
        from pyomo.core.base.suffix import Suffix
        from pyomo.core.expr import value as pvalue
        from pyomo.repn import generate_standard_repn

        t0 = time.perf_counter()
        objs = list(model.component_data_objects(pyo.Objective, active=True, descend_into=True))
        if len(objs) != 1:
            raise ValueError("Highs: exactly one active objective expected")
        obj = objs[0]
        cons = list(model.component_data_objects(pyo.Constraint, active=True, descend_into=True))
        index = ComponentMap()
        cols = []

        def linear(e, what):
            repn = generate_standard_repn(e, compute_values=True, quadratic=False)
            if not repn.is_linear():
                raise ValueError(f"Highs: {what} is not linear")
            for v in repn.linear_vars:
                if v not in index:
                    index[v] = len(cols)
                    cols.append(v)
            return repn

        orep = linear(obj.expr, "objective")
        reps = [linear(c.body, c.name) for c in cons]
        n = len(cols)
        c = np.zeros(n)
        for v, a in zip(orep.linear_vars, orep.linear_coefs):
            c[index[v]] += a
        eq_rows, ub_rows, b_eq, b_ub, where = [], [], [], [], []  # where: (con, kind, row, sign)
        for con, rep in zip(cons, reps):
            row = np.zeros(n)
            for v, a in zip(rep.linear_vars, rep.linear_coefs):
                row[index[v]] += a
            k0 = float(pvalue(rep.constant))
            lo = None if con.lower is None else float(pvalue(con.lower)) - k0
            hi = None if con.upper is None else float(pvalue(con.upper)) - k0
            if con.equality:
                where.append((con, "eq", len(eq_rows), 1.0)); eq_rows.append(row); b_eq.append(hi)
                continue
            if hi is not None:
                where.append((con, "ub", len(ub_rows), 1.0)); ub_rows.append(row); b_ub.append(hi)
            if lo is not None:
                where.append((con, "ub", len(ub_rows), -1.0)); ub_rows.append(-row); b_ub.append(-lo)
        lb = np.array([-np.inf if v.lb is None else v.lb for v in cols], dtype=float)
        ub = np.array([np.inf if v.ub is None else v.ub for v in cols], dtype=float)
        maximize = obj.sense == pyo.maximize
        res = linprog(c, A_eq=np.array(eq_rows) if eq_rows else None,
                      b_eq=np.array(b_eq) if eq_rows else None,
                      A_ub=np.array(ub_rows) if ub_rows else None,
                      b_ub=np.array(b_ub) if ub_rows else None,
                      lb=lb, ub=ub, maximize=maximize, time_limit=self.time_limit)
        if not res.ok:
            return res
        y_eq, y_ub = res.duals
        duals = ComponentMap((con, 0.0) for con in cons)
        for con, kind, r, sign in where:
            y = y_eq[r] if kind == "eq" else y_ub[r]
            duals[con] += sign * float(y)
        x = ComponentMap((v, float(val)) for v, val in zip(cols, res.x))
        if load:
            for v, val in x.items():
                v.set_value(val, skip_validation=True)
            suf = model.component("dual")
            if isinstance(suf, Suffix) and suf.import_enabled():
                for con, d in duals.items():
                    suf[con] = d
        return SolveResult(Status.OPTIMAL, objective=res.objective + float(pvalue(orep.constant)),
                           x=x, duals=duals, iterations=res.iterations,
                           seconds=time.perf_counter() - t0, message=res.message)
