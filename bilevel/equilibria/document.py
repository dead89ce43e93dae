"""The solution document: the MDP head, its optimum, and each formulation's interval as JSON."""
from __future__ import annotations

import json
import time

from bilevel.cli.common import failure_reason
from bilevel.equilibria.routing import solve_formulation
from bilevel.game.formulations import FORMULATIONS, resolve_alpha
from bilevel.mdp.graph import ergodicity_report
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import episode_reward, value_iteration


SWEEP_ALPHAS = (0.5, 0.9, 0.99, 0.999, 0.9999)


def optimum(mdp: TabularMDP) -> dict:
    """J* = rho0.V* (value iteration), its greedy policy and exact episode reward."""
    V, pi = value_iteration(mdp.P, mdp.r, mdp.gamma)
    ep = episode_reward(mdp.P, mdp.r, mdp.rho0, pi, mdp.horizon) if mdp.horizon else None
    return {"J": float(mdp.rho0 @ V), "episode_reward": ep, "policy": pi.tolist(),
            "V": V.tolist()}


def mdp_head(mdp: TabularMDP) -> dict:
    """The `mdp` entry of the JSON document."""
    return {"name": mdp.name, "states": mdp.n_states, "actions": mdp.n_actions,
            "gamma": mdp.gamma, "horizon": mdp.horizon}


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
                  starts: int = 3, seed: int = 0, log=None, epsilon: float | None = None) -> dict:
    """The `--json` document: {"mdp", "optimal", "formulations": {F: interval.to_json()}}.
    `alpha` is one number (used by both MAL fixes) or a mapping {formulation: alpha}.
    A formulation whose solve raises is recorded as failed with the exception as its reason;
    the others are still solved."""
    opt = optimum(mdp)
    out = {"mdp": mdp_head(mdp), "optimal": {"J": opt["J"], "episode_reward": opt["episode_reward"]},
           "formulations": {}}
    for f in formulations or FORMULATIONS:
        a = alpha.get(f) if isinstance(alpha, dict) else alpha
        out["formulations"][f] = _solve_one(mdp, f, a, log, solver=solver, starts=starts,
                                            seed=seed, epsilon=epsilon)
    return out


def _solve_one(mdp: TabularMDP, formulation: str, alpha, log, **kw) -> dict:
    """solve_formulation(...).to_json(), or a `failed` entry when it raises."""
    t0 = time.perf_counter()
    try:
        return solve_formulation(mdp, formulation, alpha=alpha, log=log, **kw).to_json()
    except Exception as e:     # one formulation's crash must not lose the others
        why = failure_reason(e)
        if log:
            log(f"{formulation}: failed: {why}")
        try:
            a = resolve_alpha(formulation, alpha)
        except (TypeError, ValueError):
            a = alpha
        return {"status": "failed", "alpha": a, "seconds": round(time.perf_counter() - t0, 3),
                "reason": why}


def alpha_sweep(mdp: TabularMDP, formulation: str, alphas=SWEEP_ALPHAS, solver: str = "auto",
                starts: int = 3, seed: int = 0, log=None) -> list[dict]:
    """The exact equilibrium interval of a MAL fix for each alpha."""
    rows = []
    for a in alphas:
        d = _solve_one(mdp, formulation, a, log, solver=solver, starts=starts, seed=seed)
        rows.append({"alpha": a, **{k: d.get(k) for k in ("status", "reason", "certificate", "J",
                                                          "episode_reward", "leader_objective",
                                                          "seconds")}})
    return rows
