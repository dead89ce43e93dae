"""`python -m bilevel.convert SOURCE --gamma G [--out F]`: write an MDP from another toolkit as
YAML. SOURCE is `gymnasium:ENV_ID` (a toy_text environment: FrozenLake-v1, FrozenLake8x8-v1,
CliffWalking-v1, CliffWalkingSlippery-v1, Taxi-v4) or a .npz file of arrays P, R (optionally
rho0, terminal) in layout SAS (P[s,a,s']) or ASS (P[a,s,s'], pymdptoolbox); see
bilevel.mdp.imports for the conventions."""
from __future__ import annotations

import argparse
import sys

import yaml

from bilevel.cli.output import add_verbosity, logger, setup_logging
from bilevel.mdp.imports import LAYOUTS, convert_document
from bilevel.mdp.model import MDPError, SUPPORT_KINDS


def _make_kwarg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bilevel.convert",
                                description=__doc__.split("\n")[0])
    p.add_argument("source", help="gymnasium:ENV_ID or FILE.npz")
    p.add_argument("--gamma", type=float, required=True)
    p.add_argument("--layout", choices=LAYOUTS, default="SAS", help=".npz: P[s,a,s'] (SAS) or "
                                                                   "P[a,s,s'] (ASS)")
    p.add_argument("--horizon", type=int, default=None,
                   help="default: the environment's max_episode_steps, if any")
    p.add_argument("--support", choices=SUPPORT_KINDS, default="true", help="model_support")
    p.add_argument("--name", default=None)
    p.add_argument("--make", type=_make_kwarg, action="append", default=[], metavar="KEY=VALUE",
                   help="gymnasium.make keyword, e.g. is_slippery=false (repeatable)")
    p.add_argument("--out", default=None, help="write the YAML here instead of stdout")
    add_verbosity(p)
    a = p.parse_args(argv)
    setup_logging(a)
    try:
        doc, source = convert_document(a.source, a.gamma, a.layout, a.horizon, a.support, a.name,
                                       dict(a.make))
    except MDPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger("convert").info(f"{source}: {len(doc['states'])} states, {len(doc['actions'])} "
                           f"actions, {len(doc['terminal'])} terminal")
    opts = "".join(f" --make {k}={v}" for k, v in a.make)
    if not a.source.startswith("gymnasium:"):
        opts += f" --layout {a.layout}"
    text = (f"# converted by: python -m bilevel.convert {a.source} --gamma {a.gamma}{opts}\n"
            + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))
    if a.out:
        try:
            with open(a.out, "w") as f:
                f.write(text)
        except OSError as e:
            print(f"error: {a.out}: cannot write ({e.strerror})", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
