"""Global MINLP solves with SCIP through Pyomo's `scip_direct` (pyscipopt).

We call Pyomo's contrib `ScipDirect` interface with `time_limit=`/`rel_gap=` config values
(these set SCIP's `limits/time` and `limits/gap`; the legacy keyword `timelimit=` was silently
ignored, docs/DESIGN.md section 3) and read the parameters back from the SCIP model after the solve
(`result.timings["limits/time"]`) so a test can see what SCIP actually used.

Status rules:
- OPTIMAL only when SCIP says `optimal`, or stopped at the gap limit with gap <= requested;
- time/node limit with an incumbent -> FEASIBLE (with `gap` and `bound`); without -> TIME_LIMIT
  (or ITERATION_LIMIT for node limits);
- `infeasible` -> INFEASIBLE, `unbounded` -> UNBOUNDED, `inforunbd` -> INFEASIBLE (message says so).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from pyomo.common.collections import ComponentMap
from pyomo.contrib.solver.solvers.scip.scip_direct import ScipDirect

from solvers.base import SolveResult, Status

_LIMITS = {"timelimit": Status.TIME_LIMIT, "nodelimit": Status.ITERATION_LIMIT,
           "totalnodelimit": Status.ITERATION_LIMIT, "stallnodelimit": Status.ITERATION_LIMIT,
           "memlimit": Status.SOLVER_ERROR, "userinterrupt": Status.SOLVER_ERROR,
           "sollimit": Status.SOLVER_ERROR, "bestsollimit": Status.SOLVER_ERROR,
           "restartlimit": Status.SOLVER_ERROR, "terminate": Status.SOLVER_ERROR,
           "primallimit": Status.SOLVER_ERROR, "duallimit": Status.SOLVER_ERROR,
           "unknown": Status.SOLVER_ERROR}


@dataclass(frozen=True)
class Scip:
    """SCIP with a wall-clock `time_limit` (s), relative `gap` and absolute `abs_gap`
    (|primal - dual bound|; needed when the optimum is 0 and the relative gap is undefined);
    `options` are SCIP params."""

    time_limit: float = 60.0
    gap: float = 1e-6
    abs_gap: float = 0.0
    options: dict | None = None

    def _direct(self):
        """The Pyomo interface of one solve (a subclass may add start solutions)."""
        return ScipDirect()

    def _solve_options(self) -> dict:
        """Extra keyword arguments of the interface's solve."""
        return {}

    def _timings(self, opt, scip) -> dict:
        return {"limits/time": scip.getParam("limits/time"),
                "limits/gap": scip.getParam("limits/gap")}

    def solve(self, model, load=True) -> SolveResult:
        """Solve `model` globally. load=True writes the incumbent into the variables when the
        status is OPTIMAL or FEASIBLE; load="always" whenever there is an incumbent."""
        t0 = time.perf_counter()
        opt = self._direct()
        res = opt.solve(model, time_limit=float(self.time_limit), rel_gap=float(self.gap),
                        load_solutions=False, raise_exception_on_nonoptimal_result=False,
                        **self._solve_options(),
                        solver_options={"limits/absgap": float(self.abs_gap),
                                        # silence SCIP: Pyomo captures its log through a pipe, and
                                        # a long log blocked SCIP on writes (seen: a 30 s time
                                        # limit overrun by minutes at ~5% CPU)
                                        "display/verblevel": 0, **(self.options or {})})
        scip = opt._solver_model  # noqa: SLF001 - the pyscipopt Model of this solve
        t1 = time.perf_counter()
        raw = scip.getStatus()
        nsols = scip.getNSols()
        gap = float(scip.getGap()) if nsols else math.inf
        gap = math.inf if gap >= scip.infinity() else gap
        bound = res.objective_bound
        timings = {"scip": scip.getSolvingTime(), "total": t1 - t0, **self._timings(opt, scip)}
        info = dict(iterations=int(scip.getNNodes()), seconds=t1 - t0, timings=timings,
                    bound=None if bound is None else float(bound))
        msg = f"SCIP: {raw}, {scip.getNNodes()} nodes, {scip.getNLPIterations()} LP iterations"
        abs_ok = (nsols and bound is not None and self.abs_gap > 0
                  and abs(float(res.incumbent_objective) - float(bound)) <= self.abs_gap)
        if raw == "optimal" or (raw == "gaplimit" and (gap <= self.gap or abs_ok)):
            status = Status.OPTIMAL
        elif raw == "infeasible":
            status = Status.INFEASIBLE
        elif raw == "unbounded":
            status = Status.UNBOUNDED
        elif raw == "inforunbd":
            status, msg = Status.INFEASIBLE, msg + " (infeasible or unbounded)"
        elif nsols:
            status = Status.FEASIBLE
        else:
            status = _LIMITS.get(raw, Status.SOLVER_ERROR)
        if not nsols or status in (Status.INFEASIBLE, Status.UNBOUNDED):
            return SolveResult(status, gap=None, message=msg, **info)
        x = res.solution_loader.get_vars()
        if load == "always" or (load and status in (Status.OPTIMAL, Status.FEASIBLE)):
            for v, val in x.items():
                if not v.fixed:
                    v.set_value(float(val), skip_validation=True)
        return SolveResult(status, objective=float(res.incumbent_objective), x=ComponentMap(x),
                           gap=gap, message=msg, **info)
