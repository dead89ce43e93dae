"""Which MUMPS ordering factorizes the MPEC routes' KKT systems fastest: IPOPT's own choice
(`mumps_pivot_order` 7: MUMPS decides) or the one solvers.ipopt sets (MUMPS_PIVOT_ORDER, AMD)?

Each case is one `solve_formulation` call through IPOPT, run in a fresh subprocess
(`exact_targets.measure`: the clock starts after the imports), the two orderings in turn
(A B A B ...), so that the ratio is taken pair by pair while the machine's speed drifts. Every
run must give the same certificate and interval under both orderings, to 1e-9: the ordering
changes how a linear system is solved, not the route.

    python benchmarks/ipopt_ordering.py [--repeats 3] [--orders 0 7] [--only SPEC ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import exact_targets  # noqa: E402
from equilibria_scaling import blas_env  # noqa: E402

# spec, formulation, solver: the IPOPT-heavy routes a user meets (MAL + agent reward under auto
# past the enumeration's 16 policies) and the MPEC cross-check of the test suite
CASES = (("file:mdps/grid_10x10.yaml", "MAL_agent_reward", "auto"),
         ("file:mdps/grid_hidden_goal.yaml", "MAL_agent_reward", "auto"),
         ("garnet:3:2:2:0:all", "MAL", "mpec-ipopt"))


def worker(case: str, order: int) -> dict:
    """One solve with MUMPS ordering `order`; case = "spec|formulation|solver"."""
    t_imp = time.perf_counter()
    import solvers.ipopt
    from bilevel.equilibria import solve_formulation
    spec, formulation, solver = case.split("|")
    mdp = exact_targets.load(spec)
    solvers.ipopt.MUMPS_PIVOT_ORDER = int(order)
    imports = time.perf_counter() - t_imp
    t0 = time.perf_counter()
    res = solve_formulation(mdp, formulation, solver=solver, time_limit=20.0)
    s = time.perf_counter() - t0
    if not res.ok:
        return {"s": s, "ok": False, "status": "failed", "reason": res.reason, "imports_s": imports}
    return {"s": s, "ok": True, "status": res.certificate, "J": [res.low.J, res.high.J],
            "imports_s": imports}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--orders", type=int, nargs=2, default=(0, 7), metavar=("A", "B"))
    ap.add_argument("--only", nargs="*", default=None, help="specs of CASES to run")
    ap.add_argument("--kill-after", type=float, default=600.0)
    ap.add_argument("--blas-threads", type=int, default=1)
    if argv is None and exact_targets.worker_main(worker, types=()):
        return 0
    args = ap.parse_args(argv)
    env = blas_env(args.blas_threads)
    a, b = args.orders
    print(f"{'case':<44} {'certificate':<11} {'interval':<22} {f'order {a} s':>10} {f'order {b} s':>10} "
          f"{'ratio A/B':>16}", flush=True)
    failed = False
    for spec, formulation, solver in CASES:
        if args.only and spec not in args.only:
            continue
        case = f"{spec}|{formulation}|{solver}"
        runs = {a: [], b: []}
        for _ in range(args.repeats):
            for order in (a, b):
                runs[order].append(exact_targets.measure(case, str(order), args.kill_after, __file__,
                                                         env=env))
        every = runs[a] + runs[b]
        if not all(r["ok"] for r in every):
            print(f"{case:<44} failed: {[r.get('reason', r['status']) for r in every if not r['ok']]}")
            failed = True
            continue
        same = all(r["status"] == every[0]["status"]
                   and np.allclose(r["J"], every[0]["J"], rtol=0, atol=1e-9) for r in every)
        ratios = [x["s"] / y["s"] for x, y in zip(runs[a], runs[b])]
        med = {o: float(np.median([r["s"] for r in runs[o]])) for o in (a, b)}
        iv = f"[{every[0]['J'][0]:.5g}, {every[0]['J'][1]:.5g}]"
        print(f"{exact_targets.label(spec) + ' ' + formulation:<44} {every[0]['status']:<11} {iv:<22} "
              f"{med[a]:>10.2f} {med[b]:>10.2f} {np.median(ratios):>6.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})" + ("" if same else "  RESULTS DIFFER"),
              flush=True)
        failed |= not same
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
