"""`python -m bilevel.verify DIR [--equilibria FILE.json] [--json]`: check RL runs against the exact
equilibria of their MDP. Exit status: 0 all runs verified, 1 some run failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bilevel.cli.common import add_occupancy_arg
from bilevel.cli.output import add_verbosity, say, setup_logging
from bilevel.verify.check import RunCheck, TOL_J_REL, TOL_M, TOL_PI_FRACTION, VerifyInputError
from bilevel.verify.runs import load_equilibria, load_runs, verify_runs


def format_checks(checks: list[RunCheck]) -> str:
    head = (f"{'run':<40} {'J':>9} {'exact interval':>19} {'J vs interval':>16} "
            f"{'outside':>7} {'tol_J':>7} {'eps_M':>8} {'eps_pi':>8} {'PAL bound >= gap':>20}  "
            f"{'equilibrium':<22} verdict")
    lines = [head, "-" * len(head)]
    for c in checks:
        pal = f"{c.pal_bound:.3g} >= {c.pal_gap:.3g}" if c.pal_bound is not None else ""
        lines.append(f"{Path(c.file).name[:40]:<40} {c.J:>9.4f} [{c.J_interval[0]:>8.4f},{c.J_interval[1]:>8.4f}] "
                     f"{c.position:>16} {c.outside_by:>7.2g} {c.tol_J:>7.2g} {c.eps_M:>8.2e} "
                     f"{c.eps_pi:>8.2e} {pal:>20}  "
                     f"{c.equilibrium:<22} {'verified' if c.ok else 'FAILED'}")
        for why in c.failed:
            lines.append(f"    - {why}")
        for why in c.notes:
            lines.append(f"    note: {why}")
    n_bad = sum(not c.ok for c in checks)
    tol_pi = checks[0].tol_pi if checks else 0
    lines.append(f"{len(checks) - n_bad}/{len(checks)} runs verified "
                 f"(tolerances: J the interval's own precision tol_J, at least {TOL_J_REL:g} "
                 f"max(1, |J|); eps_pi {TOL_PI_FRACTION:.0%} of R_max/(1-gamma) = {tol_pi:.3g}; "
                 f"eps_M {TOL_M} nats; J is the discounted return, or the T-step return of a run "
                 f"trained with occupancy: average)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bilevel.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="directory of run records (or one record)")
    ap.add_argument("--equilibria", help="saved `python -m bilevel.solve FILE --json` output")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    add_occupancy_arg(ap)
    add_verbosity(ap)
    args = ap.parse_args(argv)
    setup_logging(args)
    try:
        runs = load_runs(Path(args.dir))
        eq = load_equilibria(Path(args.equilibria)) if args.equilibria else None
        checks = verify_runs(runs, eq, log=say("verify"), occupancy=args.occupancy)
    except VerifyInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        from bilevel.cli.common import json_dumps
        print(json_dumps([c.to_dict() for c in checks], indent=1))
    else:
        print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1
