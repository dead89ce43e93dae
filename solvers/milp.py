"""Mixed-integer linear programs through HiGHS (highspy), built row by row.

    min / max  c.x   s.t.  lo_r <= a_r.x <= hi_r,  lb <= x <= ub,  x_j integer for j in I.

`MILP.solve` returns a `SolveResult` whose `x` is the primal array, `bound` the proven dual
bound and `gap` the relative gap HiGHS reports; a start solution (an incumbent found by a
heuristic) may be passed in.
"""
from __future__ import annotations

import time

import highspy
import numpy as np
import scipy.sparse as sp

from solvers.base import SolveResult, Status
from solvers.highs import new_highs

INF = highspy.kHighsInf


class MILP:
    """A MILP assembled from blocks of variables and sparse rows."""

    def __init__(self):
        self.lb, self.ub, self.integer, self.cost = [], [], [], []
        self._rows, self._cols, self._vals, self.row_lo, self.row_hi = [], [], [], [], []
        self.n = 0

    def var(self, shape, lb=0.0, ub=INF, integer=False) -> np.ndarray:
        """A block of variables; returns their column indices with `shape`."""
        size = int(np.prod(shape))
        idx = np.arange(self.n, self.n + size).reshape(shape)
        self.n += size
        self.lb.extend(np.broadcast_to(np.asarray(lb, float), (size,)).ravel().tolist()
                       if np.ndim(lb) else [float(lb)] * size)
        self.ub.extend(np.broadcast_to(np.asarray(ub, float), (size,)).ravel().tolist()
                       if np.ndim(ub) else [float(ub)] * size)
        self.integer.extend([integer] * size)
        self.cost.extend([0.0] * size)
        return idx

    def copy(self) -> "MILP":
        """An independent copy: variables and rows added to one do not reach the other."""
        c = MILP()
        for k in ("lb", "ub", "integer", "cost", "_rows", "_cols", "_vals", "row_lo", "row_hi"):
            setattr(c, k, list(getattr(self, k)))
        c.n = self.n
        return c

    def binary(self, shape) -> np.ndarray:
        return self.var(shape, 0.0, 1.0, integer=True)

    def row(self, cols, coefs, lo=-INF, hi=INF) -> None:
        """lo <= sum coefs * x[cols] <= hi (repeated columns add up)."""
        r = len(self.row_lo)
        cols = np.asarray(cols, dtype=int).ravel()
        self._rows.extend([r] * cols.size)
        self._cols.extend(cols.tolist())
        self._vals.extend(np.asarray(coefs, dtype=float).ravel().tolist())
        self.row_lo.append(float(lo))
        self.row_hi.append(float(hi))

    def set_cost(self, cols, coefs) -> None:
        for j, c in zip(np.asarray(cols).ravel(), np.asarray(coefs, float).ravel()):
            self.cost[j] += c

    @property
    def n_rows(self) -> int:
        return len(self.row_lo)

    def solve(self, maximize: bool = False, time_limit: float | None = None,
              start: np.ndarray | None = None, rel_gap: float = 1e-9, abs_gap: float = 1e-9,
              threads: int = 1, feasibility_tol: float | None = None) -> SolveResult:
        t0 = time.perf_counter()
        A = sp.csc_matrix((self._vals, (self._rows, self._cols)), shape=(self.n_rows, self.n))
        A.sum_duplicates()
        h = new_highs()
        # (no `threads` option: HiGHS fixes its scheduler at the first run in a process, and
        # setting it afterwards makes every later run fail with status "Not Set")
        for k, v in (("mip_rel_gap", rel_gap), ("mip_abs_gap", abs_gap), ("random_seed", 0)):
            h.setOptionValue(k, v)
        if time_limit is not None:
            h.setOptionValue("time_limit", float(time_limit))
        if feasibility_tol is not None:
            for k in ("mip_feasibility_tolerance", "primal_feasibility_tolerance"):
                h.setOptionValue(k, float(feasibility_tol))
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n, self.n_rows
        lp.col_cost_ = np.asarray(self.cost, float)
        lp.col_lower_ = np.clip(np.asarray(self.lb, float), -INF, INF)
        lp.col_upper_ = np.clip(np.asarray(self.ub, float), -INF, INF)
        lp.row_lower_ = np.clip(np.asarray(self.row_lo, float), -INF, INF)
        lp.row_upper_ = np.clip(np.asarray(self.row_hi, float), -INF, INF)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr
        lp.a_matrix_.index_ = A.indices
        lp.a_matrix_.value_ = A.data
        lp.sense_ = highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in self.integer]
        h.passModel(lp)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = list(np.asarray(start, float))
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        key = str(h.getModelStatus()).split(".")[-1]
        info = h.getInfo()
        seconds = time.perf_counter() - t0
        bound = float(info.mip_dual_bound)
        has_point = info.primal_solution_status == 2   # kSolutionStatusFeasible
        x = np.asarray(h.getSolution().col_value, float) if has_point else None
        obj = float(info.objective_function_value) if has_point else None
        gap = float(info.mip_gap) if has_point else None
        status = {"kOptimal": Status.OPTIMAL, "kInfeasible": Status.INFEASIBLE}.get(key)
        if status is None:
            status = Status.FEASIBLE if has_point else (
                Status.TIME_LIMIT if key == "kTimeLimit" else Status.SOLVER_ERROR)
        return SolveResult(status, objective=obj, x=x, seconds=seconds, gap=gap, bound=bound,
                           message=f"HiGHS MIP: {h.modelStatusToString(h.getModelStatus())}",
                           iterations=int(info.mip_node_count))
