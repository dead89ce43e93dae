"""Quantities and output shared by the studies.

Conventions. J is the discounted return J(pi, M) = rho0 . V^pi (docs/DESIGN.md section 1). A model
Phat is evaluated with the engine's model reward rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s')
(TabularMDP.model_reward), so J(pi, Mhat) is what the MPEC leader sees. R_max is TabularMDP.r_max,
max |R(s,a,s')| over the model support K.

Output. Each study writes NAME.json (null where a number is NaN or infinite) and NAME.png under
its output directory. Per-MDP result files (the fixes study's cache) store each result with its
content key (bilevel.cache.cache_key): a result is reused only when the key is the same.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from bilevel.cache import ROOT
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import policy_return, value_iteration
from bilevel.tabular.fits import kl_fit

MDPS = ROOT / "mdps"


# --------------------------------------------------------------------------- returns

def optimal_return(P: np.ndarray, r: np.ndarray, rho0: np.ndarray, gamma: float):
    """(rho0 . V*, greedy pi*) by value iteration."""
    V, pi = value_iteration(P, r, gamma)
    return float(rho0 @ V), pi


def true_optimum(mdp: TabularMDP):
    """(J* = sup_pi J(pi, M), greedy pi*) in the true MDP."""
    return optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)


def model_optimum(mdp: TabularMDP, Phat: np.ndarray):
    """(sup_pi J(pi, Mhat) = rho0 . V*_{Phat, rhat}, its greedy policy) in the model Phat."""
    return optimal_return(Phat, mdp.model_reward(Phat), mdp.rho0, mdp.gamma)


def model_return(mdp: TabularMDP, Phat: np.ndarray, pi: np.ndarray) -> float:
    """J(pi, Mhat) = rho0 . V^pi_{Phat, rhat}."""
    return policy_return(Phat, mdp.model_reward(Phat), mdp.rho0, mdp.gamma, pi)


def pal_closed_form_gap(mdp: TabularMDP) -> float:
    """J* - J(pi, M) for PAL's closed-form equilibrium policy pi. The model follower's best
    response is the floored fit P_eta on every pair the policy visits and arbitrary elsewhere,
    and unvisited pairs do not enter J(pi, Phat), so PAL's leader problem is max_pi J(pi, P_eta):
    pi is the greedy policy of P_eta (value iteration). One policy of PAL's optimal set (ties
    among P_eta-optimal policies are not enumerated)."""
    J_star, _ = true_optimum(mdp)
    _, pi = model_optimum(mdp, kl_fit(mdp.P, mdp.K, mdp.floor))
    return J_star - policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, pi)


def quantiles(x, qs=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)) -> dict:
    """{"q<int(100 q)>": the q-quantile of x} for each q in qs (q50 is the median)."""
    x = np.asarray(x, dtype=float)
    return {f"q{int(q * 100)}": float(np.quantile(x, q)) for q in qs}


# --------------------------------------------------------------------------- output

def save_json(out: Path, name: str, payload) -> Path:
    """Write out/NAME.json (NaN and infinities as null)."""
    from bilevel.cli.common import json_dumps
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}.json"
    p.write_text(json_dumps(payload, indent=1, default=float))
    return p


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --------------------------------------------------------------------------- per-MDP result files

def load_results(path: Path, content_key: Callable, make: Callable) -> dict:
    """The results stored in `path` whose stored key equals content_key(k), keyed by
    k = (formulation, alpha, requested solver, time limit); make(**fields) builds a result.
    A gap stored as null (a failed solve's NaN) is NaN again."""
    stored: dict = {}
    if not path.exists():
        return stored
    for r in json.loads(path.read_text()).get("results", []):
        r = dict(r)
        if r.get("gap") is None:
            r["gap"] = float("nan")
        which, tl, key = r.pop("requested"), r.pop("time_limit"), r.pop("key", None)
        k = (r["formulation"], r["alpha"], which, tl)
        if key == content_key(k):         # same MDP content, settings and code: reuse
            stored[k] = make(**r)
    return stored


def store_results(path: Path, stored: dict, content_key: Callable, seed: int) -> None:
    """Write `stored` ({k: result dataclass}) to `path` with each result's content key
    (atomically: a stopped run leaves the previous file)."""
    from bilevel.cli.common import json_dumps
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json_dumps({"settings": {"seed": seed}, "results": [
        {**asdict(r), "requested": k[2], "time_limit": k[3], "key": content_key(k)}
        for k, r in stored.items()]}, default=float))
    tmp.replace(path)
