"""IPOPT back-end: values and multipliers map back onto the Pyomo model; re-solves see new
bounds / fixed values without recompiling; failures come back as a status."""

import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.common.collections import ComponentMap

from solvers.base import SolverError, Status
from solvers.ipopt import Ipopt


def policy_model(S=4, A=3, seed=0):
    """max sum_{s,a} pi(s,a) q(s,a) - 0.1 sum pi^2,  sum_a pi(s,a) = 1: rows on the simplex.
    Equality rows with singletons are exactly what the NL writer's linear presolve eliminates."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(S, A))
    m = pyo.ConcreteModel()
    m.S, m.A = range(S), range(A)
    m.pi = pyo.Var(m.S, m.A, bounds=(0, 1), initialize=0.0)
    m.row = pyo.Constraint(m.S, rule=lambda m, s: sum(m.pi[s, a] for a in m.A) == 1)
    m.obj = pyo.Objective(expr=sum(q[s, a] * m.pi[s, a] for s in m.S for a in m.A)
                          - 0.1 * sum(m.pi[s, a] ** 2 for s in m.S for a in m.A),
                          sense=pyo.maximize)
    return m, q


def test_rows_sum_to_one_after_solve():
    m, _ = policy_model()
    res = Ipopt().solve(m).require()
    assert res.status == Status.LOCALLY_OPTIMAL
    for s in m.S:
        assert abs(sum(m.pi[s, a].value for a in m.A) - 1) < 1e-8
    assert all(res.x[m.pi[s, a]] == m.pi[s, a].value for s in m.S for a in m.A)


def test_maximize_objective_sign_and_value():
    """max x + 2y s.t. x + y = 1, x, y >= 0: optimum 2 (not -2), at (0, 1)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, None))
    m.y = pyo.Var(bounds=(0, None))
    m.c = pyo.Constraint(expr=m.x + m.y == 1)
    m.obj = pyo.Objective(expr=m.x + 2 * m.y + 3, sense=pyo.maximize)
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    res = Ipopt().solve(m).require()
    assert res.objective == pytest.approx(5.0, abs=1e-7)
    assert pyo.value(m.obj) == pytest.approx(5.0, abs=1e-7)
    assert m.y.value == pytest.approx(1.0, abs=1e-7)
    # sensitivity convention: d obj*/d rhs = +2
    assert m.dual[m.c] == pytest.approx(2.0, abs=1e-6)
    assert res.duals[m.c] == pytest.approx(2.0, abs=1e-6)


def test_dual_sign_minimize():
    """min x s.t. x >= 1: dual = d obj*/d rhs = +1; for x <= -1 with min -x ... -1."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var()
    m.c = pyo.Constraint(expr=m.x >= 1)
    m.obj = pyo.Objective(expr=m.x ** 2 + m.x)
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    Ipopt().solve(m).require()
    # f* = b^2 + b at b = 1: df*/db = 3
    assert m.x.value == pytest.approx(1.0, abs=1e-7)
    assert m.dual[m.c] == pytest.approx(3.0, abs=1e-6)


def test_parameter_as_var_with_lb_eq_ub_resolved_without_recompiling():
    """min (x - p)^2 + x with p a Var fixed by bounds: x* = p - 1/2; change p, re-solve."""
    m = pyo.ConcreteModel()
    m.p = pyo.Var(bounds=(2.0, 2.0), initialize=2.0)
    m.x = pyo.Var(initialize=0.0)
    m.obj = pyo.Objective(expr=(m.x - m.p) ** 2 + m.x)
    nlp = Ipopt().compile(m)
    nlp.solve().require()
    assert m.x.value == pytest.approx(1.5, abs=1e-7)
    m.p.setlb(5.0); m.p.setub(5.0)
    nlp.solve().require()
    assert m.x.value == pytest.approx(4.5, abs=1e-7)


def test_fixed_var_is_reread_at_each_solve():
    """Fixed variables stay columns (lb = ub = value): fix(7) after compiling is seen."""
    m = pyo.ConcreteModel()
    m.p = pyo.Var(initialize=1.0)
    m.p.fix(1.0)
    m.x = pyo.Var(initialize=0.0)
    m.obj = pyo.Objective(expr=(m.x - 2 * m.p) ** 2)
    nlp = Ipopt().compile(m)
    assert m.p.fixed  # compile leaves the model as it was
    nlp.solve().require()
    assert m.x.value == pytest.approx(2.0, abs=1e-7)
    m.p.fix(7.0)
    nlp.solve().require()
    assert m.x.value == pytest.approx(14.0, abs=1e-7)
    assert m.p.value == 7.0


def test_x0_overrides_initial_values():
    """A nonconvex 1-d problem with two local minima: the start decides which one."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(-2, 2), initialize=0.0)
    m.obj = pyo.Objective(expr=(m.x ** 2 - 1) ** 2 + 0.1 * m.x)
    nlp = Ipopt().compile(m)
    left = nlp.solve(x0=ComponentMap([(m.x, -1.5)])).require()
    right = nlp.solve(x0=[(m.x, 1.5)]).require()
    assert left.x[m.x] < 0 < right.x[m.x]
    assert left.objective < right.objective


