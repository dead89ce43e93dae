"""Seeded random MDPs in the Garnet style (Archibald et al. 1995).

`garnet(S, A, b)`: each (s, a) moves to `b` distinct next states drawn uniformly, with
probabilities from a uniform random partition of [0, 1]; rewards R(s,a,s') ~ U[0, 1].
"""
from __future__ import annotations

import numpy as np

from bilevel.mdp.model import DEFAULT_FLOOR, TabularMDP
from bilevel.mdp.graph import support_mask


def garnet(n_states: int, n_actions: int, branching: int, seed: int = 0, gamma: float = 0.9,
           horizon: int | None = None, support: str = "all", initial: str = "uniform",
           name: str | None = None) -> TabularMDP:
    """Random MDP; `initial` is `uniform` (rho0 = 1/S) or `first` (start in state 0)."""
    if not (1 <= branching <= n_states) or n_states < 1 or n_actions < 1:
        raise ValueError("need 1 <= branching <= states, states >= 1, actions >= 1")
    rng = np.random.default_rng(seed)
    S, A = n_states, n_actions
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            nxt = rng.choice(S, size=branching, replace=False)
            cuts = np.sort(rng.uniform(size=branching - 1))
            p = np.diff(np.concatenate([[0.0], cuts, [1.0]]))
            p = np.maximum(p, 1e-3)
            P[s, a, nxt] = p / p.sum()
    R = np.round(rng.uniform(size=(S, A, S)), 6)
    rho0 = np.full(S, 1.0 / S) if initial == "uniform" else np.eye(S)[0]
    terminal = np.zeros(S, dtype=bool)
    return TabularMDP(name=name or f"garnet_S{S}_A{A}_b{branching}_seed{seed}",
                      states=tuple(f"s{i}" for i in range(S)),
                      actions=tuple(f"a{j}" for j in range(A)), P=P, R=R, rho0=rho0,
                      gamma=float(gamma), terminal=terminal,
                      K=support_mask(P, terminal, support), support=support,
                      horizon=horizon, floor=DEFAULT_FLOOR, source="<garnet>")
