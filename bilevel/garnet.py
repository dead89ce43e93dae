"""`python -m bilevel.garnet --states 10 --actions 3 --branching 2 --seed 0 [--out F]`: write a
seeded Garnet MDP (bilevel.mdp.garnet) as YAML."""
from __future__ import annotations

import argparse
import sys

from bilevel.cli.output import add_verbosity, setup_logging
from bilevel.mdp.garnet import garnet
from bilevel.mdp.io import dump_mdp


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bilevel.garnet", description=__doc__.split("\n")[0])
    p.add_argument("--states", type=int, required=True)
    p.add_argument("--actions", type=int, required=True)
    p.add_argument("--branching", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--support", choices=("true", "neighbors", "all"), default="all")
    p.add_argument("--out", default=None, help="write the YAML here instead of stdout")
    add_verbosity(p)
    a = p.parse_args(argv)
    setup_logging(a)
    try:
        mdp = garnet(a.states, a.actions, a.branching, a.seed, a.gamma, a.horizon, a.support)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = dump_mdp(mdp)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
