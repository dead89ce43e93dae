"""Follower -> KKT system with complementarity pairs (the single-level reduction).

A follower solves, for fixed leader variables x (anything that is not a follower variable),

    min/max_y  f(x, y)   s.t.  lo_j <= body_j(x, y) <= hi_j  (j in constraints),  l <= y <= u

with f convex (concave for max) and the constraints linear in y (convex feasible set), so the
KKT conditions below are necessary and sufficient. With s = +1 (min) or -1 (max):

    stationarity   grad_y f = sum_{j eq} lam_j grad_y h_j
                              + s [ sum_{j ineq} (mu_lo_j - mu_hi_j) grad_y body_j + zl - zu ]
    feasibility    the follower's constraints (they stay in the model)
    complementarity  mu_lo_j >= 0 _|_ body_j - lo_j >= 0,   mu_hi_j >= 0 _|_ hi_j - body_j >= 0,
                     zl_i >= 0 _|_ y_i - l_i >= 0,          zu_i >= 0 _|_ u_i - y_i >= 0

Sign convention of `KKTBlock.dual(con)`: the *sensitivity* of the follower's optimal value to
the constraint's bound, d f*/d b (Pyomo/AMPL convention). For an equality it is lam_j itself;
for an inequality it is s*(mu_lo - mu_hi). Example: the occupancy LP
max_mu sum mu r  s.t.  sum_a mu(s',a) - gamma sum P mu = (1-gamma) rho0(s')  has dual V(s')
with V(s) >= r(s,a) + gamma sum P V: the (scaled) optimal value function.

Derivatives are symbolic Pyomo expressions (`differentiate(..., mode=reverse_symbolic)`).
Follower-variable bounds are read once, at `kkt_reduce` time. Fixed follower variables are
treated as parameters (no stationarity row).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap, ComponentSet
from pyomo.core.expr import value as pvalue
from pyomo.core.expr.calculus.derivatives import Modes, differentiate
from pyomo.core.expr.visitor import identify_variables
from pyomo.mpec import Complementarity, complements
from pyomo.repn import generate_standard_repn

from bilevel.mpec.pairs import complementarity_pairs, complementarity_violation


def _datas(items, ctype):
    out = []
    for it in items:
        if it.is_indexed():
            out.extend(it[i] for i in it.index_set())
        else:
            out.append(it)
    return tuple(out)


@dataclass(frozen=True)
class Follower:
    """The lower level: `variables` (Var components or datas), `objective` (Pyomo expression),
    `constraints` (Constraint components or datas) and `sense` (pyo.minimize / pyo.maximize).
    Components are expanded to their datas."""

    variables: Any
    objective: Any
    constraints: Any = ()
    sense: Any = pyo.minimize

    def __post_init__(self):
        vs = self.variables if isinstance(self.variables, (list, tuple)) else [self.variables]
        cs = self.constraints if isinstance(self.constraints, (list, tuple)) else [self.constraints]
        object.__setattr__(self, "variables", _datas(vs, pyo.Var))
        object.__setattr__(self, "constraints", _datas(cs, pyo.Constraint))
        s = self.sense
        object.__setattr__(self, "sense", pyo.maximize if s in (pyo.maximize, -1, "max",
                                                                "maximize") else pyo.minimize)

    @property
    def s(self) -> int:
        """+1 for a minimizing follower, -1 for a maximizing one."""
        return -1 if self.sense == pyo.maximize else 1

    def free_variables(self):
        return [v for v in self.variables if not v.fixed]


@dataclass
class KKTBlock:
    """Handle on the KKT block added by `kkt_reduce`.

    `block.lam[j]` (free): duals of equality constraints j; `block.mu[j, "lo"|"hi"]` >= 0:
    multipliers of inequality sides; `block.zl[i]`, `block.zu[i]` >= 0: bound multipliers of
    follower variable i; `block.stationarity[i]`; `block.compl[k]`: the complementarity pairs.
    """

    block: Any
    follower: Follower
    index: ComponentMap = field(default_factory=ComponentMap)       # ConstraintData -> j
    var_index: ComponentMap = field(default_factory=ComponentMap)   # VarData -> i

    def dual(self, con):
        """d f*/d b for follower constraint `con` (sensitivity convention, see module doc)."""
        j = self.index[con]
        b = self.block
        if j in b.lam:
            return b.lam[j]
        lo = b.mu[j, "lo"] if (j, "lo") in b.mu else 0
        hi = b.mu[j, "hi"] if (j, "hi") in b.mu else 0
        return self.follower.s * (lo - hi)

    def bound_dual(self, var):
        """d f*/d (bound) of follower variable `var`: s*(zl - zu) (0 if no finite bound)."""
        i = self.var_index[var]
        b = self.block
        zl = b.zl[i] if i in b.zl else 0
        zu = b.zu[i] if i in b.zu else 0
        return self.follower.s * (zl - zu)

    def bound_multipliers(self, upper: float) -> None:
        """Restrict the pair multipliers to 0 <= mu, zl, zu <= upper (lam stays free).

        An assumption, not a derivation: the restricted single-level problem is exact iff some
        optimistic optimum has follower multipliers within `upper` (otherwise it is a
        restriction: its value can only be worse). It gives BigM the finite bounds it derives
        M from (the multipliers are the pair sides no model bound limits)."""
        upper = float(upper)
        if not upper >= 0:
            raise ValueError(f"bound_multipliers: upper = {upper} must be >= 0")
        b = self.block
        for v in (*b.mu.values(), *b.zl.values(), *b.zu.values()):
            v.setub(upper)

    def pairs(self):
        return complementarity_pairs(self.block)

    def complementarity_violation(self) -> float:
        """max |min(a, b)| over this block's pairs at the current values."""
        return complementarity_violation(self.pairs())


