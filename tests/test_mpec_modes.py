"""The complementarity modes (accepts / apply / invert) and BigM's derived M.

- BigM's M are the proven upper bounds of the pair sides, checked against bounds computed by
  hand (plain variables, an expression, an FBBT-tightened variable);
- with derived M, BigM reaches the same global optimum as ExactProduct and as the published
  value on textbook bilevel problems (multipliers bounded by a stated, checked assumption);
- a side without a finite bound, or a given M below a proven bound, fails loudly, naming the
  Complementarity component and index;
- invert restores the model (Complementarity active, block gone, variable bounds unchanged).
"""
import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.common.collections import ComponentMap
from pyomo.mpec import Complementarity, complements
from pyomo.repn import generate_standard_repn

from bilevel.mpec import (BigM, ExactProduct, ReductionError, Scholtes, complementarity_pairs,
                          solve_mpec)
from bilevel.mpec.kkt import check_follower, kkt_reduce
from solvers.base import Status
from solvers.scip import Scip
from test_bilevel_textbook import clark_westerberg_1990, liu_hart_1994


def box_pairs():
    """c[1]: x >= 0 _|_ y >= 0 with x in [0, 4], y in [-1, 7] (hand: M = (4, 7));
    c[2]: 5 - 2w >= 0 _|_ u >= 0 with w in [1, 3], u in [0, 10] and u + w <= 4 (hand: the
    expression is at most 5 - 2*1 = 3; FBBT: u <= 4 - w <= 3, declared 10; w <= 4 - u <= 4
    leaves w's bound 3 alone)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 4), initialize=1.0)
    m.y = pyo.Var(bounds=(-1, 7), initialize=1.0)
    m.w = pyo.Var(bounds=(1, 3), initialize=2.0)
    m.u = pyo.Var(bounds=(0, 10), initialize=0.0)
    m.cap = pyo.Constraint(expr=m.u + m.w <= 4)
    m.c = Complementarity([1, 2], rule=lambda m, i: complements(m.x >= 0, m.y >= 0) if i == 1
                          else complements(5 - 2 * m.w >= 0, m.u >= 0))
    m.obj = pyo.Objective(expr=m.x + m.y)
    return m


def bounds_of(m):
    return {v.name: v.bounds for v in m.component_data_objects(pyo.Var)}


def test_derived_m_equals_hand_bounds():
    m = box_pairs()
    before = bounds_of(m)
    assert BigM().big_m(m) == [(4.0, 7.0), (3.0, 3.0)]
    assert BigM(tighten=False).big_m(m) == [(4.0, 7.0), (3.0, 10.0)]   # u's declared bound
    assert bounds_of(m) == before            # FBBT's tightening is not left behind
    _, inv = BigM().apply(m)
    assert inv.big_m == [(4.0, 7.0), (3.0, 3.0)]
    blk = m.component(inv.block_name)
    # the rows written for c[1]:  x <= 4 z,  y <= 7 (1 - z)  (coefficient of z over the side's)
    for row, side, ratio in ((blk.big_a[0], m.x, -4.0), (blk.big_b[0], m.y, 7.0)):
        repn = generate_standard_repn(row.body)
        coef = dict(zip((id(v) for v in repn.linear_vars), repn.linear_coefs))
        assert coef[id(blk.z[0])] / coef[id(side)] == pytest.approx(ratio)
    BigM().invert(m, inv)


def test_param_bounds_stay_params():
    """Restoring after FBBT keeps a mutable Param bound a Param (a later change still counts)."""
    m = box_pairs()
    m.p = pyo.Param(initialize=10.0, mutable=True)
    m.u.setub(m.p)
    assert BigM().big_m(m)[1] == (3.0, 3.0)
    m.p = 2.0
    assert m.u.ub == 2.0


def bounded_lcp():
    """LCP  w = Mz + q, 0 <= z _|_ w >= 0, M = [[2, 1], [1, 2]], q = (-5, -6), z in [0, 10]:
    unique solution z = (4/3, 7/3) (M positive definite; it lies inside the box). Hand bounds:
    M_z = 10; w_0 = 2z0 + z1 - 5 <= 25, w_1 = z0 + 2z1 - 6 <= 24."""
    A, q = np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([-5.0, -6.0])
    m = pyo.ConcreteModel()
    m.z = pyo.Var([0, 1], bounds=(0, 10), initialize=0.0)
    m.c = Complementarity([0, 1], rule=lambda m, i: complements(
        m.z[i] >= 0, sum(A[i, j] * m.z[j] for j in range(2)) + q[i] >= 0))
    m.obj = pyo.Objective(expr=0.0)
    return m


def test_big_m_solves_bounded_lcp():
    m = bounded_lcp()
    assert BigM().big_m(m) == [(10.0, 25.0), (10.0, 24.0)]
    res = solve_mpec(m, BigM(), Scip(time_limit=30))
    assert res.status == Status.OPTIMAL
    assert [m.z[0].value, m.z[1].value] == pytest.approx([4 / 3, 7 / 3], abs=1e-6)
    assert res.complementarity_violation < 1e-6


@pytest.mark.parametrize("problem", [clark_westerberg_1990, liu_hart_1994])
def test_derived_big_m_reaches_exact_product_and_published_optimum(problem):
    """The multipliers are bounded by 10 (`bound_multipliers`), which keeps the published
    optimum feasible: Clark & Westerberg at (1, 3) has one active follower constraint,
    -2x + y <= 1, and the unique multiplier 2(5 - y) = 4; Liu & Hart at (4, 4) has
    x + 2y <= 12 and 4x - y <= 12 active with 1 + 2 mu_2 - mu_3 = 0, so mu = (0, 0, 1) is a
    multiplier. A restriction that keeps the optimum feasible has the same optimum. All other
    M (slacks, bound sides) are derived from the variables' bounds."""
    m, f, published = problem()
    kkt = kkt_reduce(m, f)
    assert not BigM().accepts(m)             # multipliers unbounded: no M can be derived
    kkt.bound_multipliers(10.0)
    ms = BigM().big_m(m)
    assert all(0 <= ma < np.inf and 0 <= mb < np.inf for ma, mb in ms)
    big = solve_mpec(m, BigM(), Scip(time_limit=30))
    assert big.status == Status.OPTIMAL and big.certificate == "global"
    assert big.objective == pytest.approx(published, abs=1e-4)
    chk = check_follower(m, f, kkt)
    assert chk.gap < 1e-6 and chk.primal_violation < 1e-6 and chk.complementarity_violation < 1e-6
    m2, f2, _ = problem()
    kkt_reduce(m2, f2)
    exact = solve_mpec(m2, ExactProduct(), Scip(time_limit=30))
    assert exact.status == Status.OPTIMAL
    assert big.objective == pytest.approx(exact.objective, abs=1e-5)


