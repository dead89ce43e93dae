"""Studies of the reference study's theory with the exact engine (issue 7).

    python -m bilevel.studies theorem --mdps 200 --seed 0      # PAL theorem, 0 violations expected
    python -m bilevel.studies counterexample --scales 1 10 100 1000
    python -m bilevel.studies fixes --mdps 50

Each subcommand prints a table and writes JSON + a PNG under --out (default studies_out/); the
JSON holds null where a number is NaN or infinite. Exit status: 0 done, 1 some task failed (a
solve that raised or found no certified interval; theorem: also a violation), 2 bad input.

Conventions. J is the discounted return J(pi, M) = rho0 . V^pi (docs/DESIGN.md section 1). A model
Phat is evaluated with the engine's model reward rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s')
(bilevel.equilibria.model_reward), so J(pi, Mhat) is what the MPEC leader sees.

PAL theorem (reference study, "Theorem (ours)"): if a model map pi -> Mhat(pi) satisfies
    l(Mhat(pi), mu_M^pi) <= eps_M  for ALL pi,   and   J(pi, Mhat(pi)) >= sup_pi' J(pi', Mhat(pi')) - eps_pi,
then J(pi*, M) - J(pi, M) <= eps_pi + 4 gamma sqrt(eps_M) R_max / (1-gamma)^2.

How the premises are measured exactly (no sampling in the measurement). The study's model maps
are *policy-independent on the policy's support*: Mhat(pi)(.|s,a) = Q(.|s,a) wherever
pi(a|s) > 0, and anything where pi(a|s) = 0 (pairs that pi never plays neither enter
l(., mu_M^pi) nor J(pi, .)). For such a map both premises reduce to quantities of the fixed Q:
  eps_M  = sup_pi l(Q, mu_M^pi) = sup_pi sum mu_M^pi(s,a) c(s,a),  c = KL(P(.|s,a) || Q(.|s,a)):
           an MDP with reward c under the true P, solved exactly by value iteration
           (eps_M = (1-gamma) rho0 . V*_c);
  sup_pi' J(pi', Mhat(pi')) = sup_pi' J(pi', Q) = rho0 . V*_Q  (value iteration in Q),
  eps_pi = rho0 . V*_Q - J(pi, Q).
The loss itself is used (no floored-fit baseline subtracted), as the theorem states it.
Q comes from (a) the exact floored fit P_eta mixed with a fixed random per-MDP model N with
weight lam, or (b) counts of n transitions sampled from the uniform policy's true occupancy
(an offline data set; add-one smoothing over K keeps Q >= floor). Policies pi are the optimal
policy of Q mixed with random (Dirichlet) policies, or with some states' actions flipped.
R_max = max |R(s,a,s')| over the model support K (a model may move mass anywhere in K, and
the model reward uses R there); for Garnet MDPs with support "all" this is max |R|.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bilevel.mdp.garnet import garnet
from bilevel.cache import cache_key
from bilevel.mdp.io import load_mdp, mdp_from_dict, mdp_to_dict
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import policy_return, value_iteration
from bilevel.tabular.fits import kl_fit, kl_rows, model_loss, random_model, tv_distance
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import uniform_policy

ROOT = Path(__file__).resolve().parents[2]
VIOLATION_TOL = 1e-9
BAD_GAP = 1e-3          # fixes study: an equilibrium this far below J* counts as a bad one


# --------------------------------------------------------------------------- quantities

def model_reward(mdp: TabularMDP, Phat: np.ndarray) -> np.ndarray:
    """rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s') (the engine's model reward)."""
    return np.einsum("ijk,ijk->ij", Phat, mdp.R)


def model_return(mdp: TabularMDP, Phat: np.ndarray, pi: np.ndarray) -> float:
    """J(pi, Mhat) = rho0 . V^pi_{Phat, rhat}."""
    return policy_return(Phat, model_reward(mdp, Phat), mdp.rho0, mdp.gamma, pi)


def optimal_return(P: np.ndarray, r: np.ndarray, rho0: np.ndarray, gamma: float):
    """(rho0 . V*, greedy pi*) by value iteration."""
    V, pi = value_iteration(P, r, gamma)
    return float(rho0 @ V), pi


def r_max_over_support(mdp: TabularMDP) -> float:
    """R_max = max |R(s,a,s')| over the model support K."""
    return float(np.max(np.abs(np.where(mdp.K, mdp.R, 0.0)), initial=0.0))


def worst_case_loss(mdp: TabularMDP, Q: np.ndarray) -> float:
    """eps_M = sup_pi l(Q, mu_M^pi) = (1-gamma) rho0 . V*_c with reward c(s,a) = KL(P||Q)
    under the true P (value iteration; exact up to its tolerance)."""
    c = kl_rows(mdp.P, Q)
    c = np.where(mdp.terminal[:, None], 0.0, c)
    J, _ = optimal_return(mdp.P, c, mdp.rho0, mdp.gamma)
    return (1.0 - mdp.gamma) * J


def pal_bound(eps_pi: float, eps_M: float, gamma: float, r_max: float) -> float:
    """eps_pi + 4 gamma sqrt(eps_M) R_max / (1-gamma)^2 (the reference study's PAL theorem)."""
    return eps_pi + 4.0 * gamma * math.sqrt(max(eps_M, 0.0)) * r_max / (1.0 - gamma) ** 2


@dataclass(frozen=True)
class TheoremInstance:
    """One approximate PAL solution (pi, model map Q) on one MDP, with measured premises."""

    mdp: str
    n_states: int
    n_actions: int
    gamma: float
    model_kind: str          # "perturbed_fit" | "samples" | "early_stopped"
    model_param: float       # lam, n or IPOPT iterations
    policy_kind: str         # "optimal" | "mixture" | "flip" | "mpec_iterate"
    policy_param: float
    eps_pi: float
    eps_M: float
    r_max: float
    gap: float               # J(pi*, M) - J(pi, M)
    bound: float
    tightness: float         # gap / bound
    violation: bool


def check_instance(mdp: TabularMDP, Q: np.ndarray, pi: np.ndarray, J_star: float,
                   eps_pi: float | None = None, eps_M: float | None = None, **labels):
    """Measure the premises for (pi, Q) (or take them as given, for tests) and check the bound."""
    if eps_M is None:
        eps_M = worst_case_loss(mdp, Q)
    if eps_pi is None:
        JQ_star, _ = optimal_return(Q, model_reward(mdp, Q), mdp.rho0, mdp.gamma)
        eps_pi = max(JQ_star - model_return(mdp, Q, pi), 0.0)
    rmax = r_max_over_support(mdp)
    gap = J_star - policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, pi)
    bound = pal_bound(eps_pi, eps_M, mdp.gamma, rmax)
    tight = gap / bound if bound > 0 else (0.0 if gap <= VIOLATION_TOL else math.inf)
    return TheoremInstance(mdp=mdp.name, n_states=mdp.n_states, n_actions=mdp.n_actions,
                           gamma=mdp.gamma, eps_pi=float(eps_pi), eps_M=float(eps_M), r_max=rmax,
                           gap=float(gap), bound=float(bound), tightness=float(tight),
                           violation=bool(gap > bound + VIOLATION_TOL * max(1.0, abs(J_star))),
                           **labels)


