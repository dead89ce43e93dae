"""Quantities and output shared by the studies.

Conventions. J is the discounted return J(pi, M) = rho0 . V^pi (docs/DESIGN.md section 1). A model
Phat is evaluated with the engine's model reward rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s')
(TabularMDP.model_reward), so J(pi, Mhat) is what the MPEC leader sees. R_max is TabularMDP.r_max,
max |R(s,a,s')| over the model support K.

Output. Each study writes NAME.json (null where a number is NaN or infinite) and NAME.png under
its output directory, and the record of each of its tasks under OUT/tasks
(bilevel.studies.tasks).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bilevel.cache import ROOT
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import policy_return, value_iteration
from bilevel.tabular.fits import kl_fit, kl_rows

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


def worst_case_loss(mdp: TabularMDP, Q: np.ndarray) -> float:
    """eps_M = sup_pi l(Q, mu_M^pi) = (1-gamma) rho0 . V*_c with reward c(s,a) = KL(P||Q)
    under the true P (value iteration; exact up to its tolerance)."""
    c = np.where(mdp.terminal[:, None], 0.0, kl_rows(mdp.P, Q))
    J, _ = optimal_return(mdp.P, c, mdp.rho0, mdp.gamma)
    return (1.0 - mdp.gamma) * J


def pal_bound(eps_pi: float, eps_M: float, gamma: float, r_max: float) -> float:
    """eps_pi + 4 gamma sqrt(eps_M) R_max / (1-gamma)^2 (the reference study's PAL theorem)."""
    return eps_pi + 4.0 * gamma * math.sqrt(max(eps_M, 0.0)) * r_max / (1.0 - gamma) ** 2


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
