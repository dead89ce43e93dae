"""`python -m bilevel.solve FILE.yaml`: the MDP summary, its optimum, and the exact
Stackelberg equilibria of PAL, MAL, MAL + agent reward, MAL + random noise and MAL + true reward.

Exit status: 0 solved, 1 some formulation (or alpha-sweep point) failed: it is recorded as
failed with its reason, the others are still solved and the table / JSON still written; 2 bad
input (one line on stderr). The JSON holds null where a number is NaN or infinite.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from bilevel.cache import TASK_CACHE
from bilevel.sweep import add_sweep_args, sweep_options
from bilevel.cli.output import add_verbosity, logger, say, setup_logging
from bilevel.cli.common import _parse_alpha, add_model_class_arg, add_occupancy_arg, apply_model_class, json_dumps
from bilevel.equilibria.document import SWEEP_ALPHAS, mdp_head, optimum, solve_to_dict, summary
from bilevel.game.formulations import DEFAULT_ALPHA, FORMULATIONS
from bilevel.game.formulations import formulation as game_formulation
from bilevel.mdp.graph import model_size
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import MDPError, TabularMDP


NAMES = {name: f.label for name, f in FORMULATIONS.items()}   # table labels
NAMES_SHOWN = 8                   # a list of state names in the summary: at most this many
LARGE_MODEL_ENTRIES = 1_000_000   # past this many model entries |K| ...
LARGE_PAIRS = 20_000              # ... or state-action pairs S*A, say so before solving


def name_list(names, limit: int = NAMES_SHOWN) -> str:
    """`a, b, c`; past `limit` names the first `limit` and `... (N more)`."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"


def size_note(mdp: TabularMDP, formulations=FORMULATIONS, solver: str = "auto",
              epsilon: float | None = None) -> str | None:
    """One line when the model or the MPEC will be large (more than LARGE_MODEL_ENTRIES model
    entries or LARGE_PAIRS state-action pairs): the estimated size and the route each
    formulation takes with `solver`; None for a small MDP."""
    size = model_size(mdp)
    if size["model_entries"] <= LARGE_MODEL_ENTRIES and size["pairs"] <= LARGE_PAIRS:
        return None
    routes = ", ".join(f"{f} {planned_route(mdp, f, solver, epsilon)}" for f in formulations)
    visits = (f"; occupancy average: an MPEC route adds {(mdp.horizon - 1) * mdp.n_states:,} "
              "state-visit variables with bilinear flow rows" if mdp.averaged else "")
    return (f"note: large input: {size['model_entries']:,} model entries (support K; S*A*S = "
            f"{size['dense_entries']:,}), {size['pairs']:,} state-action pairs "
            f"({size['states']:,} states x {size['actions']:,} actions); --solver {solver}: {routes}"
            + visits)


def planned_route(mdp: TabularMDP, formulation: str, solver: str = "auto",
                  epsilon: float | None = None) -> str:
    """The route bilevel.equilibria.solve_formulation takes for `formulation` with `solver`
    (a description; nothing is solved)."""
    from bilevel.equilibria.routing import SOLVER_ALIASES, choose_solver, refines_on_auto, takes_minlp
    from bilevel.equilibria.exact import has_exact_route
    s = SOLVER_ALIASES.get(solver, solver)
    form = game_formulation(formulation)
    if epsilon is not None:
        if form.epsilon_closed_form:
            return "closed form (epsilon interval)"
        if s in ("auto", "exact", "enumerate"):
            s = "auto"
    elif s in ("auto", "exact", "enumerate"):
        if has_exact_route(formulation, mdp) and (s != "enumerate" or not form.enumerable):
            return "exact route"
        if takes_minlp(mdp, s, form):
            return "binary-follower MINLP with SCIP"
        if s != "enumerate":
            s = "auto"
    s = {"mpec-scip": "scip", "mpec-ipopt": "ipopt"}.get(s, s)
    which = choose_solver(mdp, s, formulation)
    if refines_on_auto(mdp, form, s, which, epsilon):
        return "MPEC with IPOPT, then the binary-follower MINLP with SCIP from its ends"
    return {"scip": "MPEC with SCIP", "ipopt": "MPEC with IPOPT (local)",
            "enumerate": "follower-policy enumeration"}.get(which, which)


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