def sample_fit(mdp: TabularMDP, n: int, rng: np.random.Generator) -> np.ndarray:
    """Q = (counts + 1) / (n_sa + |K(s,a)|) over K from n transitions with (s,a) ~ mu_M^uniform,
    s' ~ P(.|s,a) (add-one smoothing; unvisited pairs get the uniform row over K)."""
    S, A = mdp.n_states, mdp.n_actions
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, np.full((S, A), 1.0 / A)).ravel()
    pairs = rng.choice(S * A, size=n, p=mu / mu.sum())
    counts = np.zeros((S * A, S))
    for sa, k in zip(*np.unique(pairs, return_counts=True)):
        counts[sa] = rng.multinomial(k, mdp.P.reshape(S * A, S)[sa])
    counts = counts.reshape(S, A, S)
    Q = np.where(mdp.K, counts + 1.0, 0.0)
    return Q / Q.sum(-1, keepdims=True)


def perturbed_policies(pi_opt: np.ndarray, rng: np.random.Generator):
    """(kind, param, pi): the optimal policy, mixtures with random policies, and action flips."""
    S, A = pi_opt.shape
    out = [("optimal", 0.0, pi_opt)]
    for beta in (0.05, 0.2, 0.5, 1.0):
        rand = rng.dirichlet(np.ones(A), size=S)
        out.append(("mixture", beta, (1 - beta) * pi_opt + beta * rand))
    k = int(rng.integers(1, S + 1))
    flip = pi_opt.copy()
    for s in rng.choice(S, size=k, replace=False):
        flip[s] = np.roll(pi_opt[s], int(rng.integers(1, A)))
    out.append(("flip", float(k), flip))
    return out


def random_study_mdp(i: int, seed: int) -> TabularMDP:
    """Garnet MDP number i: S in 3..8, A in 2..3, branching in 1..S, gamma in [0.8, 0.99]."""
    rng = np.random.default_rng([seed, i])
    S, A = int(rng.integers(3, 9)), int(rng.integers(2, 4))
    b = int(rng.integers(1, min(S, 4) + 1))
    gamma = float(np.round(rng.uniform(0.8, 0.99), 3))
    return garnet(S, A, b, seed=int(rng.integers(2**31)), gamma=gamma, support="all",
                  name=f"garnet{i}_S{S}_A{A}_b{b}_g{gamma}")


def theorem_instances(mdp: TabularMDP, rng: np.random.Generator,
                      lams=(0.0, 0.01, 0.1, 0.5), ns=(50, 500, 5000)) -> list[TheoremInstance]:
    """All (model, policy) combinations on one MDP, each checked."""
    J_star, _ = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    fit, N = kl_fit(mdp.P, mdp.K, mdp.floor), random_model(mdp.K, mdp.floor, rng)
    models = [("perturbed_fit", lam, (1 - lam) * fit + lam * N) for lam in lams]
    models += [("samples", float(n), sample_fit(mdp, n, rng)) for n in ns]
    out = []
    for mk, mp, Q in models:
        eps_M = worst_case_loss(mdp, Q)
        JQ_star, pi_Q = optimal_return(Q, model_reward(mdp, Q), mdp.rho0, mdp.gamma)
        for pk, pp, pi in perturbed_policies(pi_Q, rng):
            eps_pi = max(JQ_star - model_return(mdp, Q, pi), 0.0)
            out.append(check_instance(mdp, Q, pi, J_star, eps_pi=eps_pi, eps_M=eps_M,
                                      model_kind=mk, model_param=mp, policy_kind=pk,
                                      policy_param=pp))
    return out