def test_unbounded_side_fails_naming_the_pair():
    """c[2]'s side w has no upper bound; c[1] is fine. Nothing is changed by the failure."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 5))
    m.w = pyo.Var(bounds=(0, None))
    m.c = Complementarity([1, 2], rule=lambda m, i: complements(m.x >= 0, 5 - m.x >= 0)
                          if i == 1 else complements(m.w >= 0, m.x + 1 >= 0))
    verdict = BigM().accepts(m)
    assert not verdict and "c[2]" in verdict.reason and "index 2" in verdict.reason
    assert "side a = w " in verdict.reason and "no finite upper bound" in verdict.reason
    assert "\n" not in verdict.reason
    with pytest.raises(ReductionError, match=r"pair c\[2\] \(Complementarity c, index 2\)"):
        solve_mpec(m, BigM(), Scip(time_limit=10))
    assert m.c.active and m.component("_mpec_reduction") is None
    # a given M on the side without a proven bound is the caller's claim: accepted
    assert BigM(M=ComponentMap([(m.c[2], (50.0, None))])).big_m(m) == [(5.0, 5.0), (50.0, 6.0)]


def test_kkt_multiplier_without_bound_is_named():
    m, f, _ = liu_hart_1994()
    kkt_reduce(m, f)
    with pytest.raises(ReductionError, match=r"kkt\.compl\[0\].*side a = kkt\.mu\[0,hi\]"):
        BigM().apply(m)
    assert m.kkt.compl.active and m.component("_mpec_reduction") is None


def test_too_small_user_m_is_rejected():
    m = box_pairs()                           # proven: c[1] (4, 7), c[2] (3, 3)
    verdict = BigM(5.0).accepts(m)            # 5 < 7 on c[1]'s side b
    assert not verdict and "c[1]" in verdict.reason and "side b = y" in verdict.reason
    assert "below its proven upper bound 7" in verdict.reason
    with pytest.raises(ReductionError, match="below its proven upper bound"):
        BigM(M=(4.0, 6.5)).apply(m)
    with pytest.raises(ReductionError, match="finite and >= 0"):
        BigM(-1.0).big_m(m)
    assert BigM(7.0).big_m(m) == [(7.0, 7.0), (7.0, 7.0)]
    assert BigM(M=ComponentMap([(m.c[1], (None, 9.0))])).big_m(m) == [(4.0, 9.0), (3.0, 3.0)]
    assert m.c.active and m.component("_mpec_reduction") is None


@pytest.mark.parametrize("mode", [Scholtes(schedule=(1e-2,)), ExactProduct(), BigM()])
def test_invert_restores_the_model(mode):
    m = box_pairs()
    before = bounds_of(m)
    names = sorted(c.name for c in m.component_objects(descend_into=False))
    _, inv = mode.apply(m)
    blk = m.component(inv.block_name)
    assert blk is not None and not m.c.active
    assert len(list(blk.component_data_objects(pyo.Constraint))) >= 2
    mode.invert(m, inv)
    assert m.c.active and m.component(inv.block_name) is None
    assert sorted(c.name for c in m.component_objects(descend_into=False)) == names
    assert bounds_of(m) == before
    assert len(complementarity_pairs(m)) == 2


def test_accepts_says_why_not():
    m = box_pairs()
    assert Scholtes().accepts(m) and ExactProduct().accepts(m) and BigM().accepts(m)
    bad = Scholtes(schedule=(1e-2, -1e-3)).accepts(m)
    assert not bad and "negative" in bad.reason
    m.eq = Complementarity(expr=complements(m.x - m.y == 0, m.u))
    verdict = ExactProduct().accepts(m)
    assert not verdict and verdict.reason.startswith("exact_product: eq: equality")
    empty = pyo.ConcreteModel()
    empty.x = pyo.Var()
    assert BigM().accepts(empty)             # nothing to reduce: the identity


def test_polish_restores_the_bounds_of_a_variable_that_is_a_side_of_two_pairs():
    """The active-set polish fixes the smaller side of each pair to 0 by its bounds and must give
    the bounds back. x is the smaller side of two pairs (x _|_ y, x _|_ z): restored in the order
    saved, x kept the 0 upper bound of the first fix, and every later solve on the model ran with
    x = 0 forced (the MPEC route's end steps did)."""
    from solvers.ipopt import Ipopt
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 5), initialize=1.0)
    m.y = pyo.Var(bounds=(0, 5), initialize=2.0)
    m.z = pyo.Var(bounds=(0, 5), initialize=3.0)
    m.c1 = Complementarity(expr=complements(m.x >= 0, m.y >= 0))
    m.c2 = Complementarity(expr=complements(m.x >= 0, m.z >= 0))
    m.obj = pyo.Objective(expr=(m.x - 1) ** 2 + (m.y - 2) ** 2 + (m.z - 3) ** 2)
    res = solve_mpec(m, Scholtes(schedule=(1e-2, 1e-4)), Ipopt(tol=1e-9), starts=1)
    assert res.ok and res.objective == pytest.approx(1.0, abs=1e-5)   # x = 0, y = 2, z = 3
    assert [(v.lb, v.ub) for v in (m.x, m.y, m.z)] == [(0, 5)] * 3
