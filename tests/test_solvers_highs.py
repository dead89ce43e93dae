"""HiGHS back-end for Pyomo LPs: values, objective constant, and duals in the sensitivity
convention d(obj*)/d(bound), for both senses; cross-checked against IPOPT."""
import pyomo.environ as pyo
import pytest

from solvers.base import Status
from solvers.highs import Highs
from solvers.ipopt import Ipopt


def lp(sense):
    """opt s*(x1 + 2 x2) + 5 s.t. x1 + x2 = 1, x1 <= 0.3, x2 >= 0.2, 0 <= x <= 0.9."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var([1, 2], bounds=(0, 0.9))
    m.c = pyo.Constraint(expr=m.x[1] + m.x[2] == 1)
    m.u = pyo.Constraint(expr=m.x[1] <= 0.3)
    m.l = pyo.Constraint(expr=m.x[2] >= 0.2)
    s = 1 if sense == pyo.minimize else -1
    m.obj = pyo.Objective(expr=s * (m.x[1] + 2 * m.x[2]) + 5, sense=sense)
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    return m


@pytest.mark.parametrize("sense", [pyo.minimize, pyo.maximize])
def test_values_and_duals(sense):
    m = lp(sense)
    res = Highs().solve(m)
    assert res.status == Status.OPTIMAL
    s = 1 if sense == pyo.minimize else -1
    assert res.objective == pytest.approx(s * 1.7 + 5)
    assert m.x[1].value == pytest.approx(0.3) and m.x[2].value == pytest.approx(0.7)
    # raising the rhs of c moves x2 up: obj changes by s*2; raising ub of u moves x1 up
    # (and x2 down): s*(1 - 2) = -s
    assert m.dual[m.c] == pytest.approx(2 * s)
    assert m.dual[m.u] == pytest.approx(-s)
    assert m.dual[m.l] == pytest.approx(0.0)
    m2 = lp(sense)
    Ipopt().solve(m2).require()
    for con in (m.c, m.u):
        assert m2.dual[m2.component(con.name)] == pytest.approx(m.dual[con], abs=1e-6)


def test_infeasible_lp():
    m = lp(pyo.minimize)
    m.bad = pyo.Constraint(expr=m.x[1] >= 0.5)
    res = Highs().solve(m)
    assert not res.ok and res.objective is None