def early_stopped_instances(mdp: TabularMDP, iters=(1, 3, 10, 30)) -> list[TheoremInstance]:
    """Approximate PAL solutions as an optimizer leaves them: IPOPT on PAL's MPEC (Scholtes
    eps = 1e-2, from the uniform policy with the fitted model) stopped after k iterations; the
    iterate's (pi, Phat), projected on the simplices, is checked with its measured premises."""
    from bilevel.equilibria.mpec_route import set_objective
    from bilevel.equilibria.starts import starting_point
    from bilevel.game.formulations import build, extract
    from bilevel.mpec.modes import Scholtes
    from solvers.ipopt import Ipopt
    J_star, _ = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    bm = build(mdp, "PAL")
    set_objective(bm.model, bm.leader)
    red = Scholtes(schedule=(1e-2,))
    model, inv = red.apply(bm.model)
    try:
        nlp = Ipopt(tol=1e-9).compile(model)
        x0 = starting_point(bm, uniform_policy(mdp.n_states, mdp.n_actions))
        out = []
        for k in iters:
            nlp.solve(x0=x0, load="always", options={"max_iter": int(k)})
            x = extract(bm)
            out.append(check_instance(mdp, x["model"], x["policy"], J_star,
                                      model_kind="early_stopped", model_param=float(k),
                                      policy_kind="mpec_iterate", policy_param=float(k)))
        return out
    finally:
        red.invert(model, inv)


# --------------------------------------------------------------------------- Rajeswaran terms

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
    shift_term: float        # R_max / (1-gamma) * D_TV  (the O() term, constant 1... see docs)
    pal_bound_violated: bool  # gap > eps_pi + model_term
    excess_bound_violated: bool  # gap > eps_pi + 4 gamma sqrt(eps_M - eps_M_floor) R_max/(1-gamma)^2


def mal_terms(mdp: TabularMDP, solver: str = "scip", time_limit: float = 10.0) -> MalTerms | None:
    """Solve MAL's interval, take its worst equilibrium and evaluate the Theorem 1 terms.
    shift_term uses 2 R_max/(1-gamma) D_TV: |J(pi*,M) - J(pi*,Mhat)| <= 2 R_max/(1-gamma) D_TV
    for normalized occupancies with |r| <= R_max (the O() constant is not the point here)."""
    from bilevel.equilibria.routing import solve_formulation
    res = solve_formulation(mdp, "MAL", solver=solver, time_limit=time_limit)
    if not res.ok:
        return None
    pi, Phat = res.low.policy, res.low.model
    J_star, pi_star = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    JQ_star, _ = optimal_return(Phat, model_reward(mdp, Phat), mdp.rho0, mdp.gamma)
    eps_pi = max(JQ_star - model_return(mdp, Phat, pi), 0.0)
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    eps_M = model_loss(mdp.P, Phat, mu)
    eps_M_floor = model_loss(mdp.P, kl_fit(mdp.P, mdp.K, mdp.floor), mu)
    rmax = r_max_over_support(mdp)
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


# --------------------------------------------------------------------------- counterexample

def scaled_hidden_goal(k: float, path: str | Path = ROOT / "mdps" / "hidden_goal.yaml") -> TabularMDP:
    """hidden_goal with the hidden rewards scaled by k: R(A,Y,A) = 0.75 k, R(B,Y,A) = 0.5 k."""
    d = mdp_to_dict(load_mdp(path))
    d["name"] = f"hidden_goal_k{k:g}"
    d["rewards"]["A"]["Y"] = {"A": 0.75 * k}
    d["rewards"]["B"]["Y"] = {"A": 0.5 * k, "B": -0.05}
    return mdp_from_dict(d, source=f"<hidden_goal x{k:g}>")


@dataclass(frozen=True)
class CounterexampleRow:
    k: float
    J_star: float
    mal_min_J: float
    mal_gap: float
    pal_min_J: float
    pal_gap: float
    pal_closed_form_gap: float   # J* - J(pi, M), pi greedy in the floored fit P_eta (see below)
    mal_certificate: str
    pal_certificate: str
    seconds: float


def counterexample_row(k: float, solver: str = "scip", time_limit: float = 60.0) -> CounterexampleRow:
    """Exact MAL and PAL intervals on the k-scaled hidden goal; gaps J* - min J.
    PAL's closed form, an independent check: the model follower's best response is the floored
    fit P_eta on every pair the policy visits and arbitrary elsewhere, and unvisited pairs do not
    enter J(pi, Phat), so PAL's leader problem is max_pi J(pi, P_eta); its solution is the greedy
    policy of P_eta (value iteration)."""
    from bilevel.equilibria.interval import EquilibriumInterval
    from bilevel.equilibria.routing import solve_formulation
    from bilevel.cli.common import failure_reason
    t0 = time.perf_counter()
    mdp = scaled_hidden_goal(k)
    J_star, _ = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)

    def solve(f):
        try:
            return solve_formulation(mdp, f, solver=solver, time_limit=time_limit)
        except Exception as e:      # recorded as a failed row, the other scales still run
            return EquilibriumInterval(formulation=f, status="failed", reason=failure_reason(e))

    mal, pal = solve("MAL"), solve("PAL")
    nan = float("nan")
    fit = kl_fit(mdp.P, mdp.K, mdp.floor)
    _, pi_fit = optimal_return(fit, model_reward(mdp, fit), mdp.rho0, mdp.gamma)
    return CounterexampleRow(
        pal_closed_form_gap=J_star - policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, pi_fit),
        k=k, J_star=J_star, mal_min_J=mal.low.J if mal.ok else nan,
        mal_gap=J_star - mal.low.J if mal.ok else nan,
        pal_min_J=pal.low.J if pal.ok else nan, pal_gap=J_star - pal.low.J if pal.ok else nan,
        mal_certificate=mal.certificate if mal.ok else f"failed: {mal.reason}",
        pal_certificate=pal.certificate if pal.ok else f"failed: {pal.reason}",
        seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------- output helpers