def _grad(expr, fvars: ComponentSet):
    """{follower var: d expr / d var} for the follower vars appearing in expr (symbolic)."""
    vs = [v for v in identify_variables(expr, include_fixed=False) if v in fvars]
    if not vs:
        return []
    ds = differentiate(expr, wrt_list=vs, mode=Modes.reverse_symbolic)
    return list(zip(vs, ds))


def kkt_reduce(model, follower: Follower, name: str = "kkt") -> KKTBlock:
    """Add a Block `name` to `model` with the follower's KKT system (module doc)."""
    s = follower.s
    fv = follower.free_variables()
    fset = ComponentSet(fv)
    blk = pyo.Block(concrete=True)
    model.add_component(name, blk)
    kkt = KKTBlock(blk, follower)

    eq, ineq = [], []
    for j, c in enumerate(follower.constraints):
        kkt.index[c] = j
        if c.equality:
            eq.append(j)
        else:
            if c.lower is not None:
                ineq.append((j, "lo"))
            if c.upper is not None:
                ineq.append((j, "hi"))
    lb = [i for i, v in enumerate(fv) if v.lb is not None]
    ub = [i for i, v in enumerate(fv) if v.ub is not None]
    for i, v in enumerate(fv):
        kkt.var_index[v] = i
    blk.lam = pyo.Var(eq, initialize=0.0)
    blk.mu = pyo.Var(ineq, bounds=(0, None), initialize=0.0)
    blk.zl = pyo.Var(lb, bounds=(0, None), initialize=0.0)
    blk.zu = pyo.Var(ub, bounds=(0, None), initialize=0.0)

    # stationarity: grad f - sum lam grad h - s [sum (mu_lo - mu_hi) grad body + zl - zu] = 0
    terms = [[] for _ in fv]
    for v, d in _grad(follower.objective, fset):
        terms[kkt.var_index[v]].append(d)
    cons = follower.constraints
    for j in eq:
        for v, d in _grad(cons[j].body, fset):
            terms[kkt.var_index[v]].append(-blk.lam[j] * d)
    for j, side in ineq:
        sign = -s if side == "lo" else s
        for v, d in _grad(cons[j].body, fset):
            terms[kkt.var_index[v]].append(sign * blk.mu[j, side] * d)
    for i in lb:
        terms[i].append(-s * blk.zl[i])
    for i in ub:
        terms[i].append(s * blk.zu[i])
    blk.stationarity = pyo.Constraint(range(len(fv)),
                                      rule=lambda b, i: sum(terms[i]) == 0 if terms[i]
                                      else pyo.Constraint.Skip)

    # complementarity pairs
    pairs = []
    for j, side in ineq:
        c = cons[j]
        slack = (c.body - c.lower) if side == "lo" else (c.upper - c.body)
        pairs.append((blk.mu[j, side], slack))
    for i in lb:
        v = fv[i]
        pairs.append((blk.zl[i], v - v.lb if v.lb != 0 else v))
    for i in ub:
        v = fv[i]
        pairs.append((blk.zu[i], v.ub - v))
    blk.compl = Complementarity(range(len(pairs)),
                                rule=lambda b, k: complements(pairs[k][0] >= 0,
                                                              pairs[k][1] >= 0))
    return kkt


