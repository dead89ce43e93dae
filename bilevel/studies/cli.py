"""Studies of the reference study's theory with the exact engine.

    python -m bilevel.studies theorem --mdps 200 --seed 0      # PAL theorem, 0 violations expected
    python -m bilevel.studies counterexample --scales 1 10 100 1000
    python -m bilevel.studies fixes --mdps 50
    python -m bilevel.studies misspecified --mdps 4   # state aggregations: intervals vs ML

Each subcommand prints a table on stdout (progress messages on stderr; -q/-v as in every
command, bilevel.cli.output) and writes JSON + a PNG under --out (default studies_out/); the
JSON holds null where a number is NaN or infinite. Each study is a sweep of independent tasks
(bilevel.studies.tasks) whose records are stored under OUT/tasks as they finish: a stopped study
resumes, and --fresh recomputes every task. Where the tasks run (bilevel.sweep.add_sweep_args):
an embedded Dask LocalCluster with one worker process per core (default), `--workers N` local
workers (0: in this process), or `--scheduler tcp://HOST:8786`, a cluster started with
`dask scheduler` and `dask worker tcp://HOST:8786 --nthreads 1` on each machine.
Exit status: 0 done, 1 some task failed (a solve that raised, exceeded its task's time limit or
found no certified interval; theorem: also a violation), 2 bad input.
The studies themselves: bilevel.studies.theorem, .counterexample, .fixes and .misspecified.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bilevel.cli.output import add_verbosity, logger, setup_logging
from bilevel.studies.counterexample import run_counterexample
from bilevel.studies.fixes import run_fixes
from bilevel.studies.misspecified import run_misspecified
from bilevel.studies.theorem import run_theorem
from bilevel.sweep import add_sweep_args, sweep_options


def parser() -> argparse.ArgumentParser:
    """The `python -m bilevel.studies` argument parser (one subcommand per study)."""
    p = argparse.ArgumentParser(prog="python -m bilevel.studies", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("theorem", help="numerical check of the PAL theorem")
    t.add_argument("--mdps", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mal-mdps", type=int, default=3, help="extra random 3-state MDPs for MAL terms")
    t.add_argument("--mal-floor", type=float, default=1e-9)
    t.add_argument("--early-mdps", type=int, default=None,
                   help="early-stopped PAL MPEC iterates on the first K MDPs (default: all)")
    c = sub.add_parser("counterexample", help="MAL gap on the k-scaled hidden goal")
    c.add_argument("--scales", type=float, nargs="+", default=[1, 10, 100, 1000])
    c.add_argument("--time-limit", type=float, default=30.0)
    f = sub.add_parser("fixes", help="worst-case gaps of the MAL fixes vs alpha")
    f.add_argument("--mdps", type=int, default=50)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    f.add_argument("--time-limit", type=float, default=10.0)
    f.add_argument("--agent-mdps", type=int, default=None,
                   help="solve MAL_agent_reward on the first K MDPs only (default: all)")
    f.add_argument("--agent-alphas", type=float, nargs="+", default=None)
    f.add_argument("--agent-time-limit", type=float, default=None,
                   help="time limit of the MAL_agent_reward solves (default: --time-limit; "
                        "per policy with enumerate)")
    f.add_argument("--recheck", type=float, default=None, metavar="SECONDS",
                   help="enumerate again, with SECONDS per policy, each MAL-fix result that is "
                        "local with a gap > BAD_GAP; a global result replaces it")
    f.add_argument("--agent-solver", default="ipopt",
                   choices=("scip", "ipopt", "auto", "enumerate"))
    f.add_argument("--no-pal", action="store_true",
                   help="skip the PAL MPEC (the closed-form PAL column is always computed)")
    m = sub.add_parser("misspecified", help="intervals and ML under state aggregations")
    m.add_argument("--mdps", type=int, default=4, help="random 4-state Garnets (besides the "
                   "aggregated trap and the hidden goal)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--time-limit", type=float, default=30.0)
    for s in (t, c, f, m):
        s.add_argument("--out", default="studies_out",
                       help="output directory (the JSON, the PNG, and each task's record under "
                            "OUT/tasks)")
        s.add_argument("--fresh", action="store_true",
                       help="recompute every task and overwrite its record under OUT/tasks "
                            "(default: reuse the records of the same task and code)")
        s.add_argument("--solver", default="scip" if s is f else "auto",
                       choices=("scip", "ipopt", "auto") + (("enumerate",) if s is f else ()),
                       help="auto: SCIP, and IPOPT (local) where SCIP does not certify; "
                            "enumerate (fixes): SCIP per deterministic follower policy "
                            "(bilevel.equilibria.enumeration), --time-limit per policy")
        add_sweep_args(s)
        add_verbosity(s)
    return p


def main(argv=None) -> int:
    """Run the study named in argv; return the exit status (0 done, 1 a task failed, 2 bad input)."""
    a = parser().parse_args(argv)
    log = setup_logging(a)
    out, sweep = Path(a.out), {"sweep": sweep_options(a), "fresh": a.fresh}
    if a.cmd == "theorem":
        res = run_theorem(a.mdps, a.seed, out, a.mal_mdps, a.solver, a.mal_floor, a.early_mdps,
                          **sweep)
        if res["violations"]:
            log.error(f"error: {len(res['violations'])} violation(s) of the PAL theorem")
            return 1
        return exit_status(res["failed"])
    if a.cmd == "counterexample":
        return exit_status(run_counterexample(a.scales, out, a.solver, a.time_limit,
                                              **sweep)["failed"])
    if a.cmd == "fixes":
        res = run_fixes(a.mdps, a.seed, a.alphas, out, a.solver, a.time_limit, not a.no_pal,
                        a.agent_mdps, a.agent_solver, a.agent_alphas,
                        agent_time_limit=a.agent_time_limit, recheck=a.recheck, **sweep)
        return exit_status(res["failed"])
    if a.cmd == "misspecified":
        return exit_status(run_misspecified(a.mdps, a.seed, out, a.solver, a.time_limit,
                                            **sweep)["failed"])
    return 2


def exit_status(failed: list[str]) -> int:
    """1 with one error line on stderr when some task failed, else 0."""
    if failed:
        more = f" ... ({len(failed) - 3} more)" if len(failed) > 3 else ""
        logger().error(f"error: {len(failed)} task(s) failed: {'; '.join(failed[:3])}{more}")
        return 1
    return 0