def _save(out: Path, name: str, payload) -> Path:
    from bilevel.cli.common import json_dumps
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}.json"
    p.write_text(json_dumps(payload, indent=1, default=float))
    return p


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def quantiles(x, qs=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)) -> dict:
    x = np.asarray(x, dtype=float)
    return {f"q{int(q * 100)}": float(np.quantile(x, q)) for q in qs}


# --------------------------------------------------------------------------- subcommands

def run_theorem(n_mdps: int, seed: int, out: Path, mal_mdps: int = 3, solver: str = "scip",
                mal_floor: float = 1e-9, early_mdps: int | None = None) -> dict:
    """PAL theorem check on n_mdps random MDPs (early-stopped MPEC iterates on the first
    `early_mdps`, None: all), then Rajeswaran's terms at MAL's worst
    equilibria. The MAL MDPs use the floor `mal_floor`: with the default floor 1e-6 and
    gamma = 0.99 the solver tolerance band alone (loss ~ 5e-6) makes 4 gamma sqrt(eps_M) R_max /
    (1-gamma)^2 larger than the whole return range, which would hide the comparison."""
    t0 = time.perf_counter()
    early_mdps = n_mdps if early_mdps is None else early_mdps
    rows: list[TheoremInstance] = []
    for i in range(n_mdps):
        mdp = random_study_mdp(i, seed)
        rows.extend(theorem_instances(mdp, np.random.default_rng([seed, i, 1])))
        if i < early_mdps:
            rows.extend(early_stopped_instances(mdp))
    viol = [r for r in rows if r.violation]
    tight = np.array([r.tightness for r in rows])
    q = quantiles(tight)
    print(f"PAL theorem: {n_mdps} Garnet MDPs (S 3..8, A 2..3, gamma 0.8..0.99), "
          f"{len(rows)} approximate PAL solutions, {time.perf_counter() - t0:.1f} s")
    print(f"violations of J(pi*,M) - J(pi,M) <= eps_pi + 4 gamma sqrt(eps_M) R_max/(1-gamma)^2: "
          f"{len(viol)}")
    for r in viol[:10]:
        print("  VIOLATION", r)
    print("tightness = gap / bound, quantiles: "
          + "  ".join(f"{k}={v:.3g}" for k, v in q.items()))
    print(f"{'model':>14} {'param':>7} {'n':>5} {'eps_M med':>10} {'eps_pi med':>10} "
          f"{'gap med':>9} {'tight med':>9} {'tight max':>9}")
    groups = {}
    for r in rows:
        groups.setdefault((r.model_kind, r.model_param), []).append(r)
    by_model = []
    for (mk, mp), rs in groups.items():
        e = dict(model=mk, param=mp, n=len(rs),
                 eps_M_median=float(np.median([r.eps_M for r in rs])),
                 eps_pi_median=float(np.median([r.eps_pi for r in rs])),
                 gap_median=float(np.median([r.gap for r in rs])),
                 tightness_median=float(np.median([r.tightness for r in rs])),
                 tightness_max=float(np.max([r.tightness for r in rs])))
        by_model.append(e)
        print(f"{mk:>14} {mp:>7g} {len(rs):>5} {e['eps_M_median']:>10.3g} "
              f"{e['eps_pi_median']:>10.3g} {e['gap_median']:>9.3g} "
              f"{e['tightness_median']:>9.3g} {e['tightness_max']:>9.3g}")

    mal_rows, mal_failed = [], []
    if mal_mdps > 0:
        print("\nRajeswaran et al. Theorem 1 terms at MAL's worst equilibrium "
              "(J discounted; shift term = 2 R_max/(1-gamma) D_TV(mu_M^pi*, mu_Mhat^pi*); "
              f"model floor {mal_floor:g}):")
        cands = [load_mdp(ROOT / "mdps" / f) for f in
                 ("hidden_goal.yaml", "hidden_goal_deterministic.yaml", "hidden_goal_ergodic.yaml")]
        cands += [garnet(3, 2, 2, seed=s, gamma=0.9, name=f"garnet_S3_A2_seed{s}")
                  for s in range(mal_mdps)]
        print(f"{'mdp':>26} {'gap':>8} {'eps_pi':>8} {'eps_M':>9} {'-floor':>9} {'sup eps_M':>9} "
              f"{'model':>9} {'D_TV':>6} {'shift':>8} {'viol':>5} {'viol-fl':>7} cert")
        for mdp in cands:
            try:
                t = mal_terms(mdp.with_(floor=mal_floor), solver=solver)
                why = "MAL solve found no certified interval"
            except Exception as e:      # recorded as failed, the other MDPs still run
                from bilevel.cli.common import failure_reason
                t, why = None, failure_reason(e)
            if t is None:
                print(f"{mdp.name:>26} MAL solve failed: {why}")
                mal_failed.append({"mdp": mdp.name, "reason": why})
                continue
            mal_rows.append(t)
            print(f"{t.mdp:>26} {t.gap:>8.4g} {t.eps_pi:>8.2g} {t.eps_M:>9.2g} "
                  f"{t.eps_M - t.eps_M_floor:>9.2g} {t.eps_M_all:>9.3g} "
                  f"{t.model_term:>9.3g} {t.occupancy_tv:>6.3f} {t.shift_term:>8.4g} "
                  f"{str(t.pal_bound_violated):>5} {str(t.excess_bound_violated):>7} {t.certificate}")
        print("eps_M: MAL's own-policy loss (tiny: its premise holds); -floor: minus the floored "
              "fit's loss at that policy; sup eps_M: sup over all policies (the PAL premise), "
              "large; viol: gap > eps_pi + 4 gamma sqrt(eps_M) R_max/(1-gamma)^2 with eps_M "
              "(viol) or eps_M - floor (viol-fl); the D_TV shift term covers the gap.")
    payload = {"n_mdps": n_mdps, "seed": seed, "n_instances": len(rows),
               "violations": [asdict(r) for r in viol], "tightness_quantiles": q,
               "by_model": by_model, "instances": [asdict(r) for r in rows],
               "mal_terms": [asdict(t) for t in mal_rows],
               "failed": [f"{m['mdp']} MAL terms: {m['reason']}" for m in mal_failed]}
    _save(out, "theorem", payload)
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    b = np.array([r.bound for r in rows])
    g = np.array([r.gap for r in rows])
    ax[0].loglog(np.maximum(b, 1e-12), np.maximum(g, 1e-12), ".", ms=2, alpha=.5)
    lim = [1e-12, max(b.max(), 1)]
    ax[0].plot(lim, lim, "k--", lw=1, label="gap = bound")
    ax[0].set_xlabel("bound eps_pi + 4 gamma sqrt(eps_M) R_max/(1-gamma)^2")
    ax[0].set_ylabel("gap J(pi*,M) - J(pi,M)  (clipped at 1e-12)")
    ax[0].legend()
    ax[1].hist(tight[tight > 0], bins=np.logspace(-8, 0, 41))
    ax[1].set_xscale("log")
    ax[1].set_xlabel("tightness gap / bound")
    ax[1].set_title(f"{len(rows)} solutions on {n_mdps} MDPs, {len(viol)} violations")
    fig.tight_layout()
    fig.savefig(out / "theorem.png", dpi=120)
    return payload


