"""Where does time go in the IPOPT chain?  Pyomo build -> NL write -> CasADi -> IPOPT.

For a bilinear model of growing size (2n variables, n + 1 constraints)

    max  sum_i a_i x_i + b_i y_i   s.t.  x_i y_i <= p/4,  sum_i x_i = n/2,  0 <= x, y <= 1,
    p a variable fixed by bounds (lb = ub = 1)

print the time split of one compile + solve, the cost of a re-solve after changing p (no
recompile), and the ratio to HiGHS (`linprog`) on an LP of the same size (the bilinear rows
replaced by x_i + y_i <= 1), all measured in this run.

    python benchmarks/solver_overhead.py [n ...]
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pyomo.environ as pyo
import scipy.sparse as sp

from solvers.highs import linprog
from solvers.ipopt import Ipopt


def bilinear_model(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(size=n), rng.uniform(size=n)
    m = pyo.ConcreteModel()
    m.I = pyo.RangeSet(0, n - 1)
    m.p = pyo.Var(bounds=(1.0, 1.0), initialize=1.0)
    m.x = pyo.Var(m.I, bounds=(0, 1), initialize=0.5)
    m.y = pyo.Var(m.I, bounds=(0, 1), initialize=0.5)
    m.bil = pyo.Constraint(m.I, rule=lambda m, i: m.x[i] * m.y[i] <= 0.25 * m.p)
    m.tot = pyo.Constraint(expr=sum(m.x[i] for i in m.I) == n / 2)
    m.obj = pyo.Objective(expr=sum(a[i] * m.x[i] + b[i] * m.y[i] for i in m.I),
                          sense=pyo.maximize)
    return m, a, b


def lp_same_size(n, a, b):
    t0 = time.perf_counter()
    c = np.concatenate([a, b])
    eye = sp.identity(n, format="csr")
    A_ub = sp.hstack([eye, eye]).tocsr()                       # x_i + y_i <= 1
    A_eq = sp.csr_matrix(np.concatenate([np.ones(n), np.zeros(n)])[None, :])
    res = linprog(c, A_eq=A_eq, b_eq=[n / 2], A_ub=A_ub, b_ub=np.ones(n), lb=0, ub=1,
                  maximize=True)
    res.require("LP")
    return time.perf_counter() - t0


def main(sizes):
    print("IPOPT chain on a bilinear model vs HiGHS on an LP of the same size (seconds)")
    head = (f"{'n_vars':>7} {'build':>7} {'nl_write':>8} {'casadi':>7} {'ipopt':>7} "
            f"{'iters':>5} {'total':>7} {'resolve':>8} {'rs_ovh':>7} {'highs_lp':>8} "
            f"{'total/lp':>8} {'resolve/lp':>10}")
    print(head)
    for n in sizes:
        t0 = time.perf_counter()
        m, a, b = bilinear_model(n)
        t_build = time.perf_counter() - t0
        nlp = Ipopt().compile(m)
        res = nlp.solve().require()
        total = t_build + nlp.timings["nl_write"] + nlp.timings["casadi"] + res.seconds
        m.p.setlb(0.5); m.p.setub(0.5)
        t1 = time.perf_counter()
        res2 = nlp.solve().require()
        t_resolve = time.perf_counter() - t1
        overhead = res2.timings["setup"] + res2.timings["load"]
        t_lp = lp_same_size(n, a, b)
        print(f"{2 * n + 1:>7} {t_build:7.3f} {nlp.timings['nl_write']:8.3f} "
              f"{nlp.timings['casadi']:7.3f} {res.timings['ipopt']:7.3f} {res.iterations:>5} "
              f"{total:7.3f} {t_resolve:8.3f} {overhead:7.3f} {t_lp:8.4f} "
              f"{total / t_lp:8.1f} {t_resolve / t_lp:10.1f}")
    print("build: Pyomo model construction; nl_write, casadi: once per model structure;\n"
          "ipopt: first solve incl. Python callbacks; resolve: re-solve after changing a\n"
          "bound (no recompile), rs_ovh: its non-IPOPT part (bounds/x0 re-read, cyipopt\n"
          "problem setup, loading values back).")


if __name__ == "__main__":
    sizes = [int(s) for s in sys.argv[1:]] or [100, 300, 1000, 3000]
    main(sizes)
