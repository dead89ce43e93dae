"""The solution document: the MDP head, its optimum, and each formulation's interval as JSON."""
from __future__ import annotations

import json

from bilevel.cli.output import say
from bilevel.equilibria.routing import solve_formulation
from bilevel.game.formulations import DEFAULT_ALPHA, FORMULATIONS, resolve_alpha
from bilevel.mdp.graph import ergodicity_report, n_policies
from bilevel.mdp.io import mdp_from_arrays, mdp_to_arrays
from bilevel.mdp.model import TabularMDP
from bilevel.sweep import Task, run_sweep
from bilevel.tabular.evaluation import episode_reward, value_iteration


SWEEP_ALPHAS = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0)   # alpha sweeps: solve, report


def optimum(mdp: TabularMDP) -> dict:
    """J* = rho0.V* (value iteration), its greedy policy and exact episode reward; under
    `occupancy: average` J is that policy's T-step return (the agent's optimum, measured as the
    study measures it)."""
    V, pi = value_iteration(mdp.P, mdp.r, mdp.gamma)
    ep = episode_reward(mdp.P, mdp.r, mdp.rho0, pi, mdp.horizon) if mdp.horizon else None
    J = mdp.true_return(pi) if mdp.averaged else float(mdp.rho0 @ V)
    return {"J": J, "episode_reward": ep, "policy": pi.tolist(),
            "V": V.tolist()}


def mdp_head(mdp: TabularMDP) -> dict:
    """The `mdp` entry of the JSON document ("occupancy" only when it is average)."""
    return {"name": mdp.name, "states": mdp.n_states, "actions": mdp.n_actions,
            "gamma": mdp.gamma, "horizon": mdp.horizon,
            **({"occupancy": mdp.occupancy} if mdp.averaged else {}),
            **({"model_class": mdp.model_class.kind} if mdp.restricted else {})}


def summary(mdp: TabularMDP) -> dict:
    """What the file says, in numbers."""
    return mdp_head(mdp), ergodicity_report(mdp)


def read_solution(path) -> dict:
    """A saved `python -m bilevel.solve FILE --json` document; ValueError (one line) otherwise."""
    from pathlib import Path
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e.__class__.__name__})") from None
    if not isinstance(doc, dict) or "formulations" not in doc or "optimal" not in doc:
        raise ValueError(f"{path}: not a `bilevel.solve --json` output (needs formulations, optimal)")
    return doc


def solve_to_dict(mdp: TabularMDP, formulations=None, alpha=None, solver: str = "auto",
                  starts: int = 3, seed: int = 0, log=None, epsilon: float | None = None,
                  sweep: dict | None = None, sweep_alphas=None) -> dict:
    """The `--json` document: {"mdp", "optimal", "formulations": {F: interval.to_json()}}, and
    with `sweep_alphas` also "alpha_sweep": {F: [row per alpha]} for every formulation that takes
    an alpha (alpha_sweeps' rows). `alpha` is one number (used by both MAL fixes) or a mapping
    {formulation: alpha}. Every interval is an independent task of ONE sweep (bilevel.sweep):
    `sweep` holds run_sweep's options (scheduler, workers, store, ...; None: in this process).
    A formulation whose solve raises is recorded as failed with the exception as its reason;
    the others are still solved."""
    opt = optimum(mdp)
    out = {"mdp": mdp_head(mdp), "optimal": {"J": opt["J"], "episode_reward": opt["episode_reward"]},
           "formulations": {}}
    forms = list(formulations or FORMULATIONS)
    table = [(f, alpha.get(f) if isinstance(alpha, dict) else alpha) for f in forms]
    swept = [(f, a) for f in DEFAULT_ALPHA for a in (sweep_alphas or ())]
    split = _parallel(sweep)
    tasks = [solve_task_of(mdp, f, a, solver=solver, starts=starts, seed=seed, epsilon=epsilon,
                           **split) for f, a in table]
    tasks += [solve_task_of(mdp, f, a, solver=solver, starts=starts, seed=seed, **split)
              for f, a in swept]
    records = _run(tasks, log, sweep, f"solve {mdp.name}")
    for (f, a), rec in zip(table, records):
        out["formulations"][f] = _entry(rec, f, a, log)
    if swept:
        out["alpha_sweep"] = _sweep_rows(swept, records[len(table):], log)
    return out


