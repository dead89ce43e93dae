"""Textbook bilevel problems with published optima, solved through the KKT reduction.

Each builder returns (model, follower, published leader value). Sources: the BASBLib library
(Paulavicius, Gao, Kleniati, Adjiman; https://basblsolver.github.io/BASBLib, problem ids below),
BOLIB (Zhou, Zemkoho, Tin 2020) and MacMPEC (Leyffer). Every published value was re-derived
by hand in the docstring and is re-checked below by SCIP's global solve (ExactProduct) and by
IPOPT (Scholtes homotopy + multistart); `check_follower` re-solves the follower alone.
All solutions are optimistic (strong) Stackelberg solutions.
"""
import numpy as np
import pyomo.environ as pyo
import pytest

from bilevel.mpec.kkt import Follower, check_follower, kkt_reduce
from bilevel.mpec import BigM, ExactProduct, Scholtes, solve_mpec
from solvers.base import Status
from solvers.highs import linprog
from solvers.ipopt import Ipopt
from solvers.scip import Scip


def bard_1984():
    """BASBLib LP-LP b_1984_01, from Bard (1984): min_x x + y s.t. follower
    max_y y  (published as min -5x - y)  s.t. -x - y/2 <= -2, -x/4 + y <= 2, x + y/2 <= 8,
    x - 2y <= 2, 0 <= x, y <= 10.  Published F* = 3.111 at (x, y) = (0.889, 2.222).
    By hand: the follower pushes y to 2 + x/4; feasibility needs y >= 4 - 2x, so the
    leader takes the smallest x with 2 + x/4 >= 4 - 2x: x = 8/9, y = 20/9, F* = 28/9.
    The follower is written as a *maximization* here (same argmax) to exercise the sense."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 10))
    m.y = pyo.Var(bounds=(0, 10))
    m.obj = pyo.Objective(expr=m.x + m.y)
    m.g = pyo.Constraint([1, 2, 3, 4], rule=lambda m, i: [
        -m.x - 0.5 * m.y <= -2, -0.25 * m.x + m.y <= 2,
        m.x + 0.5 * m.y <= 8, m.x - 2 * m.y <= 2][i - 1])
    return m, Follower([m.y], m.y, [m.g], sense=pyo.maximize), 28 / 9


def liu_hart_1994():
    """BASBLib LP-LP lh_1994_01, from Liu & Hart (1994): min_x -x - 3y s.t. follower
    min_y y s.t. -x + y <= 3, x + 2y <= 12, 4x - y <= 12, 0 <= x, y <= 10.
    Published F* = -16 at (4, 4). By hand: the follower's answer is y = max(0, 4x - 12),
    feasible while x + 2(4x - 12) <= 12, i.e. x <= 4; F = -x - 3y is best at x = 4."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 10))
    m.y = pyo.Var(bounds=(0, 10))
    m.obj = pyo.Objective(expr=-m.x - 3 * m.y)
    m.g1 = pyo.Constraint(expr=-m.x + m.y <= 3)
    m.g2 = pyo.Constraint(expr=m.x + 2 * m.y <= 12)
    m.g3 = pyo.Constraint(expr=4 * m.x - m.y <= 12)
    return m, Follower([m.y], m.y, [m.g1, m.g2, m.g3]), -16.0


