"""Exact-equilibria time and memory vs MDP size on gridworlds: the exact routes (bilevel.equilibria.exact),
IPOPT and SCIP (time limit) on the MPEC, vs the HiGHS occupancy LP (the floor: one LP of the same
MDP, no bilevel structure).

Gridworlds n x n are generated in code: start top-left, a decoy D (reward 1, terminal) below it,
a goal G (0.75 per step) in the far corner, slip 0.1, gamma 0.95, model support `neighbors`.
The formulation is MAL. Every measurement runs in its own subprocess, so its peak resident
memory (ru_maxrss: Python, Pyomo, CasADi, IPOPT/MUMPS, SCIP; ~150 MB of it is the interpreter
with the imports) belongs to that solve alone. Per size:
  - HiGHS:  `occupancy_lp` (the MDP's own LP);
  - IPOPT:  one MPEC solve, MAL's leader optimum min_{Phat, pi} loss s.t. the follower's KKT
            conditions, from one structured start (the floored fit's greedy policy), in the
            engine's large-MDP mode: the active-set polish of that start's complementarity
            branch (`--ipopt-reduction homotopy` runs the Scholtes homotopy first);
  - interval: `solve_formulation(mdp, "MAL", solver="ipopt", starts=1, ipopt_mode=...)`, the
            whole equilibrium interval (leader optimum + min and max J ends, 3 structured
            starts + 1 cold start each), local;
  - SCIP:   the same leader-optimum MPEC, globally (ExactProduct reduction), with `--scip-limit`;
            "timeout" when it does not prove optimality within the limit;
  - exact MAL / exact PAL (`--exact MAL PAL`): `exact_interval(mdp, f)`, the whole limit
            equilibrium interval with its certificate (global when both ends' proved gaps are
            ~0) and the larger of the two proved gaps. No MPEC.
HiGHS and the exact columns are measured `--repeats` times (a fresh subprocess each) and
reported as the median (min and max in the JSON); the MPEC columns once. `--blas-threads N`
sets the BLAS thread count of the measurements (on a shared machine, 1 avoids oversubscription).
A solver stops growing after its first size over `--limit` seconds (that size is reported), or
after a failure. `--exact-only` skips the MPEC columns (IPOPT, interval, SCIP).
Printed: times, ratios to HiGHS measured in this run, peak RSS, the largest grid each solver
finishes within `--limit` (default 60 s; for the exact columns: finishes *and* certifies
global), and the least-squares fit log t = p log(S*A) + c of the IPOPT leader time and of each
exact route's time, over all sizes and over the largest half. Timings are figures of this run
on this machine, never test assertions.

    python benchmarks/equilibria_scaling.py [--sizes 3 4 5 6 8 10 12 15 20] [--limit 60]
    python benchmarks/equilibria_scaling.py --exact-only [--repeats 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bilevel.mdp import mdp_from_dict  # noqa: E402

EXACT = "exact_"      # column prefix of the exact routes: exact_MAL, exact_PAL


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


def leader_mpec(mdp, solver: str, reduction: str, time_limit: float):
    """One MPEC solve of MAL's leader optimum: IPOPT from the first structured start (polish
    only, or the Scholtes homotopy then polish), or SCIP globally. Returns the MPECResult."""
    from bilevel.equilibria.mpec_route import HOMOTOPY, set_objective
    from bilevel.equilibria.starts import structured_starts
    from bilevel.game import build
    from bilevel.mpec import ExactProduct, Scholtes, solve_mpec
    bm = build(mdp, "MAL")
    m = bm.model
    set_objective(m, m.leader)
    if solver == "scip":
        from solvers.scip import Scip
        return solve_mpec(m, ExactProduct(), Scip(time_limit=time_limit, gap=1e-6, abs_gap=1e-9))
    from solvers.ipopt import Ipopt
    schedule = () if reduction == "polish" else HOMOTOPY
    return solve_mpec(m, Scholtes(schedule=schedule), Ipopt(tol=1e-9, max_iter=3000), starts=0,
                      x0s=structured_starts(bm)[:1])


def worker(size: str, what: str, reduction: str, time_limit: float) -> dict:
    """One measurement (run in a subprocess by `measure`); the clock starts after the imports."""
    import bilevel.equilibria  # noqa: F401 - imports Pyomo, CasADi, cyipopt, pyscipopt
    from bilevel.equilibria import solve_formulation
    from bilevel.equilibria.exact import exact_interval
    from bilevel.tabular import occupancy_lp
    mdp = grid_mdp(size)
    t0 = time.perf_counter()
    if what == "highs":
        lp = occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
        return {"s": time.perf_counter() - t0, "ok": True, "J": lp.J, "status": "optimal"}
    if what.startswith(EXACT):
        res = exact_interval(mdp, what.removeprefix(EXACT))
        s = time.perf_counter() - t0
        if not res.ok:
            return {"s": s, "ok": False, "status": "failed", "reason": res.reason}
        return {"s": s, "ok": True, "status": res.certificate, "J": [res.low.J, res.high.J],
                "gap": max(res.details["proved_gap"].values()), "how": res.details.get("how"),
                "milp": res.details.get("milp")}
    if what == "interval":
        res = solve_formulation(mdp, "MAL", solver="ipopt", starts=1, ipopt_mode=reduction)
        return {"s": time.perf_counter() - t0, "ok": res.ok,
                "J": [res.low.J, res.high.J] if res.ok else None,
                "status": res.certificate if res.ok else res.reason}
    res = leader_mpec(mdp, what, reduction, time_limit)
    status = ("global" if res.certificate == "global" else "local") if res.ok else (
        "timeout" if what == "scip" and "time" in res.message.lower() else res.status.value)
    return {"s": time.perf_counter() - t0, "ok": res.ok, "status": status,
            "L": float(res.objective) if res.ok else None}


BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
WORKER_ENV: dict | None = None     # the subprocesses' environment (None: this one's)


def blas_env(threads: int | None) -> dict | None:
    """The environment with the BLAS thread count set (None: unchanged)."""
    return None if threads is None else {**os.environ,
                                         **dict.fromkeys(BLAS_THREAD_VARS, str(threads))}


def measure(size: str, what: str, reduction: str, time_limit: float, kill_after: float) -> dict:
    """Run `worker` in a fresh interpreter; add its peak RSS (MB). Killed after kill_after s."""
    cmd = [sys.executable, __file__, "--worker", size, what, "--ipopt-reduction", reduction,
           "--scip-limit", str(time_limit)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         cwd=ROOT, env=WORKER_ENV)
    timer = threading.Timer(kill_after, p.kill)
    timer.start()
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    timer.cancel()
    rss = usage.ru_maxrss / 1024
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if status != 0 or not lines:
        return {"s": kill_after, "ok": False, "status": f"killed after {kill_after:.0f} s"
                if status == 9 or os.WIFSIGNALED(status) else f"exit {status}", "rss_mb": rss}
    return {**json.loads(lines[-1]), "rss_mb": rss}


def measure_repeated(size: str, what: str, reduction: str, time_limit: float,
                     kill_after: float, repeats: int) -> dict:
    """`measure` `repeats` times (a fresh interpreter each): the last run's fields with s = the
    median time, s_min, s_max, runs (every time), the largest peak RSS; ok only if every run is
    ok; status the set of statuses. Stops repeating after a failed run."""
    runs = []
    for _ in range(max(1, repeats)):
        runs.append(measure(size, what, reduction, time_limit, kill_after))
        if not runs[-1]["ok"]:
            break
    times = [r["s"] for r in runs]
    statuses = sorted({str(r["status"]) for r in runs})
    return {**runs[-1], "s": float(np.median(times)), "s_min": min(times), "s_max": max(times),
            "runs": times, "ok": all(r["ok"] for r in runs), "status": "/".join(statuses),
            "rss_mb": max(r["rss_mb"] for r in runs)}


def fit(points) -> tuple[float, float] | None:
    """Least squares log t = p log(SA) + log c; returns (p, c)."""
    if len(points) < 2:
        return None
    x, y = np.log([q[0] for q in points]), np.log([q[1] for q in points])
    p, c = np.polyfit(x, y, 1)
    return float(p), float(np.exp(c))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["3", "4", "5", "6", "8", "10", "12", "15", "20"],
                   help="n (n x n grid) or RxC")
    p.add_argument("--limit", type=float, default=60.0,
                   help="a solver stops growing after its first size over this many seconds")
    p.add_argument("--scip-limit", type=float, default=60.0, help="SCIP time limit per solve")
    p.add_argument("--kill-after", type=float, default=600.0,
                   help="kill a measurement after this many seconds")
    p.add_argument("--ipopt-reduction", choices=("polish", "homotopy"), default="polish")
    p.add_argument("--no-interval", action="store_true", help="skip the full-interval column")
    p.add_argument("--exact", nargs="*", default=["MAL", "PAL"],
                   choices=("MAL", "PAL", "MAL_random_noise"),
                   help="formulations whose exact route gets a column (none: no exact column)")
    p.add_argument("--exact-only", action="store_true",
                   help="skip the MPEC columns (IPOPT, interval, SCIP): HiGHS and the exact routes")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs (fresh subprocesses) of HiGHS and of each exact column; median shown")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="set OPENBLAS/OMP/MKL_NUM_THREADS in the measurements (default: inherit)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", nargs=2, metavar=("SIZE", "WHAT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(*a.worker, a.ipopt_reduction, a.scip_limit), default=float))
        return 0
    global WORKER_ENV
    WORKER_ENV = blas_env(a.blas_threads)

    mpec = [] if a.exact_only else ["ipopt"] + ([] if a.no_interval else ["interval"]) + ["scip"]
    exact = [EXACT + f for f in a.exact]
    cols = mpec + exact
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; "
          + (f"IPOPT reduction: {a.ipopt_reduction}; SCIP limit {a.scip_limit:g} s; " if mpec else
             "exact routes only; ")
          + f"HiGHS and exact: median of {a.repeats} runs; growth stops past {a.limit:g} s; "
          + (f"BLAS threads {a.blas_threads}" if a.blas_threads else "BLAS threads inherited"))

    def head(c):
        if c.startswith(EXACT):
            name = c.removeprefix(EXACT) + " exact s"
            return f"{name:>16} {'/LP':>7} {'MB':>5} {'cert':>6} {'gap':>7}"
        return f"{c + ' s':>11} {'/LP':>7} {'MB':>5} {'status':>9}"
    print(f"{'grid':>6} {'S':>4} {'S*A':>5} {'HiGHS s':>8} {'MB':>5} | "
          + " | ".join(map(head, cols)))
    rows, growing = [], dict.fromkeys(cols, True)
    for n in a.sizes:
        mdp = grid_mdp(n)
        row = {"grid": mdp.name.removeprefix("grid_"), "S": mdp.n_states, "A": mdp.n_actions,
               "SA": mdp.n_states * mdp.n_actions,
               "highs": measure_repeated(n, "highs", a.ipopt_reduction, a.scip_limit,
                                         a.kill_after, a.repeats)}
        for c in cols:
            if growing[c]:
                if c.startswith(EXACT):
                    row[c] = measure_repeated(n, c, a.ipopt_reduction, a.scip_limit, a.kill_after,
                                              a.repeats)
                else:
                    row[c] = measure(n, c, a.ipopt_reduction, a.scip_limit, a.kill_after)
                growing[c] = row[c]["ok"] and row[c]["s"] <= a.limit
        rows.append(row)
        lp = row["highs"]["s"]

        def cell(c):
            r = row.get(c)
            ex = c.startswith(EXACT)
            if r is None:
                return (f"{'-':>16} {'-':>7} {'-':>5} {'-':>6} {'-':>7}" if ex else
                        f"{'-':>11} {'-':>7} {'-':>5} {'(skipped)':>9}")
            if ex:
                gap = f"{r['gap']:>7.1g}" if r.get("gap") is not None else f"{'-':>7}"
                return (f"{r['s']:>16.3f} {r['s'] / lp:>7.0f} {r['rss_mb']:>5.0f} "
                        f"{str(r['status'])[:6]:>6} {gap}")
            return (f"{r['s']:>11.2f} {r['s'] / lp:>7.0f} {r['rss_mb']:>5.0f} "
                    f"{str(r['status'])[:9]:>9}")
        print(f"{row['grid']:>6} {row['S']:>4} {row['SA']:>5} {lp:>8.4f} "
              f"{row['highs']['rss_mb']:>5.0f} | " + " | ".join(cell(c) for c in cols), flush=True)

    fits = {}
    for c, label in [("ipopt", "IPOPT leader time")] * bool(mpec) + \
            [(c, f"exact {c.removeprefix(EXACT)} time") for c in exact]:
        pts = [(r["SA"], r[c]["s"]) for r in rows if r.get(c, {}).get("ok")]
        fits[c] = {"all": fit(pts), "largest_half": fit(pts[len(pts) // 2:]), "n": len(pts)}
        for k in ("all", "largest_half"):
            f = fits[c][k]
            if f:
                print(f"{label} ~ {f[1]:.3g} (S*A)^{f[0]:.2f}  (least squares, {k} of the "
                      f"{len(pts)} solved sizes)")

    def within(r, c):
        x = r.get(c, {})
        return x.get("ok") and x["s"] <= a.limit and (not c.startswith(EXACT)
                                                      or x["status"] == "global")
    largest = {c: max((r for r in rows if within(r, c)), default={"grid": None},
                      key=lambda r: r["S"])["grid"] for c in ["highs"] + cols}
    print(f"largest grid within {a.limit:g} s (exact: certified global): "
          + ", ".join(f"{c} {g}" for c, g in largest.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "fits": fits, "largest": largest,
                                            "limit": a.limit, "repeats": a.repeats,
                                            "blas_threads": a.blas_threads},
                                           indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
