"""Status values and the result record every back-end returns."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """Outcome of one solve. Only `OPTIMAL` and `LOCALLY_OPTIMAL` carry a usable point."""

    OPTIMAL = "optimal"                  # proven (LP optimum, or SCIP with closed gap)
    LOCALLY_OPTIMAL = "locally_optimal"  # KKT point (IPOPT converged)
    FEASIBLE = "feasible"                # feasible point, optimality not proven (e.g. SCIP time limit)
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    ITERATION_LIMIT = "iteration_limit"
    TIME_LIMIT = "time_limit"
    SOLVER_ERROR = "solver_error"

    @property
    def ok(self) -> bool:
        return self in (Status.OPTIMAL, Status.LOCALLY_OPTIMAL)


class SolverError(RuntimeError):
    """A solve did not produce a usable point; `.result` holds the failed SolveResult."""

    def __init__(self, message: str, result: "SolveResult | None" = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class SolveResult:
    """One solve. `x`/`duals` are meaningful only when `status.ok` (or FEASIBLE, as a bound)."""

    status: Status
    objective: float | None = None
    x: Any = None                 # primal values (array, or mapping for model back-ends)
    duals: Any = None             # constraint multipliers, where the back-end provides them
    iterations: int | None = None
    seconds: float = 0.0
    gap: float | None = None      # proven relative gap (global back-ends)
    bound: float | None = None    # proven dual bound (global back-ends)
    message: str = ""
    timings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status.ok

    def require(self, what: str = "solve") -> "SolveResult":
        """Return self if usable, else raise SolverError naming the status."""
        if not self.ok:
            raise SolverError(f"{what} failed: {self.status.value}"
                              + (f" ({self.message})" if self.message else ""), self)
        return self
