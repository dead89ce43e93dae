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