def solve_task_of(mdp: TabularMDP, formulation: str, alpha, split_ends: bool = False,
                  **options) -> Task:
    """One formulation's interval as a sweep task (the MDP travels as its arrays): `solve_task`,
    or with `split_ends` parallel_ends.solve_split (on the MPEC route the two ends run as two
    more tasks; the same interval)."""
    kwargs = {"mdp": mdp_to_arrays(mdp), "formulation": formulation, "alpha": alpha, **options}
    label = formulation + ("" if alpha is None else f"-alpha{alpha:g}")
    spec = FORMULATIONS.get(formulation)
    # cost hint: a formulation without an exact route searches over the follower's policies
    cost = 1.0 if spec is None or spec.exact_route else 1.0 + n_policies(mdp)
    fn = ("bilevel.equilibria.parallel_ends:solve_split" if split_ends
          else "bilevel.equilibria.document:solve_task")
    return Task(fn, kwargs, label=label, cost=cost)


def solve_task(mdp: dict, formulation: str, alpha=None, **options) -> dict:
    """solve_formulation(...).to_json() of the MDP given as mdp_to_arrays; progress messages go
    to the `bilevel.solve` logger of the process that runs it."""
    return solve_formulation(mdp_from_arrays(mdp), formulation, alpha=alpha, log=say("solve"),
                             **options).to_json()


def _parallel(sweep: dict | None) -> dict:
    """{"split_ends": True} when the sweep runs on workers (then an MPEC route's two ends are
    tasks of their own), else {} (in this process they would only run one after the other)."""
    return {} if sweep is None or sweep.get("workers") == 0 else {"split_ends": True}


def _run(tasks: list[Task], log, sweep: dict | None, name: str) -> list[dict]:
    """The tasks' records: run_sweep with `sweep`'s options, or in this process."""
    options = {"workers": 0, "progress": False} if sweep is None else dict(sweep)
    return run_sweep(tasks, name=name, log=log or (lambda msg: None), **options)


def _entry(record: dict, formulation: str, alpha, log) -> dict:
    """The document's entry of one task record: the interval, or `failed` with the reason."""
    if record["status"] == "ok":
        return record["result"]
    why = record.get("reason", "failed")
    if log:
        log(f"{formulation}: failed: {why}")
    try:
        a = resolve_alpha(formulation, alpha)
    except (TypeError, ValueError):
        a = alpha
    return {"status": "failed", "alpha": a, "seconds": None, "reason": why}


def alpha_sweep(mdp: TabularMDP, formulation: str, alphas=SWEEP_ALPHAS, solver: str = "auto",
                starts: int = 3, seed: int = 0, log=None, sweep: dict | None = None) -> list[dict]:
    """The exact equilibrium interval of a MAL fix for each alpha (alpha_sweeps, one formulation)."""
    return alpha_sweeps(mdp, [formulation], alphas, solver, starts, seed, log, sweep)[formulation]


def alpha_sweeps(mdp: TabularMDP, formulations, alphas=SWEEP_ALPHAS, solver: str = "auto",
                 starts: int = 3, seed: int = 0, log=None, sweep: dict | None = None) -> dict:
    """{F: [row per alpha]}: the exact equilibrium interval of each formulation at each alpha, all
    (F, alpha) pairs as independent tasks of one sweep (`sweep`: run_sweep's options)."""
    pairs = [(f, a) for f in formulations for a in alphas]
    tasks = [solve_task_of(mdp, f, a, solver=solver, starts=starts, seed=seed, **_parallel(sweep))
             for f, a in pairs]
    return _sweep_rows(pairs, _run(tasks, log, sweep, f"alpha sweep {mdp.name}"), log)


def _sweep_rows(pairs, records, log) -> dict:
    """{F: [{"alpha", "status", "reason", "certificate", "J", ...}]} of (F, alpha) task records."""
    out = {}
    for (f, a), rec in zip(pairs, records):
        d = _entry(rec, f, a, log)
        out.setdefault(f, []).append({"alpha": a, **{k: d.get(k) for k in (
            "status", "reason", "certificate", "J", "episode_reward", "leader_objective",
            "seconds")}})
    return out
