"""`python -m bilevel.train FILE [--formulations F[,F...] | --all] [--algorithm inner-outer|contextualized]
[--seeds N] [--seed S] [--out DIR] [--alpha A | --alpha F=A ...] [--budget STEPS] [--iters N] [--json]`

Trains one run per (formulation, seed), each an independent task of a sweep (bilevel.sweep: an
embedded Dask LocalCluster by default, `--workers N`, or `--scheduler ADDRESS` for an existing
cluster; finished runs are stored in the task cache (bilevel.cache.TASK_CACHE) and reused,
`--fresh` trains them again),
writes each RunRecord as JSON into DIR (default runs/<mdp name>/), and prints the reference-study-style table: average episode reward (undiscounted,
T-step) mean +- std over seeds, exact (finite-horizon evaluation of the final policy in the true
MDP) and sampled (mean of evaluation rollouts). Exit 1 when a run failed, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bilevel.cache import TASK_CACHE
from bilevel.cli.common import add_model_class_arg, add_occupancy_arg, apply_model_class
from bilevel.cli.output import add_verbosity, setup_logging
from bilevel.mdp.io import load_mdp, mdp_from_arrays, mdp_to_arrays
from bilevel.mdp.model import MDPError
from bilevel.rl.record import ALGORITHMS, FORMULATIONS, TRAINABLE, RunRecord, default_alpha
from bilevel.studies.reference import reference_for, reference_text
from bilevel.sweep import Task, add_sweep_args, run_sweep, sweep_options



def parse_alpha(values: list[str] | None) -> dict:
    """`--alpha A` sets every alpha-formulation; `--alpha F=A[,F=A]` some of them (the same
    spelling and checks as `bilevel.solve --alpha`); repeated flags add up."""
    from bilevel.cli.common import _parse_alpha
    out = {}
    for v in values or []:
        try:
            a = _parse_alpha(v)
        except ValueError as e:
            raise ValueError(f"--alpha: {e}") from None
        out.update(a if isinstance(a, dict) else {n: a for n in default_alpha()})
    return out


def summarize(records: list[RunRecord]) -> list[dict]:
    """Per formulation: mean and std over seeds of the exact and sampled final episode reward."""
    rows = []
    for f in FORMULATIONS:
        rs = [r for r in records if r.formulation == f]
        if not rs:
            continue
        ex = np.array([r.final["episode_reward"] for r in rs])
        sa = np.array([r.final["sampled_episode_reward"] for r in rs])
        rows.append({"formulation": f, "alpha": rs[0].alpha, "runs": len(rs),
                     "episode_reward_mean": float(ex.mean()), "episode_reward_std": float(ex.std(ddof=1)) if len(rs) > 1 else 0.0,
                     "sampled_mean": float(sa.mean()), "sampled_std": float(sa.std(ddof=1)) if len(rs) > 1 else 0.0,
                     "env_samples_mean": float(np.mean([r.env_samples for r in rs])),
                     "seconds_mean": float(np.mean([r.seconds for r in rs]))})
    return rows


def format_table(rows: list[dict], title: str, reference: dict | None = None) -> str:
    """The results table; `reference`: the reference study's figures (hidden_goal only)."""
    reference = reference or {}
    head = (f"{'Problem formulation':<20} {'alpha':>5}  {'Avg. Ep. Reward (exact)':>23}  "
            f"{'(sampled)':>15}  {'env samples':>11}  {'reference study':>15}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        a = "" if r["alpha"] is None else f"{r['alpha']:g}"
        lines.append(f"{r['formulation']:<20} {a:>5}  "
                     f"{r['episode_reward_mean']:>12.2f} ± {r['episode_reward_std']:5.2f}    "
                     f"{r['sampled_mean']:>7.2f} ± {r['sampled_std']:5.2f}  "
                     f"{r['env_samples_mean']:>11.0f}  {reference.get(r['formulation'], ''):>15}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bilevel.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="MDP YAML file")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--formulations", "--formulation", metavar="F[,F...]",
                   help=f"comma-separated, from {', '.join(TRAINABLE)} (default: all)")
    g.add_argument("--all", action="store_true", help="all of them (the default)")
    ap.add_argument("--algorithm", choices=ALGORITHMS, default="inner-outer")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    ap.add_argument("--seed", "--seed0", type=int, default=0,
                    help="first seed (runs use seeds S, S+1, ..., S+N-1)")
    ap.add_argument("--out", help="output directory (default runs/<mdp name>/)")
    ap.add_argument("--alpha", action="append", metavar="A|F=A",
                    help="alpha of MAL_agent_reward / MAL_random_noise (default: bilevel.game)")
    add_occupancy_arg(ap)
    add_model_class_arg(ap)
    ap.add_argument("--budget", type=int, help="max true-env transitions per run")
    ap.add_argument("--iters", type=int, help="leader iterations (inner-outer)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--fresh", action="store_true",
                    help="train every run again (else runs in the task cache are reused)")
    add_sweep_args(ap)
    add_verbosity(ap)
    args = ap.parse_args(argv)
    setup_logging(args)
    try:
        mdp = load_mdp(args.file)
        if args.occupancy is not None:
            mdp = mdp.with_(occupancy=args.occupancy)
        mdp = apply_model_class(mdp, args.model_class)
        alphas = parse_alpha(args.alpha)
        if args.seeds < 1:
            raise ValueError("--seeds must be >= 1")
        if args.budget is not None and args.budget < 1:
            raise ValueError("--budget must be >= 1")
    except (MDPError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    forms = [f.strip() for f in (args.formulations or ",".join(TRAINABLE)).split(",") if f.strip()]
    bad = [f for f in forms if f not in TRAINABLE]
    if bad:
        why = "no RL trainer" if all(f in FORMULATIONS for f in bad) else "unknown"
        print(f"error: --formulations: {why} for {', '.join(bad)} (choose from "
              f"{', '.join(TRAINABLE)})", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / mdp.name
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    jobs = [(f, s) for f in forms for s in range(args.seed, args.seed + args.seeds)]
    tasks = [run_task(mdp, args.file, f, seed, args, alphas.get(f)) for f, seed in jobs]
    results = run_sweep(tasks, store=TASK_CACHE, name=f"train {mdp.name}", fresh=args.fresh,
                        **sweep_options(args))
    records, failed = [], []
    for (f, seed), res in zip(jobs, results):
        if res["status"] != "ok":
            failed.append(f"{f} seed {seed}: {res['reason']}")
            continue
        rec = RunRecord.from_dict(res["result"])
        (out / rec.filename).write_text(rec.to_json())
        records.append(rec)
    wall = time.perf_counter() - t0
    rows = summarize(records)
    summary = {"mdp": mdp.name, "file": args.file, "algorithm": args.algorithm, "seeds": args.seeds,
               "model_class": mdp.model_class.kind,
               "wall_seconds": wall, "out": str(out), "rows": rows}
    (out / f"summary_{args.algorithm}.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        cls = f", models of the {mdp.model_class.describe()} class" if mdp.restricted else ""
        print(format_table(rows, f"{mdp.name}: {args.algorithm}{cls}, {args.seeds} seeds; "
                                 f"average episode reward over T={_T(mdp)} steps (undiscounted), "
                                 f"mean ± std over seeds",
                           {f: reference_text(e) for f, e in (reference_for(mdp.name) or {}).items()}))
        print(f"{len(records)} runs in {wall:.1f} s; records in {out}/ "
              f"(check them: python -m bilevel.verify {out})")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {'; '.join(failed[:3])}", file=sys.stderr)
        return 1
    return 0


def _T(mdp) -> int:
    from bilevel.rl.env import episode_horizon
    return episode_horizon(mdp)


def run_task(mdp, path: str, formulation: str, seed: int, args, alpha) -> Task:
    """One training run as a sweep task; the MDP travels as its arrays (mdp_to_arrays), so a
    worker on another machine needs no file."""
    kwargs = {"mdp": mdp_to_arrays(mdp), "mdp_path": path, "formulation": formulation,
              "seed": seed, "algorithm": args.algorithm, "alpha": alpha, "budget": args.budget,
              "iters": args.iters}
    return Task("bilevel.train:train_run", kwargs, label=f"{formulation}-seed{seed}")


def train_run(mdp: dict, mdp_path: str, formulation: str, seed: int, algorithm: str,
              alpha: float | None, budget: int | None, iters: int | None) -> dict:
    """Train one run (inner-outer or contextualized) and return its RunRecord as a dict."""
    m = mdp_from_arrays(mdp)
    if algorithm == "inner-outer":
        from bilevel.rl.inner_outer import TrainConfig, train_inner_outer
        cfg, train = TrainConfig(), train_inner_outer
    else:
        from bilevel.rl.contextual import ContextConfig, train_contextualized
        cfg, train = ContextConfig(), train_contextualized
    if budget is not None:
        cfg = replace(cfg, budget=budget)
    if iters is not None:
        cfg = replace(cfg, leader_iters=iters)
    return train(m, formulation, seed, cfg, alpha=alpha, mdp_path=mdp_path).to_dict()

if __name__ == "__main__":
    sys.exit(main())