def run_counterexample(scales, out: Path, solver: str = "scip", time_limit: float = 60.0) -> dict:
    rows = []
    print("hidden goal scaled by k (A/Y loop 0.75k, B-Y->A 0.5k); J discounted; "
          "strong (optimistic) Stackelberg equilibria; gap = J* - min J over equilibria")
    print(f"{'k':>6} {'J*':>10} {'MAL min J':>10} {'MAL gap':>10} {'gap/k':>8} "
          f"{'PAL min J':>10} {'PAL gap':>9} {'PAL cf gap':>10} {'MAL cert':>8} {'PAL cert':>8} {'s':>6}")
    for k in scales:
        r = counterexample_row(k, solver=solver, time_limit=time_limit)
        rows.append(r)
        print(f"{r.k:>6g} {r.J_star:>10.4f} {r.mal_min_J:>10.4f} {r.mal_gap:>10.4f} "
              f"{r.mal_gap / r.k:>8.4f} {r.pal_min_J:>10.4f} {r.pal_gap:>9.2g} "
              f"{r.pal_closed_form_gap:>10.2g} "
              f"{r.mal_certificate:>8} {r.pal_certificate:>8} {r.seconds:>6.1f}", flush=True)
    print("PAL cf = closed form (greedy policy of the floored fit); a failed PAL MPEC row is the "
          "engine's certificate rejecting SCIP's point (SCIP stops at relative gap 1e-3)")
    failed = [f"k={r.k:g} {name}: {cert}" for r in rows
              for name, cert in (("MAL", r.mal_certificate), ("PAL", r.pal_certificate))
              if cert.startswith("failed")]
    payload = {"rows": [asdict(r) for r in rows], "solver": solver, "failed": failed}
    _save(out, "counterexample", payload)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = np.array([r.k for r in rows])
    ax.loglog(ks, [max(r.mal_gap, 1e-9) for r in rows], "o-", label="MAL worst gap")
    ax.loglog(ks, [max(abs(r.pal_gap), 1e-9) for r in rows], "s-", label="PAL gap, MPEC (|.|, floor 1e-9)")
    ax.loglog(ks, [max(abs(r.pal_closed_form_gap), 1e-9) for r in rows], "x--",
              label="PAL gap, closed form (|.|, floor 1e-9)")
    ax.set_xlabel("hidden reward scale k")
    ax.set_ylabel("J* - min J over equilibria (discounted)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "counterexample.png", dpi=120)
    return payload


# --------------------------------------------------------------------------- fixes

@dataclass(frozen=True)
class FixResult:
    """The worst-case gap J* - min J(pi, M) over one formulation's equilibria on one MDP."""

    mdp: str
    formulation: str
    alpha: float | None
    ok: bool
    gap: float               # nan when the solve failed
    solver: str
    certificate: str
    seconds: float
    reason: str = ""


def fixes_mdp(i: int, seed: int) -> TabularMDP:
    """Small random MDP number i for the fixes study: S in 3..4, A = 2, branching 2, start in
    state 0 (so that a model can hide states), gamma 0.9."""
    rng = np.random.default_rng([seed, i, 7])
    S = int(rng.integers(3, 5))
    return garnet(S, 2, 2, seed=int(rng.integers(2**31)), gamma=0.9, initial="first",
                  support="all", name=f"fixes{i}_S{S}_A2")


def worst_gap(mdp: TabularMDP, formulation: str, alpha=None, solver="scip",
              time_limit=10.0, starts: int = 8) -> FixResult:
    """The equilibrium interval by solve_formulation, or with solver="enumerate" by
    bilevel.equilibria.enumeration (time_limit per policy); gap = J* - low.J (J discounted)."""
    from bilevel.equilibria.enumeration import enumerate_interval
    from bilevel.equilibria.routing import solve_formulation
    from bilevel.cli.common import failure_reason
    J_star, _ = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    t0 = time.perf_counter()
    try:
        if solver == "enumerate":
            res = enumerate_interval(mdp, formulation, alpha, time_limit=time_limit)
        else:
            res = solve_formulation(mdp, formulation, alpha=alpha, solver=solver,
                                    time_limit=time_limit, starts=starts)
    except Exception as e:      # a failed result; the study goes on
        return FixResult(mdp=mdp.name, formulation=formulation, alpha=alpha, ok=False,
                         gap=float("nan"), solver=solver, certificate="none",
                         seconds=time.perf_counter() - t0, reason=failure_reason(e))
    return FixResult(mdp=mdp.name, formulation=formulation, alpha=res.alpha, ok=res.ok,
                     gap=J_star - res.low.J if res.ok else float("nan"), solver=res.solver,
                     certificate=res.certificate, seconds=res.seconds, reason=res.reason)


def pal_closed_form(mdp: TabularMDP) -> FixResult:
    """PAL's equilibrium from the closed-form best response (see counterexample_row): the greedy
    policy of the floored fit P_eta; gap J* - J(pi, M). One policy of PAL's optimal set (ties
    among P_eta-optimal policies are not enumerated)."""
    t0 = time.perf_counter()
    J_star, _ = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
    fit = kl_fit(mdp.P, mdp.K, mdp.floor)
    _, pi = optimal_return(fit, model_reward(mdp, fit), mdp.rho0, mdp.gamma)
    gap = J_star - policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, pi)
    return FixResult(mdp=mdp.name, formulation="PAL_closed_form", alpha=None, ok=True, gap=gap,
                     solver="value_iteration", certificate="closed_form",
                     seconds=time.perf_counter() - t0)


