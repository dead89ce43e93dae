"""Policies as (S, A) row-stochastic arrays: uniform, deterministic, greedy, from an occupancy."""
from __future__ import annotations

import numpy as np


def uniform_policy(n_states: int, n_actions: int) -> np.ndarray:
    """pi(a|s) = 1/A."""
    return np.full((n_states, n_actions), 1.0 / n_actions)


def deterministic_policy(actions, n_actions: int) -> np.ndarray:
    """One-hot policy from an action index per state."""
    actions = np.asarray(actions, dtype=int)
    return np.eye(n_actions)[actions]


def greedy_policy(Q: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Deterministic greedy policy: the first action within `tol` of max_a Q(s,a)."""
    best = Q.max(axis=1, keepdims=True)
    first = np.argmax(Q >= best - tol * np.maximum(1.0, np.abs(best)), axis=1)
    return deterministic_policy(first, Q.shape[1])


def policy_from_occupancy(mu: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """pi(a|s) = mu(s,a) / sum_b mu(s,b); rows with no mass take `fallback` (default uniform)."""
    S, A = mu.shape
    mass = mu.sum(axis=1, keepdims=True)
    fb = uniform_policy(S, A) if fallback is None else fallback
    with np.errstate(invalid="ignore", divide="ignore"):
        pi = np.where(mass > 0, mu / np.where(mass > 0, mass, 1.0), fb)
    return pi
