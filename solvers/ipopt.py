"""Local NLP solves with IPOPT (cyipopt), derivatives by CasADi from Pyomo's .nl file.

The chain (docs/DESIGN.md section 3):

    Pyomo model --NL writer--> .nl --casadi.NlpBuilder.import_nl--> f(x), g(x)
        --CasADi (SX)--> grad f, sparse jac g, tril(hess_x (sigma f + lambda.g))
        --cyipopt.Problem--> x*, lambda*  --> Pyomo variables / `dual` suffix

`Ipopt.compile(model)` does the expensive part once; `CompiledNLP.solve()` re-reads what may
change between solves (variable bounds, fixed values, initial values) and runs IPOPT.

Traps handled here:
- The NL writer is called with `linear_presolve=False`: presolve would eliminate variables
  that then never reach CasADi and would never be mapped back (stale values).
- Fixed variables are *kept as variables*: they are unfixed while the .nl is written, and at
  every solve a fixed variable gets bounds lb = ub = its current value. So `v.fix(3.0)` (or
  `v.setlb(3); v.setub(3)`) between solves changes the answer without recompiling.
- Mutable `Param`s are written as constants: a later change to a Param is NOT seen by a
  compiled NLP. Model anything that changes between solves as a variable fixed by bounds.
- Maximize: CasADi's importer negates a maximize objective (IPOPT minimizes s*f, s = -1);
  `objective` is reported in the model's own sense.

Points and duals are `ComponentMap`s (Pyomo's component-keyed dict: VarData is unhashable);
`x0` may be a ComponentMap or an iterable of (VarData, value) pairs.
`result.timings`: nl_write, casadi (compile, once), setup (bounds/x0 re-read + cyipopt
Problem), ipopt (the solve, callbacks included), load (values back into Pyomo).

Multipliers follow the Pyomo/AMPL "sensitivity" convention: the dual of a constraint
lb <= body <= ub is d(objective*)/d(active bound), i.e. dual = -s * lambda_ipopt where IPOPT's
Lagrangian is s*f + lambda.g. For `min x s.t. x >= 1` the dual is +1.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import casadi as ca
import cyipopt
import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.core.base.suffix import Suffix
from pyomo.repn.plugins.nl_writer import NLWriter

from solvers.base import SolveResult, Status

# IPOPT ApplicationReturnStatus -> Status. Anything not listed is a SOLVER_ERROR.
_STATUS = {
    0: (Status.LOCALLY_OPTIMAL, "solve succeeded"),
    1: (Status.LOCALLY_OPTIMAL, "solved to acceptable level"),
    2: (Status.INFEASIBLE, "infeasible problem detected"),
    3: (Status.SOLVER_ERROR, "search direction becomes too small"),
    4: (Status.UNBOUNDED, "diverging iterates"),
    5: (Status.SOLVER_ERROR, "user requested stop"),
    6: (Status.SOLVER_ERROR, "feasible point found (square problem)"),
    -1: (Status.ITERATION_LIMIT, "maximum iterations exceeded"),
    -2: (Status.SOLVER_ERROR, "restoration failed"),
    -3: (Status.SOLVER_ERROR, "error in step computation"),
    -4: (Status.TIME_LIMIT, "maximum cpu time exceeded"),
    -5: (Status.TIME_LIMIT, "maximum wall time exceeded"),
    -10: (Status.SOLVER_ERROR, "not enough degrees of freedom"),
    -11: (Status.SOLVER_ERROR, "invalid problem definition"),
    -12: (Status.SOLVER_ERROR, "invalid option"),
    -13: (Status.SOLVER_ERROR, "invalid number detected"),
}


# MUMPS fill-reducing ordering (ICNTL(7)): 0 = AMD. IPOPT's default (7, MUMPS chooses) picks an
# ordering that factorizes the MPEC's KKT systems slower: MAL + agent reward's IPOPT route on
# grid_10x10 took 1.38x as long with it, with the same interval (benchmarks/RESULTS.md section 11)
MUMPS_PIVOT_ORDER = 0


@dataclass(frozen=True)
class Ipopt:
    """IPOPT options. `options` are passed verbatim to IPOPT (`add_option(key, value)`)."""

    tol: float = 1e-8
    max_iter: int = 3000
    print_level: int = 0
    options: dict | None = None

    def compile(self, model: pyo.ConcreteModel) -> "CompiledNLP":
        """Write `model` once (NL writer) and build CasADi derivative functions for it."""
        return CompiledNLP(model, self)

    def solve(self, model: pyo.ConcreteModel, x0: dict | None = None, load=True) -> SolveResult:
        """compile + one solve."""
        return self.compile(model).solve(x0=x0, load=load)

    def ipopt_options(self) -> dict:
        opts = {"tol": float(self.tol), "max_iter": int(self.max_iter),
                "print_level": int(self.print_level), "sb": "yes",
                "mumps_pivot_order": MUMPS_PIVOT_ORDER}
        opts.update(self.options or {})
        return opts


def _write_nl(model, path):
    """Write `model` to `path`; fixed variables are temporarily unfixed so they stay columns."""
    fixed = [v for v in model.component_data_objects(pyo.Var, descend_into=True) if v.fixed]
    for v in fixed:
        v.unfix()
    try:
        with open(path, "w") as f:
            info = NLWriter().write(model, f, linear_presolve=False,
                                    symbolic_solver_labels=False, scale_model=False,
                                    skip_trivial_constraints=False)
    finally:
        for v in fixed:
            v.fix()
    if info.eliminated_vars:  # pragma: no cover - guarded by linear_presolve=False
        raise RuntimeError("NL writer eliminated variables despite linear_presolve=False")
    return info


def _sparse_jacobian(g: ca.SX, x: ca.SX, dense: int = 64) -> ca.SX:
    """d g / d x with CasADi, rows with more than `dense` nonzeros done one at a time.

    One dense row (e.g. sum_i x_i = 1 over thousands of variables) makes every pair of
    columns conflict in CasADi's Jacobian colouring, and `ca.jacobian` then takes seconds
    (5-8 s at 6,000 variables); a single row is just a gradient (milliseconds)."""
    m = g.shape[0]
    if m == 0:
        return ca.jacobian(g, x)
    sp = ca.Function("g_sp", [x], [g]).sparsity_jac(0, 0)
    rownnz = np.diff(np.asarray(sp.T.colind()))
    heavy = [int(i) for i in np.flatnonzero(rownnz > dense)]
    if not heavy:
        return ca.jacobian(g, x)
    light = [int(i) for i in np.flatnonzero(rownnz <= dense)]
    blocks = ([ca.jacobian(g[light], x)] if light else []) + [ca.jacobian(g[i], x) for i in heavy]
    stacked = ca.vertcat(*blocks)
    order = np.argsort(np.array(light + heavy))      # row k of g is row order[k] of stacked
    return stacked[[int(k) for k in order], :]


def _triplet(sp: ca.Sparsity):
    r, c = sp.get_triplet()
    return np.asarray(r, dtype=int), np.asarray(c, dtype=int)


class CompiledNLP:
    """A Pyomo model written once, with CasADi functions for IPOPT.

    Attributes: `variables` (VarData, NL column order), `constraints` (ConstraintData, NL row
    order), `objective` (ObjectiveData or None), `sense` (+1 min, -1 max), `timings`.
    """

    def __init__(self, model, options: Ipopt):
        self.model = model
        self.options = options
        t0 = time.perf_counter()
        tmp = tempfile.mkdtemp(prefix="nlp_")
        path = os.path.join(tmp, "model.nl")
        try:
            info = _write_nl(model, path)
            t1 = time.perf_counter()
            nl = ca.NlpBuilder()
            nl.import_nl(path, {"verbose": False})
        finally:
            try:
                os.remove(path)
                os.rmdir(tmp)
            except OSError:
                pass
        if any(nl.discrete):
            raise ValueError("Ipopt is a continuous solver; the model has integer variables")
        self.variables = list(info.variables)
        self.constraints = list(info.constraints)
        objs = list(info.objectives)
        if len(objs) > 1:
            raise ValueError("Ipopt: more than one active objective")
        self.objective = objs[0] if objs else None
        self.sense = -1 if (self.objective is not None
                            and self.objective.sense == pyo.maximize) else 1
        self.n, self.m = len(self.variables), len(self.constraints)
        self.g_lb = np.asarray(nl.g_lb, dtype=float)
        self.g_ub = np.asarray(nl.g_ub, dtype=float)

        # MX graph from the importer -> SX (expand) for fast numeric evaluation.
        xm = ca.vertcat(*nl.x) if self.n else ca.MX(0, 1)
        fm = ca.MX(nl.f) if not isinstance(nl.f, ca.MX) else nl.f
        gm = ca.vertcat(*nl.g) if self.m else ca.MX(0, 1)
        fg = ca.Function("fg", [xm], [fm, gm]).expand()
        x = ca.SX.sym("x", self.n)
        f, g = fg(x)
        lam = ca.SX.sym("lam", self.m)
        sigma = ca.SX.sym("sigma")
        grad = ca.gradient(f, x)
        jac = _sparse_jacobian(g, x)
        hess = ca.tril(ca.hessian(sigma * f + ca.dot(lam, g), x)[0])
        self._f = ca.Function("f", [x], [f])
        self._grad = ca.Function("grad_f", [x], [grad])
        self._g = ca.Function("g", [x], [g])
        self._jac = ca.Function("jac_g", [x], [jac])
        self._hess = ca.Function("hess_l", [x, lam, sigma], [hess])
        self._jac_struct = _triplet(jac.sparsity())
        self._hess_struct = _triplet(hess.sparsity())
        t2 = time.perf_counter()
        self.timings = {"nl_write": t1 - t0, "casadi": t2 - t1}

    # -- cyipopt callbacks -------------------------------------------------------------------
    def objective_fn(self, x):
        return float(self._f(x))

    def gradient(self, x):
        return np.asarray(self._grad(x)).ravel()

    def constraints_fn(self, x):
        return np.asarray(self._g(x)).ravel()

    def jacobian(self, x):
        return np.asarray(self._jac(x).nonzeros())

    def jacobianstructure(self):
        return self._jac_struct

    def hessian(self, x, lagrange, obj_factor):
        return np.asarray(self._hess(x, lagrange, obj_factor).nonzeros())

    def hessianstructure(self):
        return self._hess_struct

    # -- state read from the Pyomo model --------------------------------------------------------
    def bounds(self):
        """Current (lb, ub) arrays; a fixed variable has lb = ub = its value."""
        lb = np.empty(self.n)
        ub = np.empty(self.n)
        for i, v in enumerate(self.variables):
            if v.fixed:
                lb[i] = ub[i] = v.value
            else:
                lo, hi = v.bounds
                lb[i] = -np.inf if lo is None else lo
                ub[i] = np.inf if hi is None else hi
        return lb, ub

    def initial_point(self, lb, ub, x0: dict | None = None):
        """Current `.value`s (None -> 0), overridden by `x0`, projected into [lb, ub]."""
        x = np.array([0.0 if v.value is None else float(v.value) for v in self.variables])
        if x0 is not None and len(x0):
            index = self._index()
            for v, val in (x0.items() if hasattr(x0, "items") else x0):
                i = index.get(id(v))
                if i is not None and val is not None:
                    x[i] = float(val)
        return np.clip(x, lb, ub)

    def _index(self):
        if not hasattr(self, "_idx"):
            self._idx = {id(v): i for i, v in enumerate(self.variables)}
        return self._idx

    # -- solve ----------------------------------------------------------------------------------
    def solve(self, x0: dict | None = None, load=True, options: dict | None = None) -> SolveResult:
        """Run IPOPT from the model's current values/bounds, overridden by `x0` (a mapping
        such as ComponentMap, or an iterable of (VarData, value) pairs).

        load=True: on success write x* into the variables and the multipliers into an IMPORT
        Suffix `dual` (and bound multipliers into `rc`, if present). load="always": write the
        final iterate even when IPOPT failed (for homotopy warm starts). load=False: never.
        `options` override the IPOPT options of this solve only.
        """
        t0 = time.perf_counter()
        lb, ub = self.bounds()
        xinit = self.initial_point(lb, ub, x0)
        cb = _Callbacks(self)
        nlp = cyipopt.Problem(n=self.n, m=self.m, problem_obj=cb,
                              lb=lb, ub=ub, cl=self.g_lb, cu=self.g_ub)
        opts = self.options.ipopt_options()
        opts.update(options or {})
        for k, v in opts.items():
            nlp.add_option(k, v)
        t_setup = time.perf_counter()
        x, info = nlp.solve(xinit)
        t1 = time.perf_counter()
        status, msg = _STATUS.get(int(info["status"]), (Status.SOLVER_ERROR, ""))
        msg = f"IPOPT: {msg or info.get('status_msg', b'')!s}"
        x = np.clip(np.asarray(x, dtype=float), lb, ub)  # IPOPT relaxes bounds by ~1e-8
        s = self.sense
        duals = -s * np.asarray(info["mult_g"], dtype=float)
        xd = ComponentMap(zip(self.variables, x.tolist()))
        dd = ComponentMap(zip(self.constraints, duals.tolist()))
        if load == "always" or (load and status.ok):
            self._load(x, duals, np.asarray(info["mult_x_L"]), np.asarray(info["mult_x_U"]))
        t2 = time.perf_counter()
        timings = dict(self.timings, setup=t_setup - t0, ipopt=t1 - t_setup,
                       load=t2 - t1)
        if not status.ok:
            return SolveResult(status, iterations=cb.iters, seconds=t2 - t0, message=msg,
                               timings=timings, x=xd if load == "always" else None)
        return SolveResult(status, objective=s * float(info["obj_val"]), x=xd, duals=dd,
                           iterations=cb.iters, seconds=t2 - t0, message=msg,
                           timings=timings)

    def _load(self, x, duals, zl, zu):
        for v, val in zip(self.variables, x):
            if not v.fixed:
                v.set_value(float(val), skip_validation=True)
        dual = _import_suffix(self.model, "dual")
        if dual is not None:
            for c, d in zip(self.constraints, duals):
                dual[c] = float(d)
        rc = _import_suffix(self.model, "rc")
        if rc is not None:
            for v, a, b in zip(self.variables, zl, zu):
                rc[v] = float(self.sense * (a - b))


def _import_suffix(model, name):
    suf = model.component(name)
    if isinstance(suf, Suffix) and suf.import_enabled():
        return suf
    return None


class _Callbacks:
    """The object cyipopt calls; a thin view of a CompiledNLP."""

    def __init__(self, nlp: CompiledNLP):
        self.objective = nlp.objective_fn
        self.gradient = nlp.gradient
        self.constraints = nlp.constraints_fn
        self.jacobian = nlp.jacobian
        self.jacobianstructure = nlp.jacobianstructure
        self.hessian = nlp.hessian
        self.hessianstructure = nlp.hessianstructure
        self.iters = 0

    def intermediate(self, alg_mod, iter_count, *args):
        self.iters = iter_count
        return True
