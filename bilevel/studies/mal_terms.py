"""Rajeswaran et al. (2020) Theorem 1 terms at MAL's worst equilibrium, on the hidden-goal MDPs
and small Garnets (part of `python -m bilevel.studies theorem`): MAL's premise
l(Phat, mu_M^pi) <= eps_M holds only at its own policy pi, so the PAL theorem's bound with that
eps_M does not cover the gap, while the distribution-shift term
2 R_max / (1-gamma) D_TV(mu_M^{pi*}, mu_Mhat^{pi*}) does.

One task per candidate MDP (mal_terms_task), run in the theorem study's sweep.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from bilevel.mdp.garnet import garnet
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import TabularMDP
from bilevel.studies.common import (MDPS, model_optimum, model_return, pal_bound, true_optimum,
                                    worst_case_loss)
from bilevel.studies.tasks import restore, route_seconds, task_time_limit
from bilevel.sweep import Task, task_key
from bilevel.tabular.fits import kl_fit, model_loss, tv_distance
from bilevel.tabular.occupancy import occupancy

MAL_FILES = ("hidden_goal.yaml", "hidden_goal_deterministic.yaml", "hidden_goal_ergodic.yaml")
MAL_TIME_LIMIT = 10.0        # seconds of each MAL solve
FN = "bilevel.studies.mal_terms:"


@dataclass(frozen=True)
class MalTerms:
    """Rajeswaran et al. (2020) Theorem 1 terms at MAL's worst equilibrium (pi, Phat)."""

    mdp: str
    solver: str
    certificate: str
    J_star: float
    J_worst: float
    gap: float
    eps_pi: float            # J*(Phat) - J(pi, Phat): follower's suboptimality in its model
    eps_M: float             # l(Phat, mu_M^pi) (this pi only: MAL's premise)
    eps_M_floor: float       # l(P_eta, mu_M^pi): what the floor alone costs at this pi
    eps_M_all: float         # sup_pi' l(Phat, mu_M^pi'): the PAL theorem's premise for Phat
    model_term: float        # 4 gamma sqrt(eps_M) R_max / (1-gamma)^2
    occupancy_tv: float      # D_TV(mu_M^{pi*}, mu_Mhat^{pi*})
    shift_term: float        # 2 R_max / (1-gamma) * D_TV (see mal_terms)
    pal_bound_violated: bool  # gap > eps_pi + model_term
    excess_bound_violated: bool  # gap > eps_pi + 4 gamma sqrt(eps_M - eps_M_floor) R_max/(1-gamma)^2


def mal_terms(mdp: TabularMDP, solver: str = "scip",
              time_limit: float = MAL_TIME_LIMIT) -> MalTerms | None:
    """Solve MAL's interval, take its worst equilibrium and evaluate the Theorem 1 terms.
    shift_term uses 2 R_max/(1-gamma) D_TV: |J(pi*,M) - J(pi*,Mhat)| <= 2 R_max/(1-gamma) D_TV
    for normalized occupancies with |r| <= R_max (the O() constant is not the point here)."""
    from bilevel.equilibria.routing import solve_formulation
    res = solve_formulation(mdp, "MAL", solver=solver, time_limit=time_limit)
    if not res.ok:
        return None
    pi, Phat = res.low.policy, res.low.model
    J_star, pi_star = true_optimum(mdp)
    eps_pi = max(model_optimum(mdp, Phat)[0] - model_return(mdp, Phat, pi), 0.0)
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    eps_M = model_loss(mdp.P, Phat, mu)
    eps_M_floor = model_loss(mdp.P, kl_fit(mdp.P, mdp.K, mdp.floor), mu)
    rmax = mdp.r_max
    tv = tv_distance(occupancy(mdp.P, mdp.rho0, mdp.gamma, pi_star),
                     occupancy(Phat, mdp.rho0, mdp.gamma, pi_star))
    gap = J_star - res.low.J
    model_term = pal_bound(0.0, eps_M, mdp.gamma, rmax)
    return MalTerms(mdp=mdp.name, solver=res.solver, certificate=res.certificate, J_star=J_star,
                    J_worst=res.low.J, gap=gap, eps_pi=eps_pi, eps_M=eps_M,
                    eps_M_floor=eps_M_floor, eps_M_all=worst_case_loss(mdp, Phat),
                    model_term=model_term, occupancy_tv=tv,
                    shift_term=2.0 * rmax / (1.0 - mdp.gamma) * tv,
                    pal_bound_violated=bool(gap > eps_pi + model_term + 1e-9),
                    excess_bound_violated=bool(
                        gap > pal_bound(eps_pi, eps_M - eps_M_floor, mdp.gamma, rmax) + 1e-9))


