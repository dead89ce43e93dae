"""Exact-equilibria time vs MDP size on gridworlds: IPOPT (MAL) vs SCIP (MAL, time limit) vs
the HiGHS occupancy LP (the floor: one LP of the same MDP, no bilevel structure).

Gridworlds R x C are generated in code: start top-left, a decoy D (reward 1,
terminal) below it, a goal G (0.75 per step) in the far corner, slip 0.1, gamma 0.95, model
support `neighbors`. For each size the script measures, in this run:
  - HiGHS: `occupancy_lp` (the MDP's own LP),
  - IPOPT: `solve_formulation(mdp, "MAL", solver="ipopt", starts=1)` (leader optimum + both ends
    of the equilibrium interval, Scholtes homotopy, local certificate),
  - SCIP:  `solve_formulation(mdp, "MAL", solver="scip", time_limit=T)` (global; "timeout" when
    it does not certify within T per solve),
plus peak memory (tracemalloc, Python allocations only) of the IPOPT run, the ratios to HiGHS,
and a least-squares fit of log(IPOPT time) on log(S*A): time ~ c (S*A)^p.

    python benchmarks/equilibria_scaling.py [--sizes 3 4 5 6] [--scip-limit 60] [--ipopt-limit 120]

Sizes stop growing for a solver once it exceeds its limit (that size is reported, larger
ones skipped). Timings are figures of one run on this machine, never test assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc

import numpy as np

from bilevel.equilibria import solve_formulation
from bilevel.mdp import mdp_from_dict
from bilevel.occupancy import occupancy_lp


def grid_mdp(size: str):
    """`RxC` gridworld (or `n` for n x n): S at (0,0), goal G at (R-1,C-1), decoy D (terminal,
    reward 1) at (1,0) when R > 1 and C > 1 (a 1-row corridor has no decoy)."""
    R, C = (int(x) for x in (size.split("x") if "x" in size else (size, size)))
    rows = [["."] * C for _ in range(R)]
    rows[0][0], rows[R - 1][C - 1] = "S", "G"
    rewards, terminal = {"G": 0.75}, []
    if R > 1 and C > 1:
        rows[1][0] = "D"
        rewards["D"], terminal = 1.0, ["D"]
    spec = {"name": f"grid_{R}x{C}", "gamma": 0.95, "horizon": 100,
            "gridworld": {"map": ["".join(r) for r in rows], "slip": 0.1,
                          "rewards": rewards, "terminal": terminal},
            "model_support": "neighbors"}
    return mdp_from_dict(spec, source=f"<grid {R}x{C}>")


def ipopt_leader_only(mdp):
    """One MPEC solve: MAL's leader optimum from one structured start (the floored fit's greedy
    policy), Scholtes homotopy + polish, IPOPT. Returns the MPECResult."""
    import pyomo.environ as pyo
    from bilevel.equilibria import structured_starts
    from bilevel.formulations import build
    from bilevel.mpec import Scholtes, solve_mpec
    from solvers.ipopt import Ipopt
    bm = build(mdp, "MAL")
    m = bm.model
    for obj in list(m.component_objects(pyo.Objective, active=True)):
        obj.deactivate()
    m.bench_obj = pyo.Objective(expr=m.leader, sense=pyo.minimize)
    return solve_mpec(m, Scholtes(), Ipopt(tol=1e-9, max_iter=3000), starts=0,
                      x0s=structured_starts(bm)[:1])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1x3", "2x2", "1x6", "2x4", "3x3", "3x4"],
                   help="RxC grids (or n for n x n)")
    p.add_argument("--scip-limit", type=float, default=60.0)
    p.add_argument("--ipopt-limit", type=float, default=120.0,
                   help="skip larger sizes for IPOPT once one run exceeds this")
    p.add_argument("--json", default=None)
    p.add_argument("--ipopt-mode", choices=("interval", "leader"), default="interval",
                   help="interval: solve_formulation (3 MPEC solves, 1 random + structured "
                        "starts); leader: one MPEC solve of the leader optimum from one start")
    a = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(shared), python {platform.python_version()}")
    print(f"{'grid':>6} {'S':>4} {'S*A':>5} {'HiGHS s':>8} {'IPOPT s':>8} {'IPOPT/LP':>9} "
          f"{'peak MB':>8} {'J_low':>7} {'SCIP s':>8} {'SCIP/LP':>8} {'SCIP status':>12}")
    rows, ipopt_on, scip_on = [], True, True
    for n in a.sizes:
        mdp = grid_mdp(n)
        S, A = mdp.n_states, mdp.n_actions
        lp, t_lp = timed(lambda: occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma))
        row = {"grid": mdp.name.removeprefix("grid_"), "S": S, "A": A, "SA": S * A, "highs_s": t_lp,
               "J_star": lp.J}
        if ipopt_on:
            tracemalloc.start()
            if a.ipopt_mode == "interval":
                res, t = timed(lambda: solve_formulation(mdp, "MAL", solver="ipopt", starts=1))
                ok, J_low, why = res.ok, (res.low.J if res.ok else None), res.reason
            else:
                res, t = timed(lambda: ipopt_leader_only(mdp))
                ok, J_low, why = res.ok, None, str(res.status.value)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            row.update(ipopt_s=t, ipopt_ok=ok, ipopt_peak_mb=peak, ipopt_J_low=J_low,
                       ipopt_reason=why, ipopt_mode=a.ipopt_mode)
            ipopt_on = t <= a.ipopt_limit
        if scip_on:
            res, t = timed(lambda: solve_formulation(mdp, "MAL", solver="scip",
                                                     time_limit=a.scip_limit))
            row.update(scip_s=t, scip_ok=res.ok,
                       scip_status="global" if res.ok else ("timeout" if "timelimit" in res.reason
                                                            else "failed"),
                       scip_reason=res.reason)
            scip_on = "timelimit" not in res.reason   # stop growing only on a timeout
        rows.append(row)
        f = lambda k, w, fmt: (format(row[k], fmt) if row.get(k) is not None else "-").rjust(w)
        ratio = lambda k: (format(row[k] / t_lp, ".0f") if row.get(k) else "-")
        print(f"{row['grid']:>6} {S:>4} {S * A:>5} {t_lp:>8.4f} {f('ipopt_s', 8, '.2f')} "
              f"{ratio('ipopt_s'):>9} {f('ipopt_peak_mb', 8, '.1f')} {f('ipopt_J_low', 7, '.3f')} "
              f"{f('scip_s', 8, '.2f')} {ratio('scip_s'):>8} {row.get('scip_status', '-'):>12}",
              flush=True)
    pts = [(r["SA"], r["ipopt_s"]) for r in rows if r.get("ipopt_ok")]
    fit = None
    if len(pts) >= 2:
        x, y = np.log([p_[0] for p_ in pts]), np.log([p_[1] for p_ in pts])
        slope, icpt = np.polyfit(x, y, 1)
        fit = {"exponent": float(slope), "coef": float(np.exp(icpt)), "points": len(pts)}
        print(f"IPOPT time ~ {fit['coef']:.3g} (S*A)^{slope:.2f}  (least squares on "
              f"{len(pts)} sizes)")
    largest = {k: max((r for r in rows if r.get(f"{k}_ok") and r[f"{k}_s"] <= 60),
                      default={"grid": None}, key=lambda r: r["S"])["grid"]
               for k in ("ipopt", "scip")}
    print(f"largest grid within 60 s: IPOPT {largest['ipopt']}, SCIP {largest['scip']}, "
          f"HiGHS all sizes run ({rows[-1]['grid']} in {rows[-1]['highs_s']:.4f} s)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "fit": fit, "largest_60s": largest}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
