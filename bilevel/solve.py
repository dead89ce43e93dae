"""`python -m bilevel.solve FILE.yaml`: the MDP summary, its optimum, and the exact
Stackelberg equilibria of PAL, MAL, MAL + agent reward and MAL + random noise.

Exit status: 0 solved, 1 some formulation failed, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bilevel.mdp import MDPError, TabularMDP, ergodicity_report, load_mdp
from bilevel.occupancy import episode_reward, value_iteration


def optimum(mdp: TabularMDP) -> dict:
    """J* = rho0.V* (value iteration), its greedy policy and exact episode reward."""
    V, pi = value_iteration(mdp.P, mdp.r, mdp.gamma)
    ep = episode_reward(mdp.P, mdp.r, mdp.rho0, pi, mdp.horizon) if mdp.horizon else None
    return {"J": float(mdp.rho0 @ V), "episode_reward": ep, "policy": pi.tolist(),
            "V": V.tolist()}


def summary(mdp: TabularMDP) -> dict:
    """What the file says, in numbers."""
    erg = ergodicity_report(mdp)
    return {"name": mdp.name, "states": mdp.n_states, "actions": mdp.n_actions,
            "gamma": mdp.gamma, "horizon": mdp.horizon}, erg


def format_policy(mdp: TabularMDP, pi) -> str:
    pi = np.asarray(pi)
    parts = []
    for i, s in enumerate(mdp.states):
        if mdp.terminal[i]:
            continue
        row = pi[i]
        if np.isclose(row.max(), 1.0):
            parts.append(f"{s}:{mdp.actions[int(np.argmax(row))]}")
        else:
            parts.append(s + ":(" + ",".join(f"{mdp.actions[j]}={p:.2f}" for j, p in enumerate(row) if p > 1e-6) + ")")
    return " ".join(parts)


def print_summary(mdp: TabularMDP, opt: dict, out=sys.stdout) -> None:
    head, erg = summary(mdp)
    term = [s for s, t in zip(mdp.states, mdp.terminal) if t]
    start = ", ".join(f"{s}={p:g}" for s, p in zip(mdp.states, mdp.rho0) if p > 0)
    print(f"MDP {mdp.name} ({mdp.source}): {mdp.n_states} states, {mdp.n_actions} actions, "
          f"gamma={mdp.gamma:g}, horizon={mdp.horizon if mdp.horizon else 'none'}", file=out)
    print(f"  start: {start}; terminal: {', '.join(term) or 'none'}; model support: "
          f"{mdp.support} ({int(mdp.K.sum())} of {mdp.K.size} entries), floor eta={mdp.floor:g}",
          file=out)
    print(f"  state graph: {len(erg['classes'])} strongly connected classes, closed: "
          f"{erg['closed_classes'] if len(erg['closed_classes']) < 6 else len(erg['closed_classes'])}"
          f"{' (ergodic)' if erg['strongly_connected'] else ''}", file=out)
    ep = opt["episode_reward"]
    print(f"Optimum (value iteration): J* = {opt['J']:.6g} (discounted return)"
          + (f", episode reward = {ep:.6g} (undiscounted, {mdp.horizon} steps)" if ep is not None else ""),
          file=out)
    if mdp.n_states <= 12:
        print(f"  optimal policy: {format_policy(mdp, opt['policy'])}", file=out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bilevel.solve",
                                description="Exact Stackelberg equilibria of model-based RL on a small MDP.")
    p.add_argument("file", help="MDP YAML file (see README: file format)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mdp = load_mdp(args.file)
    except MDPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opt = optimum(mdp)
    if args.json:
        head, _ = summary(mdp)
        print(json.dumps({"mdp": head, "optimal": {"J": opt["J"], "episode_reward": opt["episode_reward"]}}))
    else:
        print_summary(mdp, opt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