# --------------------------------------------------------------------------------------------
# independent check
@dataclass(frozen=True)
class FollowerCheck:
    """gap = how much better the best response is than the current follower point, in the
    follower's own sense (>= 0 up to solver tolerance); primal_violation = largest follower
    constraint/bound violation of the current point; complementarity_violation = max|min(a,b)|
    over the KKT pairs (None if no KKT block is known)."""

    gap: float
    complementarity_violation: float | None
    follower_value: float
    best_response_value: float
    primal_violation: float = 0.0

    def ok(self, tol: float = 1e-6) -> bool:
        return self.gap <= tol and self.primal_violation <= tol and (
            self.complementarity_violation is None or self.complementarity_violation <= tol)


def _linear_rows(exprs, fv, index):
    """Coefficients (rows over fv) and constants of expressions linear in fv (others fixed)."""
    A = np.zeros((len(exprs), len(fv)))
    b = np.zeros(len(exprs))
    for r, e in enumerate(exprs):
        repn = generate_standard_repn(e, compute_values=True, quadratic=False)
        if not repn.is_linear():
            raise NotImplementedError("check_follower: follower constraints must be linear in "
                                      "the follower variables")
        for v, coef in zip(repn.linear_vars, repn.linear_coefs):
            A[r, index[v]] += coef
        b[r] = repn.constant
    return A, b


