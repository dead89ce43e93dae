"""Exact routes under `occupancy: average` (docs/DESIGN.md section 5.9).

The data are T-step episodes: the loss weights are the averaged occupancy mu_T, and the
reported return is the T-step return J_T(pi) = E[sum_{t<T} r(s_t, a_t)]. The agent still
optimizes its discounted value (the follower's best response, PAL's leader objective).

A pair has weight exactly when the policy reaches it within T - 1 steps. When T is at least the
number of live states, that is every pair the policy ever reaches (a breadth-first reach ends
within S - 1 steps), so the hiding structure of section 5.2 holds unchanged: Z_T(pi) = Z(pi)
(`FollowerStructure.reached`). A shorter horizon has no exact route here: a fitted pair at the
last step leads to states outside Z_T whose free model the leader may make optimistic (raising
the policy's own value) as well as hostile (lowering its deviations'), a trade-off the hiding
check does not make. What does not carry over is the return: J_T of a stationary policy is a
polynomial in pi, not linear in an occupancy, so

  * the ends over deterministic follower policies come from checking every one of them (at most
    BRUTE_FORCE_MAX_POLICIES; past that there is no exact route and `auto` takes the MPEC);
  * a mixed equilibrium mixes, at each state it reaches, actions that deterministic equilibria
    play there (each deterministic selection of a mixed equilibrium is one, with the same
    model), so its J_T lies between the min and max over NONSTATIONARY policies restricted to
    those actions (`finite_return_range`, backward induction). That range is the proved
    bound; each end's proved gap is its distance to it, and the certificate is `global` only
    when both gaps vanish.

PAL: when T >= the number of live states, every pair a policy ever reaches is reached within
T - 1 steps, so the fitted model is P wherever any policy goes (in the limit) and the leader
maximizes the discounted J: the equilibria are the discounted-optimal policies of M, and the
interval is J_T over them (ties: every deterministic selection, with the same mixture bound).
For a shorter horizon, pairs beyond it are free for the leader's optimism: no exact route.
"""
from __future__ import annotations

import itertools

import numpy as np

from bilevel.equilibria.certificates import FOLLOWER_GAP_TOL, certify_point
from bilevel.equilibria.exact.search import BRUTE_FORCE_MAX_POLICIES, witness
from bilevel.equilibria.exact.structure import FollowerStructure, forced_pairs
from bilevel.equilibria.interval import EquilibriumInterval
from bilevel.mdp.graph import n_policies
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import value_iteration
from bilevel.tabular.fits import kl_fit
from bilevel.tabular.occupancy import finite_return_range
from bilevel.tabular.policies import deterministic_policy

PROVED_TOL = 1e-9        # relative: an end within this of its bound is proved
OPTIMAL_TOL = 1e-9       # relative: an action within this of V*(s) is discounted-optimal


def applies(mdp: TabularMDP, route: str) -> str:
    """Why the exact route `route` does not apply to an averaged MDP ("" when it does)."""
    live = int((~mdp.terminal).sum())
    if route == "true_return":
        return ("MAL + true reward under occupancy: average has no closed form (the T-step return "
                "of a policy is not bounded by that of the discounted optimum)")
    if route == "closed_form" and mdp.horizon < live:
        return (f"PAL under occupancy: average needs horizon >= the live states ({live}): pairs "
                "beyond the horizon are free for the leader's optimism")
    if route == "hiding" and mdp.horizon < live:
        return (f"the MAL family under occupancy: average needs horizon >= the live states ({live}): "
                "a fitted pair at the horizon leads to states whose free model the leader may make "
                "optimistic, which the hiding check does not cover")
    if route == "hiding" and n_policies(mdp) > BRUTE_FORCE_MAX_POLICIES:
        return (f"under occupancy: average the exact route checks every deterministic policy "
                f"(at most {BRUTE_FORCE_MAX_POLICIES}; this MDP has {n_policies(mdp)})")
    return ""


def _policies(mdp: TabularMDP, allowed: np.ndarray):
    """Every deterministic policy (actions per state) choosing at each live state among
    `allowed` (S,A) bool; terminal states play action 0."""
    live = np.flatnonzero(~mdp.terminal)
    choices = [np.flatnonzero(allowed[s]) for s in live]
    for acts in itertools.product(*choices):
        a = np.zeros(mdp.n_states, dtype=int)
        a[live] = acts
        yield a


