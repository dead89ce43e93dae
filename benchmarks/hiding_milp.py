"""Which exact method decides MAL's worst equilibrium fastest: checking every deterministic
policy, or the hiding MILP (with and without the hiding-descent incumbent)?

On dense random MDPs (Garnets with branching = S, model support `all`, start in state 0),
for each size and seed, in one process:
  - brute force: `search.brute_force` (every deterministic policy through the exact check);
  - MILP: `HidingMILP.solve(min)` with no incumbent, and with the descent's incumbent;
  - the HiGHS occupancy LP of the same MDP, the unit of the ratios.
All three must agree on min J (asserted). Figures of one run on a shared machine: the
printed ratios, not the absolute seconds, are what to quote.

    python benchmarks/hiding_milp.py [--sizes 4 6 8 10 12] [--actions 3] [--seeds 3]
                                     [--brute-max 60000] [--limit 120]
"""
from __future__ import annotations

import argparse
import time

from bilevel.equilibria.exact.milp import HidingMILP
from bilevel.equilibria.exact.search import brute_force, low_return_equilibria, true_return
from bilevel.equilibria.exact.structure import FollowerStructure, forced_pairs
from bilevel.mdp.garnet import garnet
from bilevel.tabular import occupancy_lp


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 8, 10, 12])
    ap.add_argument("--actions", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--brute-max", type=int, default=60_000, help="largest policy count brute-forced")
    ap.add_argument("--limit", type=float, default=120.0, help="MILP time limit (s)")
    a = ap.parse_args(argv)
    print(f"{'S':>3} {'A':>2} {'seed':>4} {'policies':>9} {'min J':>10} {'LP s':>8} "
          f"{'brute s':>8} {'MILP s':>8} {'MILP+inc s':>10} {'brute/LP':>9} {'MILP/LP':>9} "
          f"{'MILP+inc/LP':>11} {'status':>8}")
    for S in a.sizes:
        for seed in range(a.seeds):
            mdp = garnet(S, a.actions, S, seed=seed, support="all", initial="first")
            fs = FollowerStructure(mdp, 0.0, forced_pairs(mdp, "MAL", None))
            _, t_lp = timed(lambda: occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma))
            n = a.actions ** S
            J_bf, t_bf = None, float("nan")
            if n <= a.brute_max:
                rows, t_bf = timed(lambda: brute_force(fs))
                J_bf = min(J for _, J, ok in rows if ok)
            milp = HidingMILP(fs)
            (res, pt), t_milp = timed(lambda: milp.solve(False, time_limit=a.limit))
            found = low_return_equilibria(fs)
            start = milp.start_from(found[0]) if found else None
            (res2, pt2), t_inc = timed(lambda: HidingMILP(fs).solve(False, time_limit=a.limit,
                                                                    start=start))
            J = true_return(fs, pt.actions) if pt is not None else float("nan")
            J2 = true_return(fs, pt2.actions) if pt2 is not None else float("nan")
            if res.status.value == "optimal" and res2.status.value == "optimal":
                assert abs(J - J2) <= 1e-7, (J, J2)
                if J_bf is not None:
                    assert abs(J - J_bf) <= 1e-7, (J, J_bf)
            print(f"{S:>3} {a.actions:>2} {seed:>4} {n:>9} {J:>10.6f} {t_lp:>8.4f} {t_bf:>8.3f} "
                  f"{t_milp:>8.3f} {t_inc:>10.3f} {t_bf / t_lp:>9.0f} {t_milp / t_lp:>9.0f} "
                  f"{t_inc / t_lp:>11.0f} {res.status.value[:8]:>8}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
