"""KKT reduction and complementarity reductions, tested alone.

- follower duals follow the sensitivity convention d f*/d b (checked against HiGHS and
  against a known closed form: the occupancy LP's dual is the optimal value function);
- complementarity pairs are read from general `complements(...)` forms;
- reductions apply/invert cleanly.
"""
import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.mpec import Complementarity, complements

from bilevel.mpec.kkt import Follower, check_follower, kkt_reduce
from bilevel.mpec import (BigM, ExactProduct, Scholtes, complementarity_pairs,
                          complementarity_violation, solve_mpec)
from solvers.base import Status
from solvers.highs import Highs
from solvers.ipopt import Ipopt
from solvers.scip import Scip


def tiny_lp(sense):
    """Follower opt s*(y1 + 2 y2) s.t. y1 + y2 = b, y2 <= 0.7, y >= 0; b = 1 fixed by bounds.
    At the optimum y = (0.3, 0.7) for max (y = (1, 0)... for min, y = (b, 0))."""
    m = pyo.ConcreteModel()
    m.b = pyo.Var(bounds=(1.0, 1.0), initialize=1.0)
    m.y = pyo.Var([1, 2], bounds=(0, None), initialize=0.0)
    m.eq = pyo.Constraint(expr=m.y[1] + m.y[2] == m.b)
    m.cap = pyo.Constraint(expr=m.y[2] <= 0.7)
    m.fobj = pyo.Expression(expr=m.y[1] + 2 * m.y[2])
    m.obj = pyo.Objective(expr=0.0)
    return m, Follower([m.y], m.fobj, [m.eq, m.cap], sense=sense)


@pytest.mark.parametrize("sense,duals", [(pyo.maximize, (1.0, 1.0)), (pyo.minimize, (1.0, 0.0))])
@pytest.mark.parametrize("backend", ["ipopt", "scip"])
def test_dual_sign_convention_on_tiny_lp(sense, duals, backend):
    """max: y = (0.3, 0.7); one more unit of b goes to y1 (+1); one more unit of cap moves
    a unit from y1 to y2 (+1). min: y = (1, 0); d f*/d b = 1, cap inactive (0)."""
    m, f = tiny_lp(sense)
    kkt = kkt_reduce(m, f)
    if backend == "ipopt":
        res = solve_mpec(m, Scholtes(), Ipopt())
    else:
        res = solve_mpec(m, ExactProduct(), Scip())
    assert res.ok
    assert pyo.value(kkt.dual(m.eq)) == pytest.approx(duals[0], abs=1e-6)
    assert pyo.value(kkt.dual(m.cap)) == pytest.approx(duals[1], abs=1e-6)
    # the same numbers from HiGHS on the follower LP alone
    lp, _ = tiny_lp(sense)
    lp.del_component("obj")
    lp.obj = pyo.Objective(expr=lp.fobj, sense=sense)
    lp.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    Highs().solve(lp).require()
    assert lp.dual[lp.eq] == pytest.approx(duals[0], abs=1e-9)
    assert lp.dual[lp.cap] == pytest.approx(duals[1], abs=1e-9)
    assert check_follower(m, f, kkt).gap < 1e-6


def value_iteration(P, r, gamma, iters=3000):
    V = np.zeros(P.shape[0])
    for _ in range(iters):
        V = (r + gamma * P @ V).max(axis=1)
    return V


def test_occupancy_lp_dual_is_the_value_function():
    """Follower: max_mu sum mu r s.t. sum_a mu(s',a) - gamma sum_{s,a} P(s'|s,a) mu(s,a)
    = (1-gamma) rho0(s'), mu >= 0. Its dual on the flow rows is V*, the optimal value
    function (unique since rho0 > 0). The leader reads it: objective = sum_s V(s)."""
    rng = np.random.default_rng(3)
    S, A, gamma = 3, 2, 0.9
    P = rng.dirichlet(np.ones(S), size=(S, A))
    r = rng.uniform(size=(S, A))
    rho0 = np.full(S, 1 / S)
    m = pyo.ConcreteModel()
    m.mu = pyo.Var(range(S), range(A), bounds=(0, None), initialize=0.1)
    m.flow = pyo.Constraint(range(S), rule=lambda m, t: sum(m.mu[t, a] for a in range(A))
                            - gamma * sum(P[s, a, t] * m.mu[s, a] for s in range(S)
                                          for a in range(A)) == (1 - gamma) * rho0[t])
    f = Follower([m.mu], sum(r[s, a] * m.mu[s, a] for s in range(S) for a in range(A)),
                 [m.flow], sense=pyo.maximize)
    kkt = kkt_reduce(m, f)
    m.obj = pyo.Objective(expr=sum(kkt.dual(m.flow[s]) for s in range(S)))
    V = value_iteration(P, r, gamma)
    res = solve_mpec(m, ExactProduct(), Scip())
    assert res.status == Status.OPTIMAL
    assert [pyo.value(kkt.dual(m.flow[s])) for s in range(S)] == pytest.approx(V, abs=1e-6)
    res = solve_mpec(m, Scholtes(), Ipopt())
    assert res.ok and res.objective == pytest.approx(V.sum(), abs=1e-5)
    assert check_follower(m, f, kkt).gap < 1e-6