def _ends(mdp: TabularMDP, found: list) -> tuple[dict, dict]:
    """{min, max: (J_T, actions)} over the deterministic equilibria `found` = [(actions,
    reached)], and the proved gaps to the mixture bound."""
    allowed = np.zeros((mdp.n_states, mdp.n_actions), dtype=bool)
    values = []
    for actions, reached in found:
        allowed[np.flatnonzero(reached), actions[reached]] = True
        values.append((mdp.true_return(deterministic_policy(actions, mdp.n_actions)), actions))
    lo, hi = finite_return_range(mdp.P, mdp.r, mdp.rho0, mdp.horizon, allowed)
    ends = {"min": min(values, key=lambda v: v[0]), "max": max(values, key=lambda v: v[0])}
    gaps = {"min": max(0.0, ends["min"][0] - lo), "max": max(0.0, hi - ends["max"][0])}
    scale = max(1.0, abs(lo), abs(hi))       # rounding of the two evaluations is no gap
    gaps = {k: 0.0 if g <= PROVED_TOL * scale else g for k, g in gaps.items()}
    return ends, gaps


def _interval(mdp, formulation, alpha, ends, gaps, certified, how, route, leader) -> EquilibriumInterval:
    """Assemble the interval from both ends' certified witnesses (`certified(actions)`)."""
    records = {}
    for name, (_, actions) in ends.items():
        eq = certified(actions)
        if eq.follower_gap > FOLLOWER_GAP_TOL:
            return EquilibriumInterval(formulation, "failed", alpha=alpha, solver="exact",
                                       reason=f"{name} end's witness fails its follower "
                                              f"certificate (gap {eq.follower_gap:.3g})")
        records[name] = eq
    certificate = "global" if all(g == 0.0 for g in gaps.values()) else "local"
    details = {"route": route, "limit": True, "occupancy": "average", "proved_gap": gaps,
               "how": how}
    return EquilibriumInterval(formulation, "solved", alpha=alpha, certificate=certificate,
                               solver="exact", starts=0, leader_objective=leader, tolerance=0.0,
                               low=records["min"], high=records["max"], details=details)


def mal_family(mdp: TabularMDP, formulation: str, alpha, say) -> EquilibriumInterval:
    """MAL, MAL + random noise: every deterministic policy checked with the hiding structure on
    Z_T (module docstring); the witness at the file's floor where it holds, else in the limit."""
    forced = forced_pairs(mdp, formulation, alpha)
    fs = FollowerStructure(mdp, 0.0, forced)
    fs_eta = FollowerStructure(mdp, mdp.floor, forced) if mdp.floor > 0 else fs
    say(f"{formulation}: checking all {n_policies(mdp)} deterministic policies (occupancy: average)")
    everything = np.ones((mdp.n_states, mdp.n_actions), dtype=bool)
    found = []
    for actions in _policies(mdp, everything):
        chk = fs.check(actions)
        if chk.equilibrium:        # with the check's actions where pi does not reach (no effect on J_T)
            found.append((chk.actions, chk.reached))
    if not found:
        return EquilibriumInterval(formulation, "failed", alpha=alpha, solver="exact",
                                   reason="no deterministic policy passes the hiding check")
    ends, gaps = _ends(mdp, found)

    def certified(actions):               # at the floor when it holds there, else the limit
        def limit_model():
            chk = fs.check(actions)
            return chk.actions, fs.witness_model(chk.actions, chk.reached, chk.V)
        return witness(mdp, formulation, alpha, actions, fs_eta, limit_model)[0]

    how = {k: f"{len(found)} deterministic equilibria of {n_policies(mdp)} policies; mixtures "
              "bounded by backward induction" for k in ends}
    return _interval(mdp, formulation, alpha, ends, gaps, certified, how,
                     "hiding structure on the T-step reach (every deterministic policy checked)", 0.0)


def pal(mdp: TabularMDP, alpha, say) -> EquilibriumInterval:
    """PAL with T >= the live states: J_T over the discounted-optimal policies of M."""
    V, _ = value_iteration(mdp.P, mdp.r, mdp.gamma, tol=1e-12)
    Q = mdp.r + mdp.gamma * mdp.P @ V
    optimal = Q >= V[:, None] - OPTIMAL_TOL * np.maximum(1.0, np.abs(V))[:, None]
    everywhere = np.ones(mdp.n_states, dtype=bool)      # every state: ties anywhere may mix
    found = [(actions, everywhere) for actions in _policies(mdp, optimal)]
    ends, gaps = _ends(mdp, found)
    say(f"PAL: J_T over the {len(found)} discounted-optimal deterministic policies "
        f"[{ends['min'][0]:.9g}, {ends['max'][0]:.9g}] (occupancy: average)")
    fit = kl_fit(mdp.P, mdp.K, mdp.floor)
    J_star = float(mdp.rho0 @ V)
    how = {k: "discounted-optimal policies of M (the fitted model is P wherever a policy goes)"
           for k in ends}
    def certified(actions):
        return certify_point(mdp, "PAL", alpha, deterministic_policy(actions, mdp.n_actions), fit)

    return _interval(mdp, "PAL", alpha, ends, gaps, certified, how,
                     "closed form (fitted model = P on every pair reached within T - 1 steps)",
                     -J_star)