def fixes_settings(seed, alphas, solver, time_limit, with_pal, agent_solver, agent_alphas,
                   agent_time_limit=None, recheck=None) -> dict:
    """The fixes study's settings. recheck: seconds per policy of a second enumeration of each
    MAL-fix result that is local with a gap > BAD_GAP; a global recheck replaces it."""
    return {"seed": seed, "alphas": [float(a) for a in alphas], "solver": solver,
            "time_limit": float(time_limit), "with_pal": bool(with_pal),
            "agent_solver": agent_solver, "agent_alphas": [float(a) for a in agent_alphas],
            "agent_time_limit": float(time_limit if agent_time_limit is None
                                      else agent_time_limit),
            "recheck": None if recheck is None else float(recheck)}


def fixes_for_mdp(i: int, settings: dict, with_agent: bool, cache: Path | None = None,
                  fresh: bool = False) -> list[FixResult]:
    """All formulations of the fixes study on MDP number i. With a cache directory, each result
    is stored in cache/fixes{i}.json under its content key (bilevel.cache: the MDP's content,
    formulation, alpha, requested solver, time limit and the code version) and reused by a
    later run whose key is the same (so a long study can be resumed, extended
    with more alphas or solvers, or split across processes with --shard)."""
    f_cache = None if cache is None else cache / f"fixes{i}.json"
    mdp = fixes_mdp(i, settings["seed"])
    content_key = lambda k: cache_key(mdp, study="fixes", formulation=k[0], alpha=k[1],
                                      solver=k[2], time_limit=k[3])
    stored: dict = {}
    if f_cache is not None and f_cache.exists() and not fresh:
        doc = json.loads(f_cache.read_text())
        for r in doc.get("results", []):
            r = dict(r)
            if r.get("gap") is None:          # NaN (failed solve) is stored as null
                r["gap"] = float("nan")
            which, tl, key = r.pop("requested"), r.pop("time_limit"), r.pop("key", None)
            k = (r["formulation"], r["alpha"], which, tl)
            if key == content_key(k):         # same MDP content, settings and code: reuse
                stored[k] = FixResult(**r)
    solver, tl, agent_solver = settings["solver"], settings["time_limit"], settings["agent_solver"]
    agent_tl = settings["agent_time_limit"]
    todo = [("MAL", None, solver, tl)] + [("MAL_random_noise", a, solver, tl)
                                          for a in settings["alphas"]]
    if settings["with_pal"]:
        todo.append(("PAL", None, solver, tl))
    if with_agent:
        todo += [("MAL_agent_reward", a, agent_solver, agent_tl) for a in settings["agent_alphas"]]
    todo.append(("PAL_closed_form", None, "closed_form", None))

    def save():
        if f_cache is None:
            return
        f_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = f_cache.with_suffix(".tmp")
        from bilevel.cli.common import json_dumps
        tmp.write_text(json_dumps({"settings": {"seed": settings["seed"]}, "results": [
            {**asdict(r), "requested": k[2], "time_limit": k[3], "key": content_key(k)}
            for k, r in stored.items()]},
            default=float))
        tmp.replace(f_cache)

    results = []
    for f, a, which, limit in todo:
        key = (f, a, which, limit)
        if key not in stored:
            stored[key] = pal_closed_form(mdp) if f == "PAL_closed_form" else worst_gap(
                mdp, f, a, which, limit,
                starts=1 if which == "ipopt" and f == "MAL_agent_reward" else 8)
            save()        # after every solve: a stopped run loses at most the current one
        results.append(stored[key])
    recheck = settings.get("recheck")
    for j, r in enumerate(results):
        # a fix's bad gap that is not proved: the enumeration again, with `recheck` s per policy
        if recheck and r.formulation in ("MAL_agent_reward", "MAL_random_noise") and r.ok \
                and r.certificate == "local" and r.gap > BAD_GAP:
            key = (r.formulation, r.alpha, "enumerate", float(recheck))
            if key not in stored:
                stored[key] = worst_gap(mdp, r.formulation, r.alpha, "enumerate", recheck)
                save()
            if stored[key].ok and stored[key].certificate == "global":
                results[j] = stored[key]
    return results


