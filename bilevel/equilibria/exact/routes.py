"""Exact equilibrium intervals from the structure of the followers' best responses
(docs/DESIGN.md section 5). No nonconvex MPEC is solved here.

The interval reported is the *limit* one: model floor eta -> 0 and band tolerance -> 0.
    PAL                    [J*, J*]  (the fitted model equals P on every pair the policy visits,
                                      so J(pi, Phat) = J(pi, M) and the leader maximizes J)
    MAL                    [min J over hiding equilibria, J*]   (min: MILP, proved)
    MAL + random noise     same structure, every pair the uniform policy visits is fitted
                           (alpha < 1); [J*, J*] when that covers every reachable pair
Each end comes with a witness (pi, Phat) re-certified from arrays at the file's floor eta: the
floored fit on fitted pairs and the floored delta at the worst target elsewhere. Where a limit
end has no witness at eta (a tie that the floor breaks), the end is reported for the limit and
the value at eta is computed by the same MILP with floored coefficients.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from bilevel.mdp.graph import n_policies
from bilevel.equilibria.certificates import FOLLOWER_GAP_TOL, certify_point
from bilevel.equilibria.interval import EquilibriumInterval
from bilevel.equilibria.exact import averaged
from bilevel.equilibria.exact.milp import HidingMILP
from bilevel.equilibria.exact.search import (BRUTE_FORCE_MAX_POLICIES, brute_force, hiding_descent,
                                             low_return_equilibria, return_extremes, true_return,
                                             witness)
from bilevel.equilibria.exact.structure import Check, FollowerStructure, forced_pairs
import bilevel.game as game
from bilevel.game.formulations import FORMULATIONS
from bilevel.mdp.graph import reachable_states
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.fits import kl_fit
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import deterministic_policy, policy_from_occupancy

# the formulations with an exact route ("closed_form": PAL; "hiding": MAL, MAL + random noise;
# "true_return": MAL + true reward)
EXACT_FORMULATIONS = tuple(name for name, f in FORMULATIONS.items() if f.exact_route)
RETURN_TOL = 1e-9       # an incumbent within this of the bound over all policies is proved
PROVED_TOL = 1e-6       # an end is global when its proved gap is at most this (relative to J*)
MILP_TIME_LIMIT = 600.0
FLOOR_MILP_MAX_ENTRIES = 2_000    # the floored MILP (dense rows per target) only up to this |K|
FLOOR_MILP_TIME_LIMIT = 30.0


def has_exact_route(formulation: str, mdp: TabularMDP | None = None) -> bool:
    """Whether `formulation` (a name) has an exact route (False for an unknown name); given the
    MDP, whether it applies there (under `occupancy: average`: `averaged.applies`)."""
    if formulation not in EXACT_FORMULATIONS:
        return False
    if mdp is not None and mdp.restricted:
        return False          # the routes use every pair's own free row: a tabular class only
    return mdp is None or not mdp.averaged or not averaged.applies(mdp, FORMULATIONS[formulation].exact_route)


def exact_interval(mdp: TabularMDP, formulation: str, alpha=None,
                   time_limit: float = MILP_TIME_LIMIT, log=None,
                   floor_ends: bool = False) -> EquilibriumInterval:
    """The limit equilibrium interval of PAL, MAL or MAL + random noise (module docstring).
    `floor_ends`: also compute, for a limit end without a witness at the file's floor, the end
    at that floor (`_floor_end`; the floored MILP can take much longer than the limit one)."""
    if not has_exact_route(formulation):
        raise ValueError(f"no exact route for {formulation!r} (exact: {', '.join(EXACT_FORMULATIONS)})")
    t0 = time.perf_counter()
    spec = game.formulation(formulation)
    alpha = spec.resolve_alpha(alpha)
    say = log or (lambda msg: None)
    say(f"{formulation}: exact route")
    route = "hiding" if spec.exact_route == "true_return" and alpha >= 1.0 else spec.exact_route
    if mdp.averaged:
        why = averaged.applies(mdp, route)
        if why:
            res = EquilibriumInterval(formulation, "failed", alpha=alpha, solver="exact", reason=why)
        elif route == "closed_form":
            res = averaged.pal(mdp, alpha, say)
        else:
            res = averaged.mal_family(mdp, formulation, alpha, say)
    elif route == "closed_form":
        res = _pal(mdp, alpha, say)
    elif route == "true_return":
        res = _true_return(mdp, formulation, alpha, say)
    else:       # the hiding structure (MAL + true reward at alpha = 1 is MAL)
        res = _mal_family(mdp, formulation, alpha, time_limit, say, floor_ends)
    return EquilibriumInterval(**{**res.__dict__, "seconds": time.perf_counter() - t0})


# --------------------------------------------------------------------------- PAL

def pal_floor_bracket(mdp: TabularMDP) -> dict:
    """At the file's floor eta > 0 the fitted model is P_eta on visited pairs and the leader's
    choice elsewhere, reached only through the floor's leak. By the simulation lemma every PAL
    equilibrium has |J(pi, Phat) - J(pi, M)| <= delta,
        delta = g/(1-g) max_{s,a} TV(P, P_eta)(s,a) (V_hi - V_lo),
    with [V_lo, V_hi] the value range of any model, so its return lies in
    [J* - 2 delta - tol, J*] (tol: the leader band)."""
    g = mdp.gamma
    Peta = kl_fit(mdp.P, mdp.K, mdp.floor)
    tv = 0.5 * np.abs(Peta - mdp.P).sum(axis=-1)
    lo, hi = game.value_bounds(mdp)
    return {"delta": float(g / (1 - g) * tv[~mdp.terminal].max(initial=0.0) * (hi - lo))}


def _pal(mdp, alpha, say) -> EquilibriumInterval:
    fs = FollowerStructure(mdp, 0.0, np.zeros((mdp.n_states, mdp.n_actions), bool))
    _, J_star, _, a_star = return_extremes(fs)
    say(f"PAL: limit interval [J*, J*] = [{J_star:.9g}, {J_star:.9g}] (closed form)")
    pi = deterministic_policy(a_star, mdp.n_actions)
    Phat = kl_fit(mdp.P, mdp.K, mdp.floor)     # the floored fit: a best response at eta
    eq = certify_point(mdp, "PAL", alpha, pi, Phat)
    if eq.follower_gap > FOLLOWER_GAP_TOL:     # cannot happen: Phat is the fit itself
        return EquilibriumInterval("PAL", "failed", reason=f"witness fails its follower "
                                   f"certificate (gap {eq.follower_gap:.3g})", solver="exact")
    bracket = pal_floor_bracket(mdp)
    tol = 1e-6 * max(1.0, abs(J_star))
    at_floor = {"eta": mdp.floor, "J_bounds": [J_star - 2 * bracket["delta"] - tol, J_star],
                "delta": bracket["delta"], "witness_leader_objective": eq.leader_objective}
    details = {"route": "closed form (fitted model = P on visited pairs in the limit)",
               "limit": True, "proved_gap": {"min": 0.0, "max": 0.0}, "at_floor": at_floor}
    return EquilibriumInterval("PAL", "solved", alpha=alpha, certificate="global", solver="exact",
                               starts=0, leader_objective=-J_star, tolerance=0.0, low=eq, high=eq,
                               details=details)


def pal_epsilon_interval(mdp: TabularMDP, epsilon: float) -> EquilibriumInterval:
    """PAL's interval over epsilon-leader-optimal equilibria in the limit eta -> 0: there
    J(pi, Phat) = J(pi, M) for every equilibrium, so the band is {pi : J(pi, M) >= J* - epsilon}
    and the interval is [max(J_min, J* - epsilon), J*] (J over stationary policies takes every
    value between J_min and J*). The low end's witness is the policy of the occupancy
    lam mu* + (1 - lam) mu_min with lam chosen so that J = J* - epsilon."""
    t0 = time.perf_counter()
    fs = FollowerStructure(mdp, 0.0, np.zeros((mdp.n_states, mdp.n_actions), bool))
    J_min, J_star, a_min, a_star = return_extremes(fs)
    mu_star = occupancy(mdp.P, mdp.rho0, mdp.gamma, deterministic_policy(a_star, mdp.n_actions))
    mu_min = occupancy(mdp.P, mdp.rho0, mdp.gamma, deterministic_policy(a_min, mdp.n_actions))
    lam = 1.0 if J_star - J_min <= epsilon else 1.0 - epsilon / (J_star - J_min)
    pi_low = policy_from_occupancy(lam * mu_star + (1 - lam) * mu_min)
    Phat = kl_fit(mdp.P, mdp.K, mdp.floor)
    low = certify_point(mdp, "PAL", None, pi_low, Phat) if lam < 1.0 else None
    high = certify_point(mdp, "PAL", None, deterministic_policy(a_star, mdp.n_actions), Phat)
    details = {"route": "closed form (epsilon band in the limit)", "limit": True,
               "epsilon": epsilon, "proved_gap": {"min": 0.0, "max": 0.0}}
    return EquilibriumInterval("PAL", "solved", certificate="global", solver="exact", starts=0,
                               leader_objective=-J_star, tolerance=epsilon,
                               low=low if low is not None else high, high=high,
                               seconds=time.perf_counter() - t0, details=details)


# --------------------------------------------------------------------------- MAL + true reward

def _true_return(mdp, formulation, alpha, say) -> EquilibriumInterval:
    """leader = alpha l(Phat, mu) - (1-alpha) J(pi, M), 0 <= alpha < 1. Every (pi, Phat) with pi
    optimal in Phat has leader >= -(1-alpha) J* (l >= 0, J(pi, M) <= J*), and pi* with the hiding
    structure's model (P on its pairs, loss 0) attains it: in the limit every equilibrium has
    J(pi, M) = J*, the interval is [J*, J*]. At the file's floor the witness (pi*, Phat_w) keeps
    J(pi*, M) = J* (J does not depend on the model), so every equilibrium in the band tol has
        (1-alpha) (J* - J) <= alpha l(Phat_w, mu*) + tol,
    the bracket [J* - (alpha l_w + tol)/(1-alpha), J*] (docs/DESIGN.md 5.7)."""
    none = np.zeros((mdp.n_states, mdp.n_actions), bool)
    fs = FollowerStructure(mdp, 0.0, none)
    _, J_star, _, a_star = return_extremes(fs)
    say(f"{formulation}: limit interval [J*, J*] = [{J_star:.9g}, {J_star:.9g}] (closed form)")
    fs_eta = FollowerStructure(mdp, mdp.floor, none) if mdp.floor > 0 else fs

    def limit_model():
        chk = fs.check(a_star)
        return chk.actions, fs.witness_model(chk.actions, chk.reached, chk.V)

    eq, entry = witness(mdp, formulation, alpha, a_star, fs_eta, limit_model)
    at_floor = {"eta": mdp.floor, **entry}
    if at_floor["witness"]:
        tol = 1e-6 * max(1.0, abs(J_star))
        at_floor["J_bounds"] = [J_star - (alpha * eq.model_loss + tol) / (1.0 - alpha), J_star]
    if eq.follower_gap > FOLLOWER_GAP_TOL:
        return EquilibriumInterval(formulation, "failed", alpha=alpha, solver="exact",
                                   reason=f"witness fails its follower certificate "
                                          f"(gap {eq.follower_gap:.3g})")
    details = {"route": "closed form (every equilibrium returns J*)", "limit": True,
               "proved_gap": {"min": 0.0, "max": 0.0}, "at_floor": at_floor}
    return EquilibriumInterval(formulation, "solved", alpha=alpha, certificate="global",
                               solver="exact", starts=0, leader_objective=-(1.0 - alpha) * J_star,
                               tolerance=0.0, low=eq, high=eq, details=details)


# --------------------------------------------------------------------------- MAL family

@dataclass(frozen=True, eq=False)
class End:
    """One end of an interval: the policy, the states whose policy pair is fitted, the values
    that make the witness model, the proved absolute gap (inf: none) and how it was found."""

    actions: np.ndarray | None
    fitted: np.ndarray | None
    V: np.ndarray | None
    gap: float
    how: str

    @staticmethod
    def of(chk: Check, gap: float, how: str) -> "End":
        return End(chk.actions, chk.reached, chk.V, gap, how)


def _mal_family(mdp, formulation, alpha, time_limit, say, floor_ends) -> EquilibriumInterval:
    forced = forced_pairs(mdp, formulation, alpha)
    fs = FollowerStructure(mdp, 0.0, forced)
    J_min_all, J_star, _, a_star = return_extremes(fs)
    ends, info = {}, {}

    # max end: pi* with the fitted model is an equilibrium of loss 0 (hostile free pairs only
    # make deviations worse), and no policy returns more than J*
    chk = fs.check(a_star)
    if chk.equilibrium:
        ends["max"] = End.of(chk, 0.0, "J* (no policy returns more)")
    else:
        ends["max"] = _milp_end(fs, True, time_limit, say, info)
    if forced[reachable_states(mdp) & ~mdp.terminal].all() and chk.equilibrium:
        ends["min"] = End.of(chk, 0.0, "every reachable pair is fitted: pi is optimal in M there")
    else:
        found = low_return_equilibria(fs)
        best = found[0] if found else None
        if best is not None and true_return(fs, best.actions) <= J_min_all + RETURN_TOL * max(1, abs(J_min_all)):
            ends["min"] = End.of(best, 0.0, "min over all policies of M")
        elif n_policies(mdp) <= BRUTE_FORCE_MAX_POLICIES:
            ends["min"] = _brute_force_end(fs, say)
        else:
            ends["min"] = _milp_end(fs, False, time_limit, say, info, best)
    failed = [k for k, e in ends.items() if e.actions is None]
    if failed:
        return EquilibriumInterval(formulation, "failed", alpha=alpha, solver="exact",
                                   reason="; ".join(f"{k} end: {ends[k].how}" for k in failed))
    records, at_floor = {}, {"eta": mdp.floor}
    fs_eta = FollowerStructure(mdp, mdp.floor, forced) if mdp.floor > 0 else fs
    for name, end in ends.items():
        eq, at_floor[name] = witness(mdp, formulation, alpha, end.actions, fs_eta,
                                      lambda end=end: (end.actions, fs.witness_model(end.actions, end.fitted, end.V)))
        if floor_ends and not at_floor[name]["witness"]:
            at_floor[name].update(_floor_end(fs_eta, formulation, alpha, name == "max",
                                             time_limit, say))
        if eq.follower_gap > FOLLOWER_GAP_TOL:
            return EquilibriumInterval(formulation, "failed", alpha=alpha, solver="exact",
                                       reason=f"{name} end's witness fails its follower "
                                              f"certificate (gap {eq.follower_gap:.3g})")
        records[name] = eq
    proved = {k: e.gap for k, e in ends.items()}
    how = {k: e.how for k, e in ends.items()}
    certificate = "global" if all(g <= PROVED_TOL * max(1.0, abs(J_star)) for g in proved.values()) \
        else "local"
    details = {"route": "hiding structure (deterministic follower policies; MILP where needed)",
               "limit": True, "proved_gap": proved, "how": how, "at_floor": at_floor,
               "forced_pairs": int(forced.sum()), **({"milp": info} if info else {})}
    return EquilibriumInterval(formulation, "solved", alpha=alpha, certificate=certificate,
                               solver="exact", starts=0, leader_objective=0.0, tolerance=0.0,
                               low=records["min"], high=records["max"], details=details)


def _brute_force_end(fs, say) -> End:
    """The min end by checking every deterministic policy (exact at eta = 0: complete)."""
    say(f"exact: checking all {n_policies(fs.mdp)} deterministic policies for the min end")
    rows = brute_force(fs)
    ok = [(J, acts) for acts, J, eq in rows if eq]
    J, acts = min(ok)
    actions = np.zeros(fs.mdp.n_states, dtype=int)
    actions[fs.live] = acts
    return End.of(fs.check(actions), 0.0, f"all {len(rows)} deterministic policies checked")


def _milp_end(fs, maximize, time_limit, say, info, incumbent: Check | None = None) -> End:
    """One end from the MILP. At eta = 0 its policy is re-checked exactly (`check`); at eta > 0
    the witness model is built from the MILP's values and the certificate decides."""
    name = "max" if maximize else "min"
    milp = HidingMILP(fs)
    say(f"exact: MILP for the {name} end at eta={fs.eta:g} ({milp.p.n} columns, "
        f"{milp.p.n_rows} rows"
        + (f", incumbent J={true_return(fs, incumbent.actions):.6g})" if incumbent else ")"))
    start = milp.start_from(incumbent) if incumbent is not None else None
    res, point = milp.solve(maximize, time_limit=time_limit, start=start)
    info[name] = {"eta": fs.eta, "columns": milp.p.n, "rows": milp.p.n_rows,
                  "status": res.status.value, "objective": res.objective, "bound": res.bound,
                  "seconds": round(res.seconds, 3), "nodes": res.iterations}
    if point is None:
        if incumbent is not None:
            return End.of(incumbent, _gap(true_return(fs, incumbent.actions), res.bound),
                          f"heuristic (MILP {res.status.value}, no point)")
        return End(None, None, None, math.inf, f"MILP {res.status.value} ({res.message})")
    gap = _gap(true_return(fs, point.actions), res.bound)
    if fs.eta > 0.0:
        return End(point.actions, point.fitted, point.V, gap, f"MILP ({res.status.value})")
    chk = fs.check(point.actions)
    if chk.equilibrium:
        return End.of(chk, gap, f"MILP ({res.status.value})")
    info[name]["rejected"] = f"MILP policy fails the exact check at {chk.violations[:3]}"
    if incumbent is None:
        return End(None, None, None, math.inf, info[name]["rejected"])
    return End.of(incumbent, _gap(true_return(fs, incumbent.actions), res.bound),
                  "heuristic (MILP point rejected)")