def bard_1991():
    """BASBLib LP-QP b_1991_02, from Bard (1991): min_x x + y2 s.t. follower
    min_y 2 y1 + x y2 s.t. x - y1 - y2 + 4 <= 0, 0 <= y <= 10, 2 <= x <= 4.
    Published F* = 2 at x = 2, y = (6, 0). The follower LP's cost x y2 makes it bilinear:
    for x < 2 it would prefer y2, for x >= 2 (here always) y1 is at least as cheap."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(2, 4))
    m.y = pyo.Var([1, 2], bounds=(0, 10))
    m.obj = pyo.Objective(expr=m.x + m.y[2])
    m.g = pyo.Constraint(expr=m.x - m.y[1] - m.y[2] + 4 <= 0)
    return m, Follower([m.y], 2 * m.y[1] + m.x * m.y[2], [m.g]), 2.0


def clark_westerberg_1990():
    """BASBLib QP-QP cw_1990_02, from Clark & Westerberg (1990): min_x (x-3)^2 + (y-2)^2 s.t.
    follower min_y (y-5)^2 s.t. -2x + y <= 1, x - 2y <= -2, x + 2y <= 14, 0 <= x, y <= 8.
    Published F* = 5 at (1, 3), with local solutions at (3, 5) and (4.4, 4.8)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 8))
    m.y = pyo.Var(bounds=(0, 8))
    m.obj = pyo.Objective(expr=(m.x - 3) ** 2 + (m.y - 2) ** 2)
    m.g1 = pyo.Constraint(expr=-2 * m.x + m.y - 1 <= 0)
    m.g2 = pyo.Constraint(expr=m.x - 2 * m.y + 2 <= 0)
    m.g3 = pyo.Constraint(expr=m.x + 2 * m.y - 14 <= 0)
    return m, Follower([m.y], (m.y - 5) ** 2, [m.g1, m.g2, m.g3]), 5.0


def de_silva_1978():
    """BASBLib QP-QP d_1978_01, from De Silva (1978): min_x x1^2 - 2x1 + x2^2 - 2x2 + y1^2 + y2^2
    s.t. follower min_y (y1-x1)^2 + (y2-x2)^2, 0.5 <= y <= 1.5, 0 <= x <= 10.
    Published F* = -1 at x = y = (0.5, 0.5). By hand: y_i = clip(x_i, 0.5, 1.5); per
    coordinate F_i = x^2 - 2x + clip(x)^2 is smallest at x = 0.5 (-0.5 each)."""
    m = pyo.ConcreteModel()
    m.I = [1, 2]
    m.x = pyo.Var(m.I, bounds=(0, 10))
    m.y = pyo.Var(m.I, bounds=(0.5, 1.5))
    m.obj = pyo.Objective(expr=sum(m.x[i] ** 2 - 2 * m.x[i] + m.y[i] ** 2 for i in m.I))
    f = sum((m.y[i] - m.x[i]) ** 2 for i in m.I)
    return m, Follower([m.y], f, []), -1.0


