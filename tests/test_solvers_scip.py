"""SCIP back-end: global optimum of a small nonconvex model, infeasibility as a status, and a
time limit that actually reaches SCIP."""
import time

import numpy as np
import pyomo.environ as pyo
import pytest

from solvers.base import Status
from solvers.scip import Scip


def test_nonconvex_global_optimum():
    """max x + 2y s.t. x + y = 1, x*y >= 0.03: y = 1 - x, x = (1 - sqrt(1 - 0.12))/2."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, None))
    m.y = pyo.Var(bounds=(0, None))
    m.c = pyo.Constraint(expr=m.x + m.y == 1)
    m.q = pyo.Constraint(expr=m.x * m.y >= 0.03)
    m.obj = pyo.Objective(expr=m.x + 2 * m.y, sense=pyo.maximize)
    res = Scip().solve(m)
    x = (1 - np.sqrt(1 - 0.12)) / 2
    assert res.status == Status.OPTIMAL and res.ok
    assert res.objective == pytest.approx(2 - x, abs=1e-6)
    assert m.x.value == pytest.approx(x, abs=1e-6)
    assert res.gap is not None and res.gap <= 1e-6


def test_infeasible_reported():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, None), initialize=0.3)
    m.y = pyo.Var(bounds=(0, None))
    m.c = pyo.Constraint(expr=m.x + m.y == 1)
    m.q = pyo.Constraint(expr=m.x * m.y >= 0.3)   # max of x*y is 0.25
    m.obj = pyo.Objective(expr=m.x)
    res = Scip().solve(m)
    assert res.status == Status.INFEASIBLE and not res.ok
    assert res.objective is None and res.x is None
    assert m.x.value == 0.3


def market_split(n=40, k=5, seed=0):
    """Cornuejols-Dawande market split: min |A x - b|_1 over binaries, A random in [0, 100).
    Known to be very hard for branch and bound at this size."""
    rng = np.random.default_rng(seed)
    A = rng.integers(0, 100, (k, n))
    b = A.sum(1) // 2
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(n), domain=pyo.Binary)
    m.sp = pyo.Var(range(k), bounds=(0, None))
    m.sm = pyo.Var(range(k), bounds=(0, None))
    m.c = pyo.Constraint(range(k), rule=lambda m, i: sum(int(A[i, j]) * m.x[j] for j in range(n))
                         + m.sp[i] - m.sm[i] == int(b[i]))
    m.obj = pyo.Objective(expr=sum(m.sp[i] + m.sm[i] for i in range(k)))
    return m


def test_time_limit_reaches_scip():
    m = market_split()
    t0 = time.perf_counter()
    res = Scip(time_limit=1.0).solve(m)
    wall = time.perf_counter() - t0
    assert res.timings["limits/time"] == 1.0          # read back from the SCIP model
    assert wall < 4.0                                  # SCIP stopped near the limit
    assert res.status in (Status.FEASIBLE, Status.TIME_LIMIT) and not res.ok
    if res.status == Status.FEASIBLE:
        assert res.objective is not None and res.bound is not None
        assert res.gap is not None and res.gap > 1e-6