def print_summary(mdp: TabularMDP, opt: dict, out=None) -> None:
    out = sys.stdout if out is None else out
    head, erg = summary(mdp)
    term = [s for s, t in zip(mdp.states, mdp.terminal) if t]
    start = name_list(f"{s}={p:g}" for s, p in zip(mdp.states, mdp.rho0) if p > 0)
    print(f"MDP {mdp.name} ({mdp.source}): {mdp.n_states} states, {mdp.n_actions} actions, "
          f"gamma={mdp.gamma:g}, horizon={mdp.horizon if mdp.horizon else 'none'}"
          + (", occupancy: average (loss weights of T-step episodes; J is the T-step return)"
             if mdp.averaged else ""), file=out)
    print(f"  start: {start}; terminal: {name_list(term) or 'none'}; model support: "
          f"{mdp.support} ({int(mdp.K.sum())} of {mdp.K.size} entries), floor eta={mdp.floor:g}",
          file=out)
    if mdp.restricted:
        print(f"  model class: {mdp.model_class.describe()}: {len(mdp.model_blocks.blocks)} blocks of "
              f"weights for {int((mdp.model_blocks.block_of >= 0).sum())} state-action pairs "
              f"(no exact route: SCIP's MPEC, IPOPT past it)", file=out)
    closed = erg["closed_classes"]
    shown = (name_list((f"[{name_list(c)}]" for c in closed)) if len(closed) < 6
             else f"{len(closed)} classes")
    print(f"  state graph: {len(erg['classes'])} strongly connected classes, closed: {shown}"
          f"{' (ergodic)' if erg['strongly_connected'] else ''}", file=out)
    ep = opt["episode_reward"]
    what = "T-step return of the discounted optimum" if mdp.averaged else "discounted return"
    print(f"Optimum (value iteration): J* = {opt['J']:.6g} ({what})"
          + (f", episode reward = {ep:.6g} (undiscounted, {mdp.horizon} steps)" if ep is not None else ""),
          file=out)
    if mdp.n_states <= 12:
        print(f"  optimal policy: {format_policy(mdp, opt['policy'])}", file=out)


def _interval(d, key, fmt="{:.4g}"):
    iv = d.get(key)
    if iv is None:
        return "n/a"
    clean = lambda x: 0.0 if abs(x) < 1e-12 else x     # solver round-off around an exact 0
    lo, hi = fmt.format(clean(iv["min"])), fmt.format(clean(iv["max"]))
    return f"[{lo}, {hi}]"