def test_infeasible_is_a_status_and_loads_nothing():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 1), initialize=0.5)
    m.y = pyo.Var(bounds=(0, 1), initialize=0.5)
    m.c = pyo.Constraint(expr=m.x ** 2 + m.y ** 2 >= 3)
    m.obj = pyo.Objective(expr=m.x + m.y)
    res = Ipopt().solve(m)
    assert not res.ok and res.status in (Status.INFEASIBLE, Status.SOLVER_ERROR)
    assert res.objective is None and res.x is None
    assert m.x.value == 0.5 and m.y.value == 0.5
    with pytest.raises(SolverError):
        res.require()


def test_iteration_limit_and_load_always():
    m, _ = policy_model()
    res = Ipopt(max_iter=1).solve(m)
    assert res.status == Status.ITERATION_LIMIT and not res.ok and res.objective is None
    m2, _ = policy_model()
    res = Ipopt(max_iter=1).compile(m2).solve(load="always")
    assert not res.ok and res.x is not None
    assert any(m2.pi[s, a].value != 0.0 for s in m2.S for a in m2.A)


def test_integer_model_rejected():
    m = pyo.ConcreteModel()
    m.z = pyo.Var(domain=pyo.Binary)
    m.obj = pyo.Objective(expr=m.z)
    with pytest.raises(ValueError):
        Ipopt().compile(m)


def test_resolve_overhead_is_small():
    """A few-hundred-variable bilinear model: a re-solve costs IPOPT time plus < 50 ms."""
    n = 150
    m = pyo.ConcreteModel()
    m.I = range(n)
    m.p = pyo.Var(bounds=(1.0, 1.0))
    m.x = pyo.Var(m.I, bounds=(0, 1), initialize=0.5)
    m.y = pyo.Var(m.I, bounds=(0, 1), initialize=0.5)
    m.c = pyo.Constraint(m.I, rule=lambda m, i: m.x[i] * m.y[i] <= 0.25 * m.p)
    m.s = pyo.Constraint(expr=sum(m.x[i] for i in m.I) == n / 2)
    m.obj = pyo.Objective(expr=sum((i % 7) * m.x[i] + (i % 5) * m.y[i] for i in m.I),
                          sense=pyo.maximize)
    nlp = Ipopt().compile(m)
    nlp.solve().require()
    m.p.setlb(0.5); m.p.setub(0.5)
    res = nlp.solve().require()
    overhead = res.timings["setup"] + res.timings["load"]
    assert overhead < 0.05, res.timings
    assert res.iterations > 0
    assert sum(m.x[i].value for i in m.I) == pytest.approx(n / 2, abs=1e-6)
