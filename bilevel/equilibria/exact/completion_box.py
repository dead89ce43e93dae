"""Values over the completions of a partial policy, and the variance they allow
(docs/DESIGN.md 5.6, "Rows for a set of policies").

A node of the policy tree allows a set of actions A(s) at each state. Every deterministic
policy pi with pi(s) in A(s) has values V^pi in the box [lo, hi]:

    lo = min-VI:  lo(s) = min_{a in A(s)} r(s,a) + g P(.|s,a) . lo,   hi the same with max

(terminal states 0). The Bellman operators are monotone, so iterates started from a valid
outer box stay valid; `completion_box` may stop early. The variance Var_{P(.|s,a)}(R(s,a,.) +
g V) is a convex quadratic in V, so its max over the box is at a vertex of the box restricted
to supp P(.|s,a) (`variance_bounds`; Popoviciu's (max - min)^2 / 4 past MAX_VERTEX_SUPPORT
successors).
"""
from __future__ import annotations

import itertools

import numpy as np

from bilevel.mdp.model import TabularMDP

MAX_VERTEX_SUPPORT = 10      # successors up to which the vertices are enumerated
BOX_TOL = 1e-11


def outer_box(mdp: TabularMDP) -> tuple[np.ndarray, np.ndarray]:
    """A box holding the values of every policy: [min(0, r_min) / (1 - g), max(0, r_max) / (1 - g)]."""
    g, S = mdp.gamma, mdp.n_states
    return (np.full(S, min(0.0, float(mdp.r.min())) / (1 - g) - 1.0),
            np.full(S, max(0.0, float(mdp.r.max())) / (1 - g) + 1.0))


def completion_box(mdp: TabularMDP, allowed: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] over the policies choosing `allowed` ((S, A) bool) actions, tightened from a valid
    box `lo`, `hi` (an ancestor's box, or `outer_box`) by the min- and max-VI of the module
    docstring; every iterate is valid."""
    g, r, P, term = mdp.gamma, mdp.r, mdp.P, mdp.terminal
    for _ in range(max_iter):
        new_lo = np.where(allowed, r + g * P @ lo, np.inf).min(axis=1)
        new_hi = np.where(allowed, r + g * P @ hi, -np.inf).max(axis=1)
        new_lo[term] = new_hi[term] = 0.0
        new_lo, new_hi = np.maximum(new_lo, lo), np.minimum(new_hi, hi)
        step = max(float(np.abs(new_lo - lo).max()), float(np.abs(new_hi - hi).max()))
        lo, hi = new_lo, new_hi
        if step < BOX_TOL:
            break
    return lo, hi


def variance_bounds(mdp: TabularMDP, allowed: np.ndarray, lo: np.ndarray,
                    hi: np.ndarray) -> np.ndarray:
    """w(s,a) >= Var_{P(.|s,a)}(R(s,a,.) + g V) for every V in [lo, hi], on the allowed live
    pairs (0 elsewhere)."""
    g = mdp.gamma
    S, A = mdp.n_states, mdp.n_actions
    w = np.zeros((S, A))
    for s, a in zip(*np.nonzero(allowed & ~mdp.terminal[:, None])):
        sup = np.flatnonzero(mdp.P[s, a] > 0)
        p, R = mdp.P[s, a, sup], mdp.R[s, a, sup]
        if len(sup) > MAX_VERTEX_SUPPORT:
            w[s, a] = (float(np.max(R + g * hi[sup]) - np.min(R + g * lo[sup]))) ** 2 / 4
            continue
        corners = np.array(list(itertools.product((0, 1), repeat=len(sup))), dtype=bool)
        f = R[None, :] + g * np.where(corners, hi[sup][None, :], lo[sup][None, :])
        mean = f @ p
        w[s, a] = float(np.max(((f - mean[:, None]) ** 2) @ p))
    return w
