from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq

ROOT = Path(__file__).resolve().parent.parent
MDPS = ROOT / "mdps"


@pytest.fixture(scope="session")
def hidden_goal():
    from bilevel.mdp import load_mdp
    return load_mdp(MDPS / "hidden_goal.yaml")


def floored_fit(mdp):
    """An independent P_eta (the model follower's best response), row by row: q = max(eta, p/lam)
    on K, lam the root of sum q = 1 (scipy's brentq, not the engine's closed form)."""
    Q = np.zeros_like(mdp.P)
    for s, a in np.ndindex(mdp.n_states, mdp.n_actions):
        p, k = mdp.P[s, a], mdp.K[s, a]
        lam = brentq(lambda x: np.maximum(mdp.floor, p[k] / x).sum() - 1.0, 1e-9, 1e9, xtol=1e-15)
        Q[s, a, k] = np.maximum(mdp.floor, p[k] / lam)
    return Q


# a 2-state MDP whose optimum gives up L's immediate reward to reach R
TWO_STATES = {
    "name": "two_states", "gamma": 0.9, "horizon": 60, "states": ["L", "R"],
    "actions": ["stay", "move"], "initial": "L",
    "transitions": {"L": {"stay": {"L": 1.0}, "move": {"R": 0.8, "L": 0.2}},
                    "R": {"stay": {"R": 0.9, "L": 0.1}, "move": {"L": 1.0}}},
    "rewards": {"L": {"stay": 0.5, "move": 0.0}, "R": {"stay": 1.0, "move": 0.0}},
}


def without_seconds(obj):
    """The document without wall-clock times (the only thing two runs may differ in)."""
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_seconds(v) for v in obj]
    return obj


def ipopt_best_lie(mdp, alpha):
    """(actions, F_eta, F_opt) for MAL + agent reward on the floored fit's greedy policy: the
    leader at the floored fit and at IPOPT's best lie with the policy fixed (started there), both
    recomputed from arrays; F_eta - F_opt is what that lie gains."""
    from bilevel.equilibria.certificates import leader_value, model_reward
    from bilevel.equilibria.exact.minlp import FORMULATION, FixedPolicyNLP, build_minlp
    from bilevel.tabular import kl_fit, value_iteration
    from bilevel.tabular.policies import deterministic_policy
    Peta = kl_fit(mdp.P, mdp.K, mdp.floor)
    _, pi_eta = value_iteration(Peta, model_reward(mdp, Peta), mdp.gamma, tol=1e-13)
    actions = np.argmax(pi_eta, axis=1)
    pi = deterministic_policy(actions, mdp.n_actions)
    Phat = FixedPolicyNLP(build_minlp(mdp, alpha)).solve(actions, Peta)
    return (actions, leader_value(FORMULATION, mdp, pi, Peta, alpha),
            leader_value(FORMULATION, mdp, pi, Phat, alpha))
