"""How close MAL + agent reward's two per-policy bounds come to the lie they bound
(docs/DESIGN.md 5.6, "A proof for one policy" and "A box on the model's occupancy").

For the floored fit's greedy policy of each Garnet, IPOPT's best lie with the policy fixed
(started at the floored fit) gains `lie = F_eta - F_opt` in leader units. `lie_bound` credits a
lie of its own (the ratio to `lie` is printed); the occupancy box is asked to put the policy out
with the band a fraction of `lie` below F_opt, and the smallest fraction it manages is printed
with its time per call (median over the calls).

    python benchmarks/lie_bounds.py [--alpha 0.9999]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import ipopt_best_lie  # noqa: E402

from bilevel.equilibria.exact.lie_bound import lie_bound  # noqa: E402
from bilevel.equilibria.exact.occupancy_box import occupancy_bound  # noqa: E402
from bilevel.mdp.garnet import garnet  # noqa: E402

CASES = (("garnet(6, 3, 3, seed 1, all)", dict(n_states=6, n_actions=3, branching=3, seed=1, support="all")),
         ("garnet(8, 3, 3, seed 0, neighbors)", dict(n_states=8, n_actions=3, branching=3, seed=0, support="neighbors")),
         ("garnet(16, 3, 2, seed 0, neighbors)", dict(n_states=16, n_actions=3, branching=2, seed=0, support="neighbors")),
         ("garnet(25, 3, 2, seed 0, neighbors)", dict(n_states=25, n_actions=3, branching=2, seed=0, support="neighbors")))
FRACTIONS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=0.9999)
    args = ap.parse_args(argv)
    print("| MDP | IPOPT's lie | lie_bound / lie | occupancy box: out at | s per call |")
    print("|---|---|---|---|---|")
    for label, kw in CASES:
        mdp = garnet(**kw, initial="first")
        actions, F_eta, F_opt = ipopt_best_lie(mdp, args.alpha)
        lie = F_eta - F_opt
        ratio = lie_bound(mdp, args.alpha, actions)["lie"] / lie
        smallest, seconds = None, []
        for fraction in FRACTIONS:
            t = time.perf_counter()
            out = occupancy_bound(mdp, args.alpha, actions, F_opt - fraction * lie)["out"]
            seconds.append(time.perf_counter() - t)
            if not out:
                break
            smallest = fraction
        at = "not at 100 %" if smallest is None else f"{100 * smallest:g} % of the lie"
        print(f"| {label} | {lie:.4g} | {ratio:.2f} | {at} | {np.median(seconds):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