def bard_1988_ex1():
    """Bard (1988), Ex. 1 = MacMPEC `bard1` = BOLIB Bard1988Ex1 (also in Shimizu & Aiyoshi
    1981): min_x (x-5)^2 + (2y+1)^2 s.t. follower min_y (y-1)^2 - 1.5 x y s.t.
    -3x + y <= -3, x - y/2 <= 4, x + y <= 7, y >= 0; x >= 0. Published optimum 17 at (1, 0)
    (MacMPEC lists 17.0). The follower's cost has a leader-follower bilinear term."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, None))
    m.y = pyo.Var(bounds=(0, None))
    m.obj = pyo.Objective(expr=(m.x - 5) ** 2 + (2 * m.y + 1) ** 2)
    m.g1 = pyo.Constraint(expr=-3 * m.x + m.y <= -3)
    m.g2 = pyo.Constraint(expr=m.x - 0.5 * m.y <= 4)
    m.g3 = pyo.Constraint(expr=m.x + m.y <= 7)
    return m, Follower([m.y], (m.y - 1) ** 2 - 1.5 * m.x * m.y, [m.g1, m.g2, m.g3]), 17.0


def aiyoshi_shimizu_1984():
    """Bard's book (1998) / BOLIB BardBook1998, from Aiyoshi & Shimizu (1984):
    min_x sum_i (y_i - x_i + 20)^2 s.t. 0 <= x <= 50, follower
    min_y 2x1 + 2x2 - 3y1 - 3y2 - 60 s.t. x1 + x2 + y1 - 2y2 <= 40, 2y_i - x_i <= -10,
    -10 <= y_i <= 20. Published optimum F* = 0 at x = (25, 30), y = (5, 10). By hand: at that
    x the follower maximizes y1 + y2 with y1 <= 7.5, y2 <= 10, y1 - 2y2 <= -15: y = (5, 10)."""
    m = pyo.ConcreteModel()
    m.I = [1, 2]
    m.x = pyo.Var(m.I, bounds=(0, 50))
    m.y = pyo.Var(m.I, bounds=(-10, 20))
    m.obj = pyo.Objective(expr=sum((m.y[i] - m.x[i] + 20) ** 2 for i in m.I))
    m.g0 = pyo.Constraint(expr=m.x[1] + m.x[2] + m.y[1] - 2 * m.y[2] <= 40)
    m.g = pyo.Constraint(m.I, rule=lambda m, i: 2 * m.y[i] - m.x[i] <= -10)
    f = 2 * m.x[1] + 2 * m.x[2] - 3 * m.y[1] - 3 * m.y[2] - 60
    return m, Follower([m.y], f, [m.g0, m.g]), 0.0


PROBLEMS = {f.__name__: f for f in (bard_1984, liu_hart_1994, bard_1991,
                                    clark_westerberg_1990, de_silva_1978, bard_1988_ex1,
                                    aiyoshi_shimizu_1984)}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_ipopt_homotopy_multistart_reaches_published_value(name):
    m, f, published = PROBLEMS[name]()
    kkt = kkt_reduce(m, f)
    res = solve_mpec(m, Scholtes(), Ipopt(), starts=8, seed=0)
    assert res.ok and res.certificate == "local"
    assert res.objective == pytest.approx(published, abs=1e-4)
    assert pyo.value(m.obj) == pytest.approx(published, abs=1e-4)   # best point loaded
    chk = check_follower(m, f, kkt)
    assert chk.gap < 1e-6 and chk.primal_violation < 1e-6
    assert chk.complementarity_violation < 1e-6


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_scip_exact_product_proves_published_value(name):
    m, f, published = PROBLEMS[name]()
    kkt = kkt_reduce(m, f)
    res = solve_mpec(m, ExactProduct(), Scip(time_limit=30))
    assert res.status == Status.OPTIMAL and res.certificate == "global"
    assert res.objective == pytest.approx(published, abs=1e-4)
    chk = check_follower(m, f, kkt)
    assert chk.gap < 1e-6 and chk.primal_violation < 1e-6
    assert chk.complementarity_violation < 1e-6


def test_big_m_agrees_with_exact_product():
    """BigM with a given M = 100 gives the same global optimum as ExactProduct on a problem
    with several follower constraints. BigM checks 100 against the proven bounds of the
    slack and bound sides (at most 16 here); for the multipliers, which have no proven bound,
    it is a claim: at the optimum (1, 3) the only nonzero multiplier is 2(5 - y) = 4."""
    m, f, published = clark_westerberg_1990()
    kkt_reduce(m, f)
    res = solve_mpec(m, BigM(100.0), Scip(time_limit=30))
    assert res.status == Status.OPTIMAL
    assert res.objective == pytest.approx(published, abs=1e-4)


def test_multistart_finds_the_local_solutions():
    """Clark & Westerberg has local solutions besides the global one; multistart keeps the
    distinct ones, best first."""
    m, f, published = clark_westerberg_1990()
    kkt_reduce(m, f)
    res = solve_mpec(m, Scholtes(), Ipopt(), starts=12, seed=1)
    objs = [o for o, _ in res.solutions]
    assert objs[0] == pytest.approx(published, abs=1e-4)
    assert len(objs) >= 2 and objs == sorted(objs)
    assert res.starts_tried == 12 and res.starts_succeeded <= 12


def test_brute_force_agrees_on_liu_hart():
    """Independent check of lh_1994_01: grid over x, follower LP by HiGHS, leader value."""
    best = np.inf
    for x in np.linspace(0, 10, 2001):
        r = linprog([1.0], A_ub=[[1.0], [2.0], [-1.0]], b_ub=[3 + x, 12 - x, 12 - 4 * x],
                    lb=0, ub=10)
        if r.ok:
            best = min(best, -x - 3 * r.x[0])
    assert best == pytest.approx(-16.0, abs=1e-9)


def test_homotopy_is_needed():
    """On Bard (1988) Ex. 1, a single relaxed solve at eps = 0.1 lands on a point that is
    not the bilevel solution (leader value off by > 1e-2), while the homotopy from the same
    start reaches the published 17. (The active-set polish is off in both: it would repair
    the fixed-eps point too, which is the polish's job but not what this test isolates.)"""
    m, f, published = bard_1988_ex1()
    kkt_reduce(m, f)
    fixed = solve_mpec(m, Scholtes(schedule=(1e-1,)), Ipopt(), starts=1, comp_tol=1.0,
                       polish_active_set=False)
    assert fixed.ok and abs(fixed.objective - published) > 1e-2
    m, f, published = bard_1988_ex1()
    kkt_reduce(m, f)
    homotopy = solve_mpec(m, Scholtes(), Ipopt(), starts=1, polish_active_set=False)
    assert homotopy.ok and homotopy.objective == pytest.approx(published, abs=1e-4)


def test_polish_repairs_a_relaxed_point():
    """The active-set polish after a single eps = 0.1 step fixes the smaller side of each pair to
    0 and re-solves: on Bard (1988) Ex. 1 that lands on the published 17 exactly."""
    m, f, published = bard_1988_ex1()
    kkt_reduce(m, f)
    res = solve_mpec(m, Scholtes(schedule=(1e-1,)), Ipopt(), starts=1)
    assert res.ok and res.objective == pytest.approx(published, abs=1e-6)
    assert res.complementarity_violation < 1e-8


def infeasible_bilevel():
    """lh_1994_01 with the leader constraints x <= 3, y >= 5: the high-point relaxation is
    feasible (x = 3, y = 5), but the follower always answers y = max(0, 4x - 12) = 0 there."""
    m, f, _ = liu_hart_1994()
    m.x.setub(3)
    m.lead = pyo.Constraint(expr=m.y >= 5)
    return m, f


def test_infeasible_bilevel_reported_as_failed():
    m, f = infeasible_bilevel()
    kkt_reduce(m, f)
    res = solve_mpec(m, Scholtes(), Ipopt(), starts=4, seed=0)
    assert not res.ok and res.objective is None and res.point is None
    assert res.solutions == () and res.starts_succeeded == 0 and res.certificate == "none"
    m, f = infeasible_bilevel()
    kkt_reduce(m, f)
    res = solve_mpec(m, ExactProduct(), Scip(time_limit=30))
    assert res.status == Status.INFEASIBLE and res.objective is None and res.solutions == ()


def test_unrelaxed_form_stalls_where_homotopy_succeeds():
    """Aiyoshi & Shimizu (1984): IPOPT on the unrelaxed MPEC (eps = 0, a*b <= 0) from the
    model's initial point converges to a spurious stationary point (F = 11.11, not the
    bilevel optimum 0); the eps homotopy from the same start reaches the published 0."""
    m, f, published = aiyoshi_shimizu_1984()
    kkt_reduce(m, f)
    exact = solve_mpec(m, Scholtes(schedule=(0.0,)), Ipopt(), starts=1)
    assert not (exact.ok and abs(exact.objective - published) < 1e-2)
    m, f, published = aiyoshi_shimizu_1984()
    kkt_reduce(m, f)
    homotopy = solve_mpec(m, Scholtes(), Ipopt(), starts=1)
    assert homotopy.ok and homotopy.objective == pytest.approx(published, abs=1e-4)


def test_no_starting_point_is_a_failed_result_not_a_crash():
    m, f = infeasible_bilevel()
    kkt_reduce(m, f)
    res = solve_mpec(m, Scholtes(), Ipopt(), starts=0)
    assert not res.ok and res.starts_tried == 0 and "no starting point" in res.message