def print_table(mdp: TabularMDP, doc: dict, out=None) -> None:
    """One row per formulation: J interval, episode-reward interval, leader objective,
    certificate, seconds."""
    out = sys.stdout if out is None else out
    ep_head = f"episode reward ({mdp.horizon} steps)" if mdp.horizon else "episode reward"
    eps = next((d.get("epsilon") for d in doc["formulations"].values() if d.get("epsilon") is not None), None)
    which = (f"epsilon-leader-optimal equilibria, leader <= L* + {eps:g} at the file's floor"
             if eps is not None else
             f"leader-optimal equilibria of the {mdp.model_class.kind} model class, at the file's "
             f"floor eta={mdp.floor:g} and a band of 1e-6 relative" if mdp.restricted else
             "leader-optimal equilibria, in the limit of a vanishing model floor and band,\n"
             "except rows noted 'at the file's floor'")
    print(f"\nExact Stackelberg equilibria (strong/optimistic: the leader picks among the "
          f"follower's best responses;\nintervals = min and max true return over {which})", file=out)
    j_head = "J(pi, M) T-step" if mdp.averaged else "J(pi, M) discounted"
    head = f"{'formulation':<24} {'alpha':>6}  {j_head:<22} {ep_head:<26} " \
           f"{'leader obj.':>12}  {'certificate':<18} {'seconds':>7}"
    print(head, file=out)
    print("-" * len(head), file=out)
    opt_J = doc["optimal"]["J"]
    for f, d in doc["formulations"].items():
        a = "" if d.get("alpha") is None else f"{d['alpha']:g}"
        if d["status"] != "solved":
            print(f"{NAMES.get(f, f):<24} {a:>6}  FAILED: {d['reason']}", file=out)
            continue
        gap = max((g for g in (d.get("proved_gap") or {}).values() if g is not None), default=0.0)
        if d.get("solver") == "enumerate":
            cert = f"{d['certificate']} ({d['starts']} policies)"
        elif d.get("solver") == "exact":
            cert = d["certificate"] + (" (exact)" if gap == 0 else f" (gap {gap:.2g})")
        elif d.get("solver") == "exact-minlp":   # SCIP's proved gaps on J at the two ends
            gaps = [d["proved_gap"].get(k) for k in ("min", "max")]     # None: no bound (JSON)
            gap = max(math.inf if g is None else g for g in gaps)
            cert = d["certificate"] + (f" (gap {gap:.2g})" if gap > 1e-9 * max(1.0, abs(opt_J)) else "")
        elif d["certificate"] == "global":       # SCIP: its proved gap on J, when it left one
            cert = "global" + (f" (gap {gap:.2g})" if gap > 1e-9 * max(1.0, abs(opt_J)) else "")
        else:
            cert = d["certificate"] + (f" ({d['starts']} starts)" if d["certificate"] == "local" else "")
        print(f"{NAMES.get(f, f):<24} {a:>6}  {_interval(d, 'J'):<22} "
              f"{_interval(d, 'episode_reward'):<26} {d['leader_objective']:>12.6g}  "
              f"{cert:<18} {d['seconds']:>7.1f}", file=out)
        for end, f_ in (d.get("at_floor") or {}).items():
            if isinstance(f_, dict) and not f_.get("witness", True):
                at = "" if f_.get("J") is None else f"; at the floor: J = {f_['J']:.6g}"
                print(f"{'':<24} {'':>6}  note: the {end} end holds in the limit eta -> 0; at "
                      f"eta={d['at_floor']['eta']:g} its policy is not a best response (gap "
                      f"{f_['floored_witness_follower_gap']:.2g}){at}", file=out)
        if eps is None and not mdp.restricted and not d.get("limit"):
            print(f"{'':<24} {'':>6}  note: at the file's floor eta={mdp.floor:g} and band leader "
                  f"<= L* + {d['tolerance']:.2g} (no limit route for this formulation and solver)",
                  file=out)
        for end, why in d.get("ends_at_leader_optimum", {}).items():
            print(f"{'':<24} {'':>6}  note: the {end} end is the leader optimum (its own search "
                  f"failed: {why})", file=out)
    opt = doc["optimal"]
    ep = "" if opt["episode_reward"] is None else f", episode reward {opt['episode_reward']:.4g}"
    print(f"{'unconstrained optimum':<24} {'':>6}  J* = {opt['J']:.6g}{ep}", file=out)