def _gap(J, bound) -> float:
    if bound is None or not math.isfinite(bound):
        return math.inf
    return abs(J - bound)


def _floor_end(fs_eta, formulation, alpha, maximize, time_limit, say) -> dict:
    """The end at the file's floor, for a limit end that has no witness there: first the hiding
    descent at eta (sound: every policy it returns is an equilibrium at eta), proved when it
    reaches the bound over all policies (J* or min_pi J); else the MILP with floored
    coefficients (dense rows: small models only, FLOOR_MILP_MAX_ENTRIES); the witness is
    certified from arrays either way."""
    mdp = fs_eta.mdp
    J_lo, J_hi, a_lo, a_hi = return_extremes(fs_eta)
    bound = J_hi if maximize else J_lo
    found = [c for c in (hiding_descent(fs_eta, a_hi if maximize else a_lo),
                         *([] if maximize else low_return_equilibria(fs_eta))) if c is not None]
    end = None
    if found:
        best = (max if maximize else min)(found, key=lambda c: true_return(fs_eta, c.actions))
        gap = abs(true_return(fs_eta, best.actions) - bound)
        end = End.of(best, gap if gap <= RETURN_TOL * max(1.0, abs(bound)) else math.inf,
                     "hiding descent at eta")
    if (end is None or end.gap > 0) and fs_eta.kset[0].size <= FLOOR_MILP_MAX_ENTRIES:
        milp_end = _milp_end(fs_eta, maximize, min(time_limit, FLOOR_MILP_TIME_LIMIT), say, {})
        if milp_end.actions is not None:
            end = milp_end
    if end is None:
        return {"J": None, "note": "no equilibrium found at eta (the floored MILP is for small models)"}
    pi = deterministic_policy(end.actions, mdp.n_actions)
    eq = certify_point(mdp, formulation, alpha, pi, fs_eta.witness_model(end.actions, end.fitted, end.V))
    return {"J": eq.J, "proved_gap": end.gap, "follower_gap": eq.follower_gap,
            "certified": eq.follower_gap <= FOLLOWER_GAP_TOL, "note": end.how}