def run_fixes(n_mdps: int, seed: int, alphas, out: Path, solver: str = "scip",
              time_limit: float = 10.0, with_pal: bool = True, agent_mdps: int | None = None,
              agent_solver: str = "ipopt", agent_alphas=None, shard: tuple[int, int] = (0, 1),
              cache: bool = True, fresh: bool = False,
              agent_time_limit: float | None = None, recheck: float | None = None,
              failed: list | None = None) -> dict | None:
    """Worst-case gaps of MAL, MAL + agent reward (alpha), MAL + random noise (alpha) and PAL
    over n_mdps random MDPs, then plain MAL on the deterministic and ergodic hidden goals.
    MAL + agent reward is the expensive one (SCIP did not certify it within 15 s even on
    3-state Garnets; IPOPT with one random start takes ~30 s): it is solved with `agent_solver`
    (one start for IPOPT) on the first `agent_mdps` MDPs only (None: all), at `agent_alphas`.
    Results are cached per MDP, formulation, alpha and solver under out/fixes_cache (see
    fixes_for_mdp; ignored with `fresh`). shard = (k, n) solves only the MDPs i with
    i % n == k and returns None without the summary: run n shards in parallel, then once
    unsharded to print the table from the cache. `failed`: a list to which a line is appended
    for each result that failed (also in a shard); the payload's "failed" holds the same."""
    agent_alphas = alphas if agent_alphas is None else agent_alphas
    agent_mdps = n_mdps if agent_mdps is None else agent_mdps
    settings = fixes_settings(seed, alphas, solver, time_limit, with_pal, agent_solver,
                              agent_alphas, agent_time_limit, recheck)
    cache_dir = out / "fixes_cache" if cache else None
    results: list[FixResult] = []
    t0 = time.perf_counter()
    k, n_shards = shard
    for i in range(n_mdps):
        if i % n_shards != k:
            continue
        done = fixes_for_mdp(i, settings, i < agent_mdps, cache_dir, fresh)
        results += done
        print(f"  {done[0].mdp}: " + ", ".join(
            f"{r.formulation}{'' if r.alpha is None else f'({r.alpha:g})'}="
            f"{r.gap:.3g}" for r in done), flush=True)
    lost = [_failure(r) for r in results if not r.ok]
    if failed is not None:
        failed += lost
    if n_shards > 1:
        return None
    print(f"\nfixes: {n_mdps} random MDPs (S 3..4, A 2, gamma 0.9, start in s0), solver {solver}, "
          f"MPEC time limit {time_limit:g} s per solve (exact routes: none); "
          f"MAL_agent_reward on the first {min(agent_mdps, n_mdps)} MDPs with {agent_solver} "
          f"(time limit {settings['agent_time_limit']:g} s{' per policy' if agent_solver == 'enumerate' else ''}); "
          f"solver time {sum(r.seconds for r in results):.0f} s (this run "
          f"{time.perf_counter() - t0:.0f} s, the rest cached); "
          "gap = J* - min J over equilibria found (discounted; exact routes: the limit interval, "
          "docs/DESIGN.md 5.1); global = proved (exact route, SCIP, or a resolved enumeration), "
          "the other solved ones are local (IPOPT, or an enumeration whose bounds did not resolve "
          "the leader optimum); max global = largest gap among the global ones; failed = no "
          "certified end (not counted)")
    print(f"{'formulation':>18} {'alpha':>6} {'solved':>7} {'global':>7} {'failed':>7} "
          f"{'max gap':>9} {'mean gap':>9} {f'#gap>{BAD_GAP:g}':>9} {'max global':>10}")
    table = []
    keys = sorted({(r.formulation, r.alpha) for r in results},
                  key=lambda k: (["MAL", "MAL_agent_reward", "MAL_random_noise", "PAL",
                                  "PAL_closed_form"].index(k[0]),
                                 k[1] or 0))
    for f, a in keys:
        rs = [r for r in results if r.formulation == f and r.alpha == a]
        g = np.array([r.gap for r in rs if r.ok])
        g_global = [r.gap for r in rs if r.ok and r.certificate in ("global", "closed_form")]
        e = dict(formulation=f, alpha=a, solved=int(g.size), failed=len(rs) - int(g.size),
                 n_global=len(g_global),
                 max_gap_global=max(g_global) if g_global else None,
                 max_gap=float(g.max()) if g.size else float("nan"),
                 mean_gap=float(g.mean()) if g.size else float("nan"),
                 n_bad=int((g > BAD_GAP).sum()))
        table.append(e)
        print(f"{f:>18} {'-' if a is None else f'{a:g}':>6} {e['solved']:>7} {e['n_global']:>7} "
              f"{e['failed']:>7} {e['max_gap']:>9.4g} {e['mean_gap']:>9.4g} {e['n_bad']:>9} "
              f"{'-' if e['max_gap_global'] is None else format(e['max_gap_global'], '.4g'):>10}")
    named = []
    print("\nplain MAL on the named hidden-goal variants:")
    for f in ("hidden_goal_deterministic.yaml", "hidden_goal_ergodic.yaml"):
        mdp = load_mdp(ROOT / "mdps" / f)
        r = worst_gap(mdp, "MAL", None, solver, max(time_limit, 30.0))
        named.append(r)
        if not r.ok:
            lost.append(_failure(r))
            if failed is not None:
                failed.append(lost[-1])
        J_star, _ = optimal_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma)
        print(f"  {mdp.name}: J* = {J_star:.4f}, MAL worst gap = {r.gap:.4f} "
              f"({r.certificate}{'' if r.ok else ', ' + r.reason}) -> "
              f"{'MAL fails' if r.ok and r.gap > 1.0 else 'no failure found'}")
    payload = {"n_mdps": n_mdps, "seed": seed, "alphas": list(alphas), "solver": solver,
               "time_limit": time_limit, "settings": settings, "table": table,
               "results": [asdict(r) for r in results], "named": [asdict(r) for r in named],
               "failed": lost}
    _save(out, "fixes", payload)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for f in ("MAL_agent_reward", "MAL_random_noise"):
        rows = [e for e in table if e["formulation"] == f]
        ax.plot([e["alpha"] for e in rows], [e["max_gap"] for e in rows], "o-", label=f"{f} max gap")
    for f, st in (("MAL", "--"), ("PAL", ":"), ("PAL_closed_form", "-.")):
        rows = [e for e in table if e["formulation"] == f]
        if rows:
            ax.axhline(rows[0]["max_gap"], ls=st, color={"MAL": "k", "PAL": "g"}.get(f, "c"), label=f"{f} max gap")
    ax.set_xlabel("alpha")
    ax.set_ylabel("largest J* - min J over equilibria")
    ax.set_title(f"{n_mdps} random MDPs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fixes.png", dpi=120)
    return payload