def check_follower(model, follower: Follower, kkt: KKTBlock | None = None) -> FollowerCheck:
    """Re-solve the follower alone at the current leader values and compare.

    Leader variables (everything in the follower's expressions that is not a follower variable)
    are temporarily fixed at their current values. LP followers go to HiGHS (`linprog`),
    convex quadratic objectives (0.5 y'Qy + c'y) to CVXPY. The current follower point is
    evaluated as is (no projection); the best response is computed over the follower's
    feasible set enlarged by the current point's own violation (`primal_violation`, usually
    ~1e-9), so that a leader value a hair off an edge cannot make the set empty. The complementarity violation is over `kkt`'s pairs, or
    over every Complementarity in `model` when `kkt` is None (None if there are none).
    """
    from solvers.highs import linprog

    fv = follower.free_variables()
    fset = ComponentSet(fv)
    index = ComponentMap((v, i) for i, v in enumerate(fv))
    exprs = [follower.objective] + [c.body for c in follower.constraints]
    leaders = ComponentSet()
    for e in exprs:
        for v in identify_variables(e, include_fixed=False):
            if v not in fset:
                leaders.add(v)
    for v in leaders:
        v.fix()
    try:
        cons = follower.constraints
        A, b0 = _linear_rows([c.body for c in cons], fv, index)
        lo = np.array([-np.inf if c.lower is None else pvalue(c.lower) for c in cons]) - b0
        hi = np.array([np.inf if c.upper is None else pvalue(c.upper) for c in cons]) - b0
        repn = generate_standard_repn(follower.objective, compute_values=True, quadratic=True)
        if repn.nonlinear_expr is not None:
            raise NotImplementedError("check_follower: objective must be linear or quadratic")
        c = np.zeros(len(fv))
        for v, coef in zip(repn.linear_vars, repn.linear_coefs):
            c[index[v]] += coef
        Q = np.zeros((len(fv), len(fv)))
        for (v1, v2), coef in zip(repn.quadratic_vars, repn.quadratic_coefs):
            i, k = index[v1], index[v2]
            Q[i, k] += coef
            Q[k, i] += coef
        const = repn.constant
        y = np.array([pvalue(v) for v in fv], dtype=float)
        vlb = np.array([-np.inf if v.lb is None else v.lb for v in fv], dtype=float)
        vub = np.array([np.inf if v.ub is None else v.ub for v in fv], dtype=float)
        current = float(pvalue(follower.objective))
        viol = 0.0
        if len(cons):
            Ay = A @ y
            viol = max(viol, float(np.max(np.maximum(lo - Ay, 0), initial=0)),
                       float(np.max(np.maximum(Ay - hi, 0), initial=0)))
        viol = max(viol, float(np.max(np.maximum(vlb - y, 0), initial=0)),
                   float(np.max(np.maximum(y - vub, 0), initial=0)))
    finally:
        for v in leaders:
            v.unfix()
    s = follower.s
    # the current point is feasible to within `viol`; compare it with the best response over
    # the follower's feasible set enlarged by the same amount (else a leader value 1e-9 off
    # an edge can leave the exact set empty)
    delta = viol + 1e-12
    eqm = np.array([c.equality for c in cons], dtype=bool)
    lo, hi = np.where(eqm, lo, lo - delta), np.where(eqm, hi, hi + delta)
    vlb, vub = vlb - delta, vub + delta
    if not Q.any():
        A_eq, b_eq = A[eqm], lo[eqm]
        lo_i, hi_i, A_i = lo[~eqm], hi[~eqm], A[~eqm]
        fin_hi, fin_lo = np.isfinite(hi_i), np.isfinite(lo_i)
        A_ub = np.vstack([A_i[fin_hi], -A_i[fin_lo]])
        b_ub = np.concatenate([hi_i[fin_hi], -lo_i[fin_lo]])
        res = linprog(c, A_eq=A_eq if len(A_eq) else None, b_eq=b_eq if len(A_eq) else None,
                      A_ub=A_ub if len(A_ub) else None, b_ub=b_ub if len(A_ub) else None,
                      lb=vlb, ub=vub, maximize=(s == -1)).require("follower LP")
        best = float(res.objective) + const
    else:
        best = _qp_best(Q, c, const, A, lo, hi, vlb, vub, s)
    gap = s * (current - best)
    if kkt is not None:
        cv = kkt.complementarity_violation()
    else:
        pairs = _all_pairs(model)
        cv = complementarity_violation(pairs) if pairs else None
    return FollowerCheck(gap=gap, complementarity_violation=cv, follower_value=current,
                         best_response_value=best, primal_violation=viol)


def _all_pairs(model):
    """Pairs of every Complementarity in the model, active or not."""
    comps = [c for c in model.component_objects(Complementarity, descend_into=True)]
    inactive = [c for c in comps if not c.active]
    for c in inactive:
        c.activate()
    try:
        return complementarity_pairs(model)
    finally:
        for c in inactive:
            c.deactivate()


def _qp_best(Q, c, const, A, lo, hi, vlb, vub, s):
    """Optimal value of min/max 0.5 y'Qy + c'y + const over the polyhedron (CVXPY)."""
    import cvxpy as cp

    n = len(c)
    y = cp.Variable(n)
    # 0.5 y'Qy with Q from the standard repn counted twice on the diagonal: y'Q'y, Q' = Q/2
    Qs = s * 0.5 * (Q + Q.T) / 2
    w, U = np.linalg.eigh(Qs)
    if w.min() < -1e-9 * max(1.0, abs(w).max()):
        raise ValueError("check_follower: follower objective is not convex in its variables")
    L = U * np.sqrt(np.clip(w, 0, None))
    obj = cp.sum_squares(L.T @ y) + s * c @ y
    cons = []
    fin = np.isfinite(lo)
    if fin.any():
        cons.append(A[fin] @ y >= lo[fin])
    fin = np.isfinite(hi)
    if fin.any():
        cons.append(A[fin] @ y <= hi[fin])
    if np.isfinite(vlb).any():
        cons.append(y[np.isfinite(vlb)] >= vlb[np.isfinite(vlb)])
    if np.isfinite(vub).any():
        cons.append(y[np.isfinite(vub)] <= vub[np.isfinite(vub)])
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    if prob.status not in ("optimal",):
        raise RuntimeError(f"check_follower: QP status {prob.status}")
    return s * float(prob.value) + const
