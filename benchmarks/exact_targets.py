"""Wall time of the exact routes against their targets, with the HiGHS occupancy LP of the same
MDP as the floor.

Every formulation is solved by `solve_formulation(mdp, f, solver="auto")`: the exact route
(bilevel.equilibria.exact) for PAL, MAL and MAL + random noise, the MPEC route for MAL + agent reward
(the follower-policy enumeration on tiny MDPs, else IPOPT, local, and on MDPs of at most 36
state-action pairs the binary-follower MINLP from IPOPT's ends, 6.5 s for both). Each measurement (one MDP,
one formulation, or the LP) runs in a fresh subprocess, `--repeats` times (default 3); the clock
starts after the imports (their time is reported apart), and the table shows the median, min
and max wall time, and the ratio of the median to the median LP time of the same MDP measured
in this run (`--blas-threads N`: their BLAS thread count). A run that exceeds its budget is
killed (MAL + agent reward: `--agent-budget` seconds; others `--kill-after`; counted from the
subprocess's start, imports included) and not repeated; it counts with its budget as its time
(a lower bound).

Targets (the certificate of PAL, MAL and MAL + random noise must be global where asked):
    hidden_goal.yaml            all four formulations, total < 1.5 s
    garnet 8 x 3, each support  all four formulations, total < 10 s per MDP; PAL, MAL and
    (true, neighbors, all),     MAL + random noise global
    branching 2 and 8, seeds
    grid_hidden_goal.yaml       PAL, MAL, MAL + random noise, each < 10 s, global
    grid_10x10.yaml             PAL and MAL, each < 60 s, global
    20x20 gridworld             PAL < 60 s, global (the generator of equilibria_scaling.py)

    python benchmarks/exact_targets.py [--repeats 3] [--agent-budget 120] [--json FILE]
        [--only hidden_goal garnet grid_hidden_goal grid_10x10 grid_20x20]
        [--formulations PAL MAL MAL_random_noise MAL_agent_reward] [--blas-threads N]
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

WORKER_ENV: dict | None = None     # the subprocesses' environment (None: this one's)
FORMULATIONS = ("PAL", "MAL", "MAL_random_noise", "MAL_agent_reward")
EXACT = ("PAL", "MAL", "MAL_random_noise")
SUPPORTS = ("true", "neighbors", "all")


@dataclass(frozen=True)
class Group:
    """MDPs measured against one target: `scope` "total" (the sum over the formulations of one
    MDP) or "each" (every formulation on its own); `need_global`: formulations whose
    certificate must be global."""

    key: str
    specs: tuple[str, ...]
    formulations: tuple[str, ...]
    target_s: float
    scope: str
    need_global: tuple[str, ...]


def groups(seeds, branchings) -> list[Group]:
    garnets = tuple(f"garnet:8:3:{b}:{k}:{sup}" for sup in SUPPORTS for b in branchings
                    for k in seeds)
    return [Group("hidden_goal", ("file:mdps/hidden_goal.yaml",), FORMULATIONS, 1.5, "total", ()),
            Group("garnet", garnets, FORMULATIONS, 10.0, "total", EXACT),
            Group("grid_hidden_goal", ("file:mdps/grid_hidden_goal.yaml",), EXACT, 10.0, "each",
                  EXACT),
            Group("grid_10x10", ("file:mdps/grid_10x10.yaml",), ("PAL", "MAL"), 60.0, "each",
                  ("PAL", "MAL")),
            Group("grid_20x20", ("grid:20",), ("PAL",), 60.0, "each", ("PAL",))]


def load(spec: str):
    """`file:PATH`, `grid:N` (n x n, equilibria_scaling's generator) or
    `garnet:S:A:B:SEED:SUPPORT` (start in state 0)."""
    kind, _, rest = spec.partition(":")
    if kind == "file":
        from bilevel.mdp import load_mdp
        return load_mdp(ROOT / rest)
    if kind == "grid":
        from equilibria_scaling import grid_mdp
        return grid_mdp(rest)
    if kind == "garnet":
        from bilevel.mdp.garnet import garnet
        S, A, b, seed, support = rest.split(":")
        return garnet(int(S), int(A), int(b), seed=int(seed), support=support, initial="first")
    raise ValueError(f"unknown MDP spec {spec!r}")


def label(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    if kind == "file":
        return Path(rest).stem
    if kind == "grid":
        return f"grid {rest}x{rest}"
    S, A, b, seed, support = rest.split(":")
    return f"garnet S{S} A{A} b{b} seed{seed} {support}"


def time_lp(mdp, imports_s: float) -> dict:
    """A measurement of the HiGHS occupancy LP of `mdp` (the time floor of every ratio)."""
    from bilevel.tabular import occupancy_lp
    t0 = time.perf_counter()
    lp = occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    return {"s": time.perf_counter() - t0, "ok": True, "J": lp.J, "status": "optimal",
            "imports_s": imports_s}


def worker(spec: str, what: str) -> dict:
    """One measurement (in a subprocess); the clock starts after the imports."""
    t_imp = time.perf_counter()
    import bilevel.equilibria.enumeration  # noqa: F401 - Pyomo, SCIP (MAL + agent reward on tiny MDPs)
    import bilevel.equilibria.exact  # noqa: F401
    from bilevel.equilibria import solve_formulation
    mdp = load(spec)
    imports = time.perf_counter() - t_imp
    if what == "lp":
        return time_lp(mdp, imports)
    t0 = time.perf_counter()
    res = solve_formulation(mdp, what, solver="auto")
    s = time.perf_counter() - t0
    if not res.ok:
        return {"s": s, "ok": False, "status": "failed", "reason": res.reason,
                "solver": res.solver, "imports_s": imports}
    return {"s": s, "ok": True, "status": res.certificate, "solver": res.solver,
            "J": [res.low.J, res.high.J], "proved_gap": res.details.get("proved_gap"),
            "how": res.details.get("how"), "imports_s": imports}


def worker_main(worker, argv=None, types=(float,)) -> bool:
    """The worker side of `measure`: under `script --worker SPEC WHAT X...` (argv None:
    sys.argv) print `worker(SPEC, WHAT, *X)` as one JSON line, each X converted by its entry of
    `types`, and return True; else False."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "--worker":
        return False
    extra = [convert(x) for convert, x in zip(types, args[3:])]
    print(json.dumps(worker(args[1], args[2], *extra)))
    return True


def benchmark_args(ap: argparse.ArgumentParser, worker, argv=None, types=(float,)):
    """`--json FILE` and `--blas-threads N` (default 1) on `ap`; under `--worker` run `worker`
    (`worker_main`, its extra arguments converted by `types`) and return None; else (the parsed
    arguments, the workers' environment)."""
    from equilibria_scaling import blas_env
    ap.add_argument("--json", default=None)
    ap.add_argument("--blas-threads", type=int, default=1)
    if argv is None and worker_main(worker, types=types):
        return None
    args = ap.parse_args(argv)
    return args, blas_env(args.blas_threads)


def measure(spec: str, what: str, kill_after: float, script: str = __file__, extra=(),
            env: dict | None = None) -> dict:
    """`script --worker spec what *extra` (this file's `worker` by default) in a fresh
    interpreter, killed after `kill_after` seconds; its last JSON line is the result."""
    p = subprocess.Popen([sys.executable, script, "--worker", spec, what, *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                         env=env or WORKER_ENV)
    t0 = time.perf_counter()
    timer = threading.Timer(kill_after, p.kill)
    timer.start()
    out = p.stdout.read()
    rc = p.wait()
    timer.cancel()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        killed = rc < 0 and time.perf_counter() - t0 >= kill_after
        return {"s": kill_after if killed else time.perf_counter() - t0, "ok": False,
                "killed": killed,
                "status": f"killed at {kill_after:g} s" if killed else f"exit {rc}"}
    return json.loads(lines[-1])


def repeated(spec: str, what: str, repeats: int, kill_after: float) -> dict:
    """`measure` `repeats` times; stops after a run that was killed. Median, min, max of s."""
    runs = []
    for _ in range(repeats):
        runs.append(measure(spec, what, kill_after))
        if runs[-1].get("killed"):
            break
    s = [r["s"] for r in runs]
    J = [r["J"] for r in runs if r.get("ok")]
    spread = (float(np.max(np.abs(np.array(J) - J[0]))) if J else None)
    return {"what": what, "ok": all(r["ok"] for r in runs),
            "killed": any(r.get("killed") for r in runs),
            "certificate": "/".join(sorted({str(r["status"]) for r in runs})),
            "J": J[-1] if J else None, "J_spread": spread,
            "s": float(np.median(s)), "s_min": min(s), "s_max": max(s), "runs": s,
            "imports_s": float(np.median([r["imports_s"] for r in runs if "imports_s" in r]))
            if any("imports_s" in r for r in runs) else None,
            "solver": runs[-1].get("solver"), "how": runs[-1].get("how"),
            "proved_gap": runs[-1].get("proved_gap"), "reason": runs[-1].get("reason")}


def fmt_J(J) -> str:
    if J is None:
        return "-"
    def one(x):
        return f"{0.0 if abs(x) < 1e-12 else x:.6g}"
    return f"[{one(J[0])}, {one(J[1])}]" if isinstance(J, list) else one(J)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (at least 3)")
    p.add_argument("--agent-budget", type=float, default=120.0,
                   help="seconds per MAL + agent reward run; killed (and not repeated) past it")
    p.add_argument("--kill-after", type=float, default=600.0,
                   help="seconds per run of the other measurements")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="garnet seeds")
    p.add_argument("--branching", type=int, nargs="+", default=[2, 8], help="garnet branchings")
    p.add_argument("--only", nargs="+", default=None,
                   choices=("hidden_goal", "garnet", "grid_hidden_goal", "grid_10x10",
                            "grid_20x20"))
    p.add_argument("--formulations", nargs="+", default=list(FORMULATIONS), choices=FORMULATIONS,
                   help="measure only these (a group's total then covers only these)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="set OPENBLAS/OMP/MKL_NUM_THREADS in the measurements (default: inherit)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "WHAT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(*a.worker), default=float))
        return 0
    if a.repeats < 3:
        p.error("--repeats must be at least 3 (medians)")
    from equilibria_scaling import blas_env
    global WORKER_ENV
    WORKER_ENV = blas_env(a.blas_threads)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {a.repeats} runs per measurement (fresh "
          f"subprocesses; median [min, max] s after the imports); MAL_agent_reward budget "
          f"{a.agent_budget:g} s per run; BLAS threads "
          f"{a.blas_threads if a.blas_threads else 'inherited'}", flush=True)
    head = (f"{'MDP':<34} {'formulation':<17} {'certificate':<20} {'J interval':<25} "
            f"{'median s':>9} {'min s':>8} {'max s':>8} {'/LP':>7} {'target':>14} {'met':>4}")
    print(head)
    print("-" * len(head))
    rows, t_start = [], time.perf_counter()

    def show(r):
        print(f"{r['mdp']:<34} {r['formulation']:<17} {r['certificate'][:20]:<20} "
              f"{fmt_J(r['J']):<25} {r['s']:>9.3f} {r['s_min']:>8.3f} {r['s_max']:>8.3f} "
              f"{r['ratio_lp']:>7.0f} {r['target']:>14} "
              f"{'-' if r['met'] is None else 'yes' if r['met'] else 'NO':>4}", flush=True)

    for g in groups(a.seeds, a.branching):
        if a.only and g.key not in a.only:
            continue
        for spec in g.specs:
            lp = repeated(spec, "lp", a.repeats, a.kill_after)
            name = label(spec)
            rows.append({"group": g.key, "mdp": name, "formulation": "HiGHS LP", "target": "-",
                         "met": None, "ratio_lp": 1.0, **lp,
                         "certificate": "optimal" if lp["ok"] else lp["certificate"]})
            show(rows[-1])
            mine = []
            for f in [f for f in g.formulations if f in a.formulations]:
                budget = a.agent_budget if f == "MAL_agent_reward" else a.kill_after
                r = repeated(spec, f, a.repeats, budget)
                glob = f in g.need_global
                if g.scope == "each":
                    target = f"< {g.target_s:g} s" + (", global" if glob else "")
                    met = r["ok"] and r["s"] < g.target_s and (not glob
                                                               or r["certificate"] == "global")
                else:
                    target = "global" if glob else "-"
                    met = (r["ok"] and r["certificate"] == "global") if glob else None
                row = {"group": g.key, "mdp": name, "formulation": f, "target": target,
                       "met": met, "ratio_lp": r["s"] / lp["s"], "lp_s": lp["s"], **r}
                if r["killed"]:
                    row["certificate"] = f"none (killed at {budget:g} s)"
                rows.append(row)
                mine.append(row)
                show(row)
            if g.scope == "total" and mine:
                tot = {k: float(sum(r[k] for r in mine)) for k in ("s", "s_min", "s_max")}
                met = all(r["ok"] for r in mine) and tot["s"] < g.target_s and all(
                    r["met"] is not False for r in mine)
                cert = ("killed: lower bound" if any(r["killed"] for r in mine)
                        else "/".join(sorted({r["certificate"] for r in mine})))
                rows.append({"group": g.key, "mdp": name, "formulation": f"total ({len(mine)})",
                             "certificate": cert, "J": None, **tot,
                             "ratio_lp": tot["s"] / lp["s"], "lp_s": lp["s"],
                             "target": f"< {g.target_s:g} s" + (" + global" if g.need_global
                                                                else ""),
                             "met": met, "total": True})
                show(rows[-1])
    judged = [r for r in rows if r["met"] is not None]
    missed = [r for r in judged if not r["met"]]
    imports = [r["imports_s"] for r in rows if r.get("imports_s")]
    print(f"\ntargets met: {len(judged) - len(missed)} of {len(judged)}"
          + ("; not met: " + "; ".join(f"{r['mdp']} {r['formulation']} ({r['target']}: "
                                        f"{r['s']:.2f} s, {r['certificate']})" for r in missed)
             if missed else ""))
    if imports:
        print(f"imports per subprocess (not in the times): median {np.median(imports):.2f} s; "
              f"wall time of this benchmark {time.perf_counter() - t_start:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"repeats": a.repeats, "agent_budget": a.agent_budget,
                                            "blas_threads": a.blas_threads,
                                            "cores": os.cpu_count(), "rows": rows},
                                           indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