def print_sweep(formulation: str, rows: list[dict], out=None) -> None:
    out = sys.stdout if out is None else out
    print(f"\nalpha sweep: {NAMES.get(formulation, formulation)} (exact intervals)", file=out)
    for r in rows:
        if r["status"] != "solved":
            print(f"  alpha={r['alpha']:<7g} FAILED: {r['reason']}", file=out)
        else:
            print(f"  alpha={r['alpha']:<7g} J {_interval(r, 'J'):<22} episode reward "
                  f"{_interval(r, 'episode_reward'):<22} {r['certificate']}", file=out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bilevel.solve",
                                description="Exact Stackelberg equilibria of model-based RL on a small MDP.")
    p.add_argument("file", help="MDP YAML file (see README: file format)")
    p.add_argument("--formulations", default=",".join(FORMULATIONS),
                   help=f"comma-separated subset of {','.join(FORMULATIONS)}")
    p.add_argument("--alpha", default=None,
                   help="alpha of the MAL fixes: one number, or F=A[,F=A] "
                        f"(defaults: {', '.join(f'{k}={v}' for k, v in DEFAULT_ALPHA.items())})")
    p.add_argument("--alpha-sweep", action="store_true",
                   help=f"also print the exact interval of both MAL fixes for alpha in {list(SWEEP_ALPHAS)}")
    p.add_argument("--solver", choices=("auto", "exact", "mpec-scip", "mpec-ipopt", "enumerate",
                                        "scip", "ipopt"), default="auto",
                   help="auto/exact: the exact routes from the followers' best-response structure "
                        "(PAL: closed form; MAL, MAL + random noise: deterministic follower "
                        "policies, MILP; global); MAL + agent reward: with exact, SCIP on a "
                        "binary-follower MINLP (global where proved: ~12 states when stochastic, "
                        "more when deterministic), with auto the MPEC route "
                        "(follower-policy enumeration when at most 16 policies, else IPOPT, "
                        "local; up to 36 state-action pairs IPOPT's ends then start the MINLP, "
                        "6.5 s for both); mpec-scip / mpec-ipopt (alias scip / ipopt): "
                        "the single-level MPEC with that solver; enumerate: SCIP per "
                        "deterministic follower policy (MAL family, tiny MDPs)")
    p.add_argument("--epsilon", type=float, default=None, metavar="E",
                   help="the interval over E-leader-optimal equilibria (leader <= L* + E, at the "
                        "file's floor: what a trainer with leader error E can end at) instead of "
                        "the exact limit interval; PAL in closed form, the MAL family on the "
                        "MPEC route")
    add_occupancy_arg(p)
    add_model_class_arg(p)
    p.add_argument("--starts", type=int, default=3, help="IPOPT cold starts: the model's initial point and N-1 random follower-optimal (policy, model) pairs, besides the structured ones (the true optimum with the fitted model, the uniform policy, the fitted model's optimum)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--summary-only", action="store_true", help="only the MDP summary and optimum")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--fresh", action="store_true",
                   help="--alpha-sweep: solve every point again instead of reusing cached results")
    add_sweep_args(p)
    add_verbosity(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mdp = load_mdp(args.file)
        if args.occupancy is not None:
            mdp = mdp.with_(occupancy=args.occupancy)
        mdp = apply_model_class(mdp, args.model_class)
    except MDPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    forms = [f.strip() for f in args.formulations.split(",") if f.strip()]
    bad = [f for f in forms if f not in FORMULATIONS]
    if bad:
        print(f"error: --formulations: unknown {', '.join(bad)} (choose from {', '.join(FORMULATIONS)})",
              file=sys.stderr)
        return 2
    if args.starts < 0:
        print(f"error: --starts: must be >= 0, got {args.starts}", file=sys.stderr)
        return 2
    try:
        alpha = _parse_alpha(args.alpha)
    except ValueError as e:
        print(f"error: --alpha: {e}", file=sys.stderr)
        return 2
    setup_logging(args)
    log = say("solve")
    opt = optimum(mdp)
    if args.summary_only:
        doc = {"mdp": mdp_head(mdp), "optimal": {"J": opt["J"], "episode_reward": opt["episode_reward"]}}
        print(json_dumps(doc) if args.json else "", end="\n" if args.json else "")
        if not args.json:
            print_summary(mdp, opt)
        return 0
    if not args.json:
        print_summary(mdp, opt)
    if args.epsilon is not None and not (args.epsilon >= 0 and np.isfinite(args.epsilon)):
        print(f"error: --epsilon: must be a finite number >= 0, got {args.epsilon}", file=sys.stderr)
        return 2
    note = size_note(mdp, forms, args.solver, args.epsilon)
    if note:
        logger("solve").warning(note)
    where = sweep_options(args)
    if args.alpha_sweep:           # a sweep: on a local cluster by default, results cached
        where.update(store=TASK_CACHE, fresh=args.fresh)
    elif where["workers"] is None and where["scheduler"] is None:
        where["workers"] = 0       # one table: four tasks, in this process unless told otherwise
    doc = solve_to_dict(mdp, forms, alpha, args.solver, args.starts, args.seed, log, args.epsilon,
                        sweep=where, sweep_alphas=SWEEP_ALPHAS if args.alpha_sweep else None)
    sweeps = doc.pop("alpha_sweep", {})
    if args.json:
        if sweeps:
            doc["alpha_sweep"] = sweeps
        print(json_dumps(doc))
    else:
        print_table(mdp, doc)
        for f, rows in sweeps.items():
            print_sweep(f, rows)
    failed = [f for f, d in doc["formulations"].items() if d["status"] != "solved"]
    failed += [f"{f} (alpha={r['alpha']:g})" for f, rows in sweeps.items() for r in rows
               if r["status"] != "solved"]
    if failed:
        print(f"error: {', '.join(failed)} failed: no equilibrium is reported for "
              f"{'it' if len(failed) == 1 else 'them'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
