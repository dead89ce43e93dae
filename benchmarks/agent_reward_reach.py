"""How far MAL + agent reward's MINLP route certifies (`--solver exact`,
bilevel.equilibria.exact.agent_reward): certificate, interval, proved gaps and wall time per MDP,
with the HiGHS occupancy LP of the same MDP as the time floor (ratio of the medians).

The MDPs: stochastic Garnets garnet(S, 3, 2, support="neighbors", initial="first") for S = 4 .. 25,
deterministic ones garnet(S, 3, 1, ...) for S = 25 and 40, and the 5x5 and 10x10 gridworlds of
mdps/ with their slip and without it (slip 0: every pair has one successor, so the relaxation's
lie term on supp P vanishes; module docstring of bilevel.equilibria.exact.agent_reward).
Each measurement runs in a fresh subprocess (exact_targets.measure: the clock starts after the
imports; a run past `--kill-after` counts with that time and is not repeated).

    python benchmarks/agent_reward_reach.py [--repeats 1] [--time-limit 120] [--alpha 0.9999]
        [--only SPEC ...] [--json FILE] [--blas-threads 1]
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

SPECS = tuple(f"garnet:{S}:3:2:0:neighbors" for S in (4, 6, 8, 12, 16, 25)) + (
    "garnet:25:3:1:0:neighbors", "garnet:40:3:1:0:neighbors",
    "file:mdps/grid_hidden_goal.yaml", "slip0:mdps/grid_hidden_goal.yaml",
    "file:mdps/grid_10x10.yaml", "slip0:mdps/grid_10x10.yaml")


def load(spec: str):
    """exact_targets.load, plus `slip0:PATH`: that gridworld file with slip 0."""
    kind, _, rest = spec.partition(":")
    if kind != "slip0":
        return exact_targets.load(spec)
    import yaml
    from bilevel.mdp.io import mdp_from_dict
    data = yaml.safe_load((ROOT / rest).read_text())
    data["gridworld"]["slip"] = 0.0
    data["name"] = f"{data['name']}_slip0"
    return mdp_from_dict(data, source=rest)


def label(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    return f"{Path(rest).stem} (slip 0)" if kind == "slip0" else exact_targets.label(spec)


def worker(spec: str, what: str, time_limit: float, alpha: float = 0.9999) -> dict:
    """One measurement: `what` = "lp" or "minlp" (agent_reward_interval at `alpha`, `time_limit`
    per SCIP solve)."""
    t_imp = time.perf_counter()
    from bilevel.equilibria.exact.agent_reward import agent_reward_interval
    mdp = load(spec)
    imports = time.perf_counter() - t_imp
    if what == "lp":
        return exact_targets.time_lp(mdp, imports)
    t0 = time.perf_counter()
    res = agent_reward_interval(mdp, alpha, time_limit=time_limit)
    s = time.perf_counter() - t0
    if not res.ok:
        return {"s": s, "ok": False, "status": "failed", "reason": res.reason, "imports_s": imports}
    steps = {k: v["status"] for k, v in res.details["steps"].items()}
    return {"s": s, "ok": True, "status": res.certificate, "J": [res.low.J, res.high.J],
            "proved_gap": res.details.get("proved_gap"), "steps": steps,
            "states": int(mdp.n_states), "alpha": alpha, "imports_s": imports}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=120.0, help="per SCIP solve (3 per MDP)")
    ap.add_argument("--alpha", type=float, default=0.9999, help="MAL + agent reward's alpha")
    ap.add_argument("--kill-after", type=float, default=None, help="default 4 x time limit + 60")
    ap.add_argument("--only", nargs="*", default=None, help="MDP specs (default: the module's list)")
    parsed = exact_targets.benchmark_args(ap, worker, argv, types=(float, float))
    if parsed is None:
        return 0
    args, env = parsed
    kill = args.kill_after or 4 * args.time_limit + 60
    rows = []
    print(f"MAL + agent reward, alpha {args.alpha:g}, {args.time_limit:g} s per SCIP solve")
    print(f"{'MDP':<34} {'S':>4} {'certificate':<12} {'interval':<22} {'proved gaps (L, min, max)':<28} "
          f"{'s (median)':>10} {'LP s':>8} {'ratio':>8}", flush=True)
    for spec in args.only or SPECS:
        extra = (str(args.time_limit), str(args.alpha))
        lp = [exact_targets.measure(spec, "lp", 120, __file__, extra, env) for _ in range(args.repeats)]
        runs = []
        for _ in range(args.repeats):
            runs.append(exact_targets.measure(spec, "minlp", kill, __file__, extra, env))
            if runs[-1].get("killed"):
                break
        r = runs[-1]
        s = float(np.median([x["s"] for x in runs]))
        s_lp = float(np.median([x["s"] for x in lp]))
        gaps = r.get("proved_gap") or {}
        gtxt = ", ".join(f"{gaps.get(k, float('nan')):.2g}" for k in ("leader", "min", "max")) if gaps else "-"
        iv = f"[{r['J'][0]:.5g}, {r['J'][1]:.5g}]" if r.get("J") else "-"
        print(f"{label(spec):<34} {r.get('states', ''):>4} {r['status']:<12} {iv:<22} {gtxt:<28} "
              f"{s:>10.1f} {s_lp:>8.4f} {s / s_lp:>8.0f}", flush=True)
        rows.append({"spec": spec, "label": label(spec), "runs": runs, "s": s, "lp_s": s_lp,
                     "ratio": s / s_lp})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