def test_pairs_from_general_forms():
    """complements(e1 >= l, e2 <= u) with expressions, and the MCP form (x <= u, F)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(initialize=1.0)
    m.y = pyo.Var(initialize=2.0)
    m.c1 = Complementarity(expr=complements(m.x + m.y >= 1, 2 * m.y <= 5))
    m.c2 = Complementarity(expr=complements(m.x <= 3, m.x - m.y))
    m.c3 = Complementarity(expr=complements(m.y >= 0, m.x >= 0))
    pairs = complementarity_pairs(m)
    vals = [(pyo.value(p.a), pyo.value(p.b)) for p in pairs]
    assert vals == [(2.0, 1.0), (2.0, 1.0), (2.0, 1.0)]  # (x+y-1, 5-2y), (3-x, -(x-y)), (y, x)
    assert complementarity_violation(pairs) == 1.0


def lcp():
    """LCP: w = M z + q, z >= 0 _|_ w >= 0, M = [[2, 1], [1, 2]], q = (-5, -6): solution
    z = (4/3, 7/3), w = 0 (M positive definite: unique). Pairs written with expressions."""
    M, q = np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([-5.0, -6.0])
    m = pyo.ConcreteModel()
    m.z = pyo.Var([0, 1], initialize=0.0)
    m.c = Complementarity([0, 1], rule=lambda m, i: complements(
        m.z[i] >= 0, sum(M[i, j] * m.z[j] for j in range(2)) + q[i] >= 0))
    m.obj = pyo.Objective(expr=0.0)
    return m


@pytest.mark.parametrize("reduction,backend", [(Scholtes(), Ipopt()), (ExactProduct(), Scip()),
                                               (BigM(10.0), Scip())])
def test_lcp_with_expression_pairs(reduction, backend):
    m = lcp()
    res = solve_mpec(m, reduction, backend)
    assert res.ok
    assert [m.z[0].value, m.z[1].value] == pytest.approx([4 / 3, 7 / 3], abs=1e-6)
    assert res.complementarity_violation < 1e-6


def test_apply_invert_round_trip():
    m = lcp()
    red = Scholtes(schedule=(1e-2,))
    m2, inv = red.apply(m)
    assert m2 is m and not m.c.active
    assert m.component(inv.block_name) is not None
    assert len(inv.sides) == 2 and inv.eps.lb == inv.eps.ub == 1e-2
    Scholtes.set_eps(inv, 1e-5)
    assert inv.eps.lb == inv.eps.ub == 1e-5
    red.invert(m, inv)
    assert m.c.active and m.component(inv.block_name) is None
    # the model can be reduced again, differently
    _, inv2 = ExactProduct().apply(m)
    assert inv2.block_name == inv.block_name
    ExactProduct().invert(m, inv2)


def test_kkt_block_shapes_and_bound_duals():
    """One row per follower var; multipliers for each finite side; bound duals exposed."""
    m, f = tiny_lp(pyo.minimize)
    kkt = kkt_reduce(m, f)
    b = kkt.block
    assert len(b.stationarity) == 2 and len(b.lam) == 1 and len(b.mu) == 1
    assert len(b.zl) == 2 and len(b.zu) == 0 and len(b.compl) == 3
    res = solve_mpec(m, ExactProduct(), Scip())
    assert res.ok
    # min y1 + 2y2, y1 + y2 = 1: y2 = 0 at its bound; raising that bound costs 2 - 1 = 1
    assert pyo.value(kkt.bound_dual(m.y[2])) == pytest.approx(1.0, abs=1e-6)
    assert pyo.value(kkt.bound_dual(m.y[1])) == pytest.approx(0.0, abs=1e-6)