def _failure(r: FixResult) -> str:
    a = "" if r.alpha is None else f"({r.alpha:g})"
    return f"{r.mdp} {r.formulation}{a}: {r.reason or 'failed'}"


def _exit(failed: list[str]) -> int:
    """1 with one line on stderr when some task failed, else 0."""
    if failed:
        more = f" ... ({len(failed) - 3} more)" if len(failed) > 3 else ""
        print(f"error: {len(failed)} task(s) failed: {'; '.join(failed[:3])}{more}",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bilevel.studies", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("theorem", help="numerical check of the PAL theorem")
    t.add_argument("--mdps", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mal-mdps", type=int, default=3, help="extra random 3-state MDPs for MAL terms")
    t.add_argument("--mal-floor", type=float, default=1e-9)
    t.add_argument("--early-mdps", type=int, default=None,
                   help="early-stopped PAL MPEC iterates on the first K MDPs (default: all)")
    c = sub.add_parser("counterexample", help="MAL gap on the k-scaled hidden goal")
    c.add_argument("--scales", type=float, nargs="+", default=[1, 10, 100, 1000])
    c.add_argument("--time-limit", type=float, default=30.0)
    f = sub.add_parser("fixes", help="worst-case gaps of the MAL fixes vs alpha")
    f.add_argument("--mdps", type=int, default=50)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    f.add_argument("--time-limit", type=float, default=10.0)
    f.add_argument("--agent-mdps", type=int, default=None,
                   help="solve MAL_agent_reward on the first K MDPs only (default: all)")
    f.add_argument("--agent-alphas", type=float, nargs="+", default=None)
    f.add_argument("--agent-time-limit", type=float, default=None,
                   help="time limit of the MAL_agent_reward solves (default: --time-limit; "
                        "per policy with enumerate)")
    f.add_argument("--recheck", type=float, default=None, metavar="SECONDS",
                   help="enumerate again, with SECONDS per policy, each MAL-fix result that is "
                        "local with a gap > BAD_GAP; a global result replaces it")
    f.add_argument("--agent-solver", default="ipopt",
                   choices=("scip", "ipopt", "auto", "enumerate"))
    f.add_argument("--no-pal", action="store_true",
                   help="skip the PAL MPEC (the closed-form PAL column is always computed)")
    f.add_argument("--shard", default="0/1", metavar="K/N",
                   help="solve only the MDPs i with i %% N == K (no summary); run the N shards in "
                        "parallel, then once without --shard to print the table from the cache")
    f.add_argument("--fresh", action="store_true",
                   help="ignore per-MDP results cached under OUT/fixes_cache")
    for s in (t, c, f):
        s.add_argument("--out", default="studies_out")
        s.add_argument("--solver", default="scip" if s is f else "auto",
                       choices=("scip", "ipopt", "auto") + (("enumerate",) if s is f else ()),
                       help="auto: SCIP, and IPOPT (local) where SCIP does not certify; "
                            "enumerate (fixes): SCIP per deterministic follower policy "
                            "(bilevel.equilibria.enumeration), --time-limit per policy")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.cmd == "theorem":
        res = run_theorem(a.mdps, a.seed, out, a.mal_mdps, a.solver, a.mal_floor, a.early_mdps)
        if res["violations"]:
            print(f"error: {len(res['violations'])} violation(s) of the PAL theorem",
                  file=sys.stderr)
            return 1
        return _exit(res["failed"])
    if a.cmd == "counterexample":
        return _exit(run_counterexample(a.scales, out, a.solver, a.time_limit)["failed"])
    if a.cmd == "fixes":
        shard = _parse_shard(a.shard)
        if shard is None:
            print(f"error: --shard: expected K/N with integers 0 <= K < N, got {a.shard!r}",
                  file=sys.stderr)
            return 2
        failed: list[str] = []
        run_fixes(a.mdps, a.seed, a.alphas, out, a.solver, a.time_limit, not a.no_pal,
                  a.agent_mdps, a.agent_solver, a.agent_alphas, shard=shard, fresh=a.fresh,
                  agent_time_limit=a.agent_time_limit, recheck=a.recheck, failed=failed)
        return _exit(failed)
    return 2


def _parse_shard(text: str) -> tuple[int, int] | None:
    """`K/N` with integers 0 <= K < N, else None."""
    parts = text.split("/")
    if len(parts) != 2:
        return None
    try:
        k, n = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return (k, n) if 0 <= k < n else None


if __name__ == "__main__":
    raise SystemExit(main())
