"""Deterministic follower policies: brute force (tiny MDPs) and a hiding descent that finds
low-return equilibria fast (incumbents for the MILP).

Both only *find* equilibria through `FollowerStructure.check`; proofs of optimality come from
the MILP's bound or from the return bounds over all policies. `witness` certifies the
equilibrium a deterministic policy ends at.
"""
from __future__ import annotations

import itertools

import numpy as np

from bilevel.equilibria.certificates import FOLLOWER_GAP_TOL, certify_point
from bilevel.equilibria.exact.structure import Check, FollowerStructure
from bilevel.tabular.evaluation import value_iteration
from bilevel.tabular.policies import deterministic_policy


# below this many deterministic policies, checking each is faster than the MILP (RESULTS.md)
BRUTE_FORCE_MAX_POLICIES = 2_000


def witness(mdp, formulation, alpha, actions, fs_eta, limit_model):
    """(eq, entry): the deterministic policy `actions` certified with its witness model at the
    file's floor (fs_eta's hostile check), entry {"witness": it holds}. Where the floor breaks a
    tie (that witness's follower gap > FOLLOWER_GAP_TOL) the end holds in the limit only: the
    limit witness `limit_model()` = (actions, model) is certified instead, and the entry keeps
    the floored gap. The certified policy takes the check's actions where `actions` does not
    reach (the witness model is built for them; J(pi, M) does not depend on them)."""
    chk = fs_eta.check(actions)
    pi = deterministic_policy(chk.actions, mdp.n_actions)
    eq = certify_point(mdp, formulation, alpha, pi, fs_eta.witness_model(chk.actions, chk.reached, chk.V))
    entry = {"witness": eq.follower_gap <= FOLLOWER_GAP_TOL}
    if not entry["witness"]:
        entry["floored_witness_follower_gap"] = eq.follower_gap
        limit_actions, model = limit_model()
        eq = certify_point(mdp, formulation, alpha, deterministic_policy(limit_actions, mdp.n_actions), model)
    return eq, entry


def true_return(fs: FollowerStructure, actions) -> float:
    """J(pi, M) of the deterministic policy (`TabularMDP.true_return`)."""
    m = fs.mdp
    return m.true_return(deterministic_policy(actions, m.n_actions))


def brute_force(fs: FollowerStructure) -> list[tuple[tuple, float, bool]]:
    """(actions on live states, J(pi, M), equilibrium?) for every deterministic policy."""
    m = fs.mdp
    live = np.flatnonzero(~m.terminal)
    out = []
    for acts in itertools.product(range(m.n_actions), repeat=live.size):
        a = np.zeros(m.n_states, dtype=int)
        a[live] = acts
        out.append((acts, true_return(fs, a), fs.check(a).equilibrium))
    return out


def return_extremes(fs: FollowerStructure) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(min_pi J, max_pi J, argmin actions, argmax actions) over all policies of M: bounds on
    every equilibrium's return."""
    m = fs.mdp
    Vmax, pmax = value_iteration(m.P, m.r, m.gamma, tol=1e-12)
    Vmin, pmin = value_iteration(m.P, -m.r, m.gamma, tol=1e-12)
    return (-float(m.rho0 @ Vmin), float(m.rho0 @ Vmax),
            np.argmax(pmin, axis=1), np.argmax(pmax, axis=1))


def hiding_descent(fs: FollowerStructure, actions, max_steps: int = 200) -> Check | None:
    """From `actions`, repeat: check; at every reached state with a violated deviation, switch to
    the deviation with the largest one-step value (a policy-improvement step in the hostile
    model). Returns the first passing check, or None after `max_steps` or on a cycle."""
    seen = set()
    actions = np.asarray(actions, dtype=int).copy()
    for _ in range(max_steps):
        chk = fs.check(actions)
        if chk.equilibrium:
            return chk
        key = actions.tobytes()
        if key in seen:
            return None
        seen.add(key)
        for s in {s for s, _ in chk.violations}:
            actions[s] = int(np.argmax(chk.Q[s]))
    return None


def low_return_equilibria(fs: FollowerStructure, seeds: int = 4, rng_seed: int = 0) -> list[Check]:
    """Passing checks found by `hiding_descent` from the minimum-return policy of M and from a few
    random perturbations of it, sorted by J(pi, M)."""
    m = fs.mdp
    _, _, amin, _ = return_extremes(fs)
    rng = np.random.default_rng(rng_seed)
    starts = [amin]
    for _ in range(seeds):
        a = amin.copy()
        flip = rng.random(m.n_states) < 0.2
        a[flip] = rng.integers(m.n_actions, size=int(flip.sum()))
        starts.append(a)
    found = {}
    for a in starts:
        chk = hiding_descent(fs, a)
        if chk is not None:
            found[chk.actions.tobytes()] = chk
    return sorted(found.values(), key=lambda c: true_return(fs, c.actions))