def mal_candidate(j: int, floor: float) -> TabularMDP:
    """Candidate j with model floor `floor`: the MAL_FILES, then the 3-state Garnets of seed
    j - len(MAL_FILES)."""
    if j < len(MAL_FILES):
        mdp = load_mdp(MDPS / MAL_FILES[j])
    else:
        s = j - len(MAL_FILES)
        mdp = garnet(3, 2, 2, seed=s, gamma=0.9, name=f"garnet_S3_A2_seed{s}")
    return mdp.with_(floor=floor)


def mal_terms_result(candidate: int, solver: str, floor: float, time_limit: float) -> dict | None:
    """asdict(mal_terms) on mal_candidate(candidate, floor), None when MAL's solve found no
    certified interval: a task of the theorem sweep."""
    t = mal_terms(mal_candidate(candidate, floor), solver=solver, time_limit=time_limit)
    return None if t is None else asdict(t)


def mal_terms_tasks(mal_mdps: int, solver: str, floor: float) -> list[tuple[Task, TabularMDP]]:
    """(task, MDP) for the MAL_FILES and `mal_mdps` Garnets, keyed by each MDP's content."""
    out = []
    for j in range(len(MAL_FILES) + mal_mdps):
        mdp = mal_candidate(j, floor)
        kwargs = {"candidate": j, "solver": solver, "floor": floor, "time_limit": MAL_TIME_LIMIT}
        out.append((Task(FN + "mal_terms_result", kwargs, label=f"{mdp.name}-MAL-terms",
                         key=task_key(FN + "mal_terms_result", kwargs, mdp),
                         time_limit=task_time_limit(route_seconds(mdp, solver, MAL_TIME_LIMIT))),
                    mdp))
    return out


def print_mal_terms(records: list[dict], mdps: list[TabularMDP], mal_floor: float):
    """The MalTerms of the candidates' records printed as a table; returns (the terms,
    [{"mdp", "reason"} of each failed MAL solve or task])."""
    print("\nRajeswaran et al. Theorem 1 terms at MAL's worst equilibrium "
          "(J discounted; shift term = 2 R_max/(1-gamma) D_TV(mu_M^pi*, mu_Mhat^pi*); "
          f"model floor {mal_floor:g}):")
    print(f"{'mdp':>26} {'gap':>8} {'eps_pi':>8} {'eps_M':>9} {'-floor':>9} {'sup eps_M':>9} "
          f"{'model':>9} {'D_TV':>6} {'shift':>8} {'viol':>5} {'viol-fl':>7} cert")
    mal_rows, mal_failed = [], []
    for mdp, rec in zip(mdps, records):
        if rec["status"] != "ok" or rec["result"] is None:
            why = rec.get("reason") or "MAL solve found no certified interval"
            print(f"{mdp.name:>26} MAL solve failed: {why}")
            mal_failed.append({"mdp": mdp.name, "reason": why})
            continue
        t = restore(MalTerms, rec["result"])
        mal_rows.append(t)
        print(f"{t.mdp:>26} {t.gap:>8.4g} {t.eps_pi:>8.2g} {t.eps_M:>9.2g} "
              f"{t.eps_M - t.eps_M_floor:>9.2g} {t.eps_M_all:>9.3g} "
              f"{t.model_term:>9.3g} {t.occupancy_tv:>6.3f} {t.shift_term:>8.4g} "
              f"{str(t.pal_bound_violated):>5} {str(t.excess_bound_violated):>7} {t.certificate}")
    print("eps_M: MAL's own-policy loss (tiny: its premise holds); -floor: minus the floored "
          "fit's loss at that policy; sup eps_M: sup over all policies (the PAL premise), "
          "large; viol: gap > eps_pi + 4 gamma sqrt(eps_M) R_max/(1-gamma)^2 with eps_M "
          "(viol) or eps_M - floor (viol-fl); the D_TV shift term covers the gap.")
    return mal_rows, mal_failed
