"""Solver back-ends behind one small interface: `solve(...) -> SolveResult`.

- `solvers.highs`: LPs (HiGHS via highspy).
- `solvers.ipopt`: local NLP (IPOPT via cyipopt, derivatives from CasADi reading Pyomo's .nl).
- `solvers.scip`: global MINLP/MPEC (SCIP via pyscipopt / Pyomo's scip_direct).
"""
from solvers.base import SolveResult, SolverError, Status

__all__ = ["SolveResult", "SolverError", "Status"]
