"""What `--solver auto` gives for MAL + agent reward on small Garnets, against the MINLP without
a budget as the reference.

auto (bilevel.equilibria.routing.refined_by_minlp): IPOPT's MPEC interval, then the
binary-follower MINLP from IPOPT's ends, both within AUTO_AGENT_REWARD_SECONDS. The reference:
agent_reward_interval with `--time-limit` per SCIP solve and no budget (what `--solver exact`
runs). Per MDP: the certificates, the intervals, IPOPT's own interval, and the wall times. Per
size: how many of auto's intervals are global, and how often IPOPT's low end and auto's miss the
reference's global low end. Where the reference is global, auto's proved bounds (its ends
widened by its proved gaps) must enclose the reference's ends, and a global auto interval must
equal it: a run that breaks either prints INCONSISTENT and exits 1.

The MDPs: garnet(S, 3, b, seed, support, initial="first") for S in --sizes, b in 2 and 3, seeds
0 and 1, supports true, neighbors and all (12 per size). Each run is a fresh subprocess
(exact_targets.measure: the clock starts after the imports).

    python benchmarks/agent_reward_auto.py [--sizes 3 4 5 6 8] [--time-limit 60] [--json FILE]
        [--blas-threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import exact_targets  # noqa: E402

TOL = 1e-6      # slack on J when comparing intervals of two runs


def specs(sizes) -> list[str]:
    return [f"garnet:{S}:3:{b}:{seed}:{support}" for S in sizes for support in exact_targets.SUPPORTS
            for b in (2, 3) for seed in (0, 1)]


def worker(spec: str, what: str, time_limit: float) -> dict:
    """`what` = "auto" (solve_formulation, solver auto) or "reference" (agent_reward_interval,
    `time_limit` per SCIP solve, no budget)."""
    t_imp = time.perf_counter()
    from bilevel.equilibria import solve_formulation
    from bilevel.equilibria.exact.agent_reward import agent_reward_interval
    mdp = exact_targets.load(spec)
    imports = time.perf_counter() - t_imp
    t0 = time.perf_counter()
    if what == "auto":
        res = solve_formulation(mdp, "MAL_agent_reward", 0.9999)
    else:
        res = agent_reward_interval(mdp, 0.9999, time_limit=time_limit)
    s = time.perf_counter() - t0
    if not res.ok:
        return {"s": s, "ok": False, "status": "failed", "reason": res.reason, "imports_s": imports}
    ipopt = res.details.get("ipopt") or {}
    return {"s": s, "ok": True, "status": res.certificate, "solver": res.solver,
            "J": [res.low.J, res.high.J], "proved_gap": res.details.get("proved_gap"),
            "ipopt_J": ipopt.get("J"), "imports_s": imports}


def compare(auto: dict, ref: dict) -> list[str]:
    """What contradicts the reference: auto's proved bounds must enclose a global reference's
    ends, and a global auto interval must equal it."""
    if not (auto.get("ok") and ref.get("ok") and ref["status"] == "global"):
        return []
    out = []
    gaps = auto.get("proved_gap") or {}
    lo = auto["J"][0] - (gaps.get("min") if gaps.get("min") is not None else np.inf)
    hi = auto["J"][1] + (gaps.get("max") if gaps.get("max") is not None else np.inf)
    if lo > ref["J"][0] + TOL or hi < ref["J"][1] - TOL:
        out.append(f"proved bounds [{lo:.6g}, {hi:.6g}] miss the reference [{ref['J'][0]:.6g}, "
                   f"{ref['J'][1]:.6g}]")
    if auto["status"] == "global" and (abs(auto["J"][0] - ref["J"][0]) > TOL
                                       or abs(auto["J"][1] - ref["J"][1]) > TOL):
        out.append(f"global {auto['J']} differs from the reference's global {ref['J']}")
    return out


def summary(rows: list[dict]) -> list[dict]:
    """Per size: auto's global count, IPOPT's and auto's misses of a global reference's low end,
    and auto's median and max seconds."""
    out = []
    for S in sorted({r["S"] for r in rows}):
        mine = [r for r in rows if r["S"] == S and r["auto"].get("ok")]
        ref_global = [r for r in mine if r["reference"].get("ok") and r["reference"]["status"] == "global"]

        def missed(key):
            return sum(1 for r in ref_global if r["auto"].get(key)
                       and r["auto"][key][0] > r["reference"]["J"][0] + TOL)
        s = [r["auto"]["s"] for r in mine]
        out.append({"S": S, "n": len(mine), "auto_global": sum(r["auto"]["status"] == "global" for r in mine),
                    "reference_global": len(ref_global), "ipopt_missed_low": missed("ipopt_J"),
                    "auto_missed_low": missed("J"), "auto_s_median": float(np.median(s)) if s else None,
                    "auto_s_max": max(s, default=None)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[3, 4, 5, 6, 8])
    ap.add_argument("--time-limit", type=float, default=60.0, help="reference: per SCIP solve")
    parsed = exact_targets.benchmark_args(ap, worker, argv)
    if parsed is None:
        return 0
    args, env = parsed
    extra = (str(args.time_limit),)
    rows, bad = [], 0

    def iv(r, key="J"):
        return f"[{r[key][0]:.5g}, {r[key][1]:.5g}]" if r.get(key) else "-"
    print(f"{'MDP':<34} {'auto':<8} {'interval':<20} {'s':>5} {'IPOPT interval':<20} "
          f"{'reference':<10} {'interval':<20} {'s':>6}", flush=True)
    for spec in specs(args.sizes):
        auto = exact_targets.measure(spec, "auto", 300, __file__, extra, env)
        ref = exact_targets.measure(spec, "reference", 4 * args.time_limit + 60, __file__, extra, env)
        problems = compare(auto, ref)
        bad += bool(problems)
        print(f"{exact_targets.label(spec):<34} {auto['status']:<8} {iv(auto):<20} {auto['s']:>5.1f} "
              f"{iv(auto, 'ipopt_J'):<20} {ref['status']:<10} {iv(ref):<20} {ref['s']:>6.1f}"
              + "".join(f"  INCONSISTENT: {p}" for p in problems), flush=True)
        rows.append({"spec": spec, "S": int(spec.split(":")[1]), "auto": auto, "reference": ref,
                     "problems": problems})
    print()
    for s in summary(rows):
        print(f"S = {s['S']}: auto global {s['auto_global']}/{s['n']} (reference global "
              f"{s['reference_global']}); low end missed: IPOPT {s['ipopt_missed_low']}, auto "
              f"{s['auto_missed_low']}; auto s median {s['auto_s_median']:.2f}, max {s['auto_s_max']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary(rows)}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
