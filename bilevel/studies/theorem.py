"""Numerical check of the PAL theorem (`python -m bilevel.studies theorem`).

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
  sup_pi' J(pi', Mhat(pi')) = sup_pi' J(pi', Q) = rho0 . V*_Q  (value iteration in Q, with the
           model reward rhat = sum_s' Q R of TabularMDP.model_reward),
  eps_pi = rho0 . V*_Q - J(pi, Q).
The loss itself is used (no floored-fit baseline subtracted), as the theorem states it.
Q comes from (a) the exact floored fit P_eta mixed with a fixed random per-MDP model N with
weight lam, or (b) counts of n transitions sampled from the uniform policy's true occupancy
(an offline data set; add-one smoothing over K keeps Q >= floor), or (c) the iterates of IPOPT
on PAL's MPEC stopped early. Policies pi are the optimal policy of Q mixed with random
(Dirichlet) policies, or with some states' actions flipped (or the MPEC iterate's policy).
R_max = TabularMDP.r_max = max |R(s,a,s')| over the model support K (a model may move mass
anywhere in K, and the model reward uses R there); for Garnet MDPs with support "all" this is
max |R|.

Then, at MAL's worst equilibrium on the hidden-goal MDPs and small Garnets, the terms of
Rajeswaran et al. (2020) Theorem 1 (bilevel.studies.mal_terms): MAL's premise holds only at its
own policy.

The study is a sweep of independent tasks (bilevel.studies.tasks): the instances of each MDP,
its early-stopped iterates, and the MAL terms of each candidate; the summary is computed from
their records in task order.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bilevel.mdp.garnet import garnet
from bilevel.mdp.model import TabularMDP
from bilevel.studies.common import (model_optimum, model_return, pal_bound, pyplot, quantiles,
                                    save_json, true_optimum, worst_case_loss)
from bilevel.studies.mal_terms import mal_terms_tasks, print_mal_terms
from bilevel.studies.tasks import restore, study_sweep
from bilevel.sweep import Task, task_key
from bilevel.tabular.evaluation import policy_return
from bilevel.tabular.fits import kl_fit, random_model
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import uniform_policy

VIOLATION_TOL = 1e-9


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
    """Measure the premises for (pi, Q) (or take them as given, for tests) and check
    J* - J(pi, M) <= pal_bound(eps_pi, eps_M, gamma, R_max)."""
    if eps_M is None:
        eps_M = worst_case_loss(mdp, Q)
    if eps_pi is None:
        eps_pi = max(model_optimum(mdp, Q)[0] - model_return(mdp, Q, pi), 0.0)
    gap = J_star - policy_return(mdp.P, mdp.r, mdp.rho0, mdp.gamma, pi)
    bound = pal_bound(eps_pi, eps_M, mdp.gamma, mdp.r_max)
    tight = gap / bound if bound > 0 else (0.0 if gap <= VIOLATION_TOL else math.inf)
    return TheoremInstance(mdp=mdp.name, n_states=mdp.n_states, n_actions=mdp.n_actions,
                           gamma=mdp.gamma, eps_pi=float(eps_pi), eps_M=float(eps_M),
                           r_max=mdp.r_max, gap=float(gap), bound=float(bound),
                           tightness=float(tight),
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
    Q = np.where(mdp.K, counts.reshape(S, A, S) + 1.0, 0.0)
    return Q / Q.sum(-1, keepdims=True)


def perturbed_policies(pi_opt: np.ndarray, rng: np.random.Generator):
    """(kind, param, pi): the optimal policy, mixtures (1-beta) pi_opt + beta Dirichlet, and
    pi_opt with the actions of k random states rotated."""
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
    """All (model, policy) combinations on one MDP, each checked: Q = (1-lam) P_eta + lam N and
    the sample fits of n transitions, each with the perturbed_policies of Q's optimal policy."""
    J_star, _ = true_optimum(mdp)
    fit, N = kl_fit(mdp.P, mdp.K, mdp.floor), random_model(mdp.K, mdp.floor, rng)
    models = [("perturbed_fit", lam, (1 - lam) * fit + lam * N) for lam in lams]
    models += [("samples", float(n), sample_fit(mdp, n, rng)) for n in ns]
    out = []
    for mk, mp, Q in models:
        eps_M = worst_case_loss(mdp, Q)
        JQ_star, pi_Q = model_optimum(mdp, Q)
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
    J_star, _ = true_optimum(mdp)
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


# --------------------------------------------------------------------------- the study as tasks

FN = "bilevel.studies.theorem:"


def mdp_instances(i: int, seed: int) -> list[dict]:
    """theorem_instances of random_study_mdp(i, seed) with the generator [seed, i, 1], as
    dicts: a task of the theorem sweep."""
    rows = theorem_instances(random_study_mdp(i, seed), np.random.default_rng([seed, i, 1]))
    return [asdict(r) for r in rows]


def early_instances(i: int, seed: int) -> list[dict]:
    """early_stopped_instances of random_study_mdp(i, seed), as dicts: a task of the theorem
    sweep (IPOPT's iterations bound its time)."""
    return [asdict(r) for r in early_stopped_instances(random_study_mdp(i, seed))]


def instance_tasks(n_mdps: int, seed: int, early_mdps: int) -> list[tuple[str, Task]]:
    """(what, task) in row order: for each MDP i its instances, then (i < early_mdps) its
    early-stopped iterates; keyed by the MDP's content."""
    out = []
    for i in range(n_mdps):
        mdp = random_study_mdp(i, seed)
        kwargs = {"i": i, "seed": seed}
        kinds = [("mdp_instances", "instances")]
        if i < early_mdps:
            kinds.append(("early_instances", "early-stopped iterates"))
        for fn, what in kinds:
            out.append((f"{mdp.name} {what}",
                        Task(FN + fn, kwargs, key=task_key(FN + fn, kwargs, mdp),
                             label=f"{mdp.name}-{fn}")))
    return out


def instances_from_record(record: dict) -> list[TheoremInstance]:
    """The instances of a task's ok record (a null tightness is an infinity: bound 0 < gap)."""
    return [restore(TheoremInstance, r, tightness=math.inf) for r in record["result"]]


def run_theorem(n_mdps: int, seed: int, out: Path, mal_mdps: int = 3, solver: str = "scip",
                mal_floor: float = 1e-9, early_mdps: int | None = None,
                sweep: dict | None = None, fresh: bool = False) -> dict:
    """PAL theorem check on n_mdps random MDPs (early-stopped MPEC iterates on the first
    `early_mdps`, None: all), then Rajeswaran's terms at MAL's worst equilibria
    (bilevel.studies.mal_terms; none when mal_mdps = 0). The MAL MDPs use the floor
    `mal_floor`: with the default floor 1e-6 and gamma = 0.99 the solver tolerance band alone
    (loss ~ 5e-6) makes 4 gamma sqrt(eps_M) R_max / (1-gamma)^2 larger than the whole return
    range, which would hide the comparison. One task per MDP, per MDP's early-stopped iterates
    and per MAL candidate, in one sweep stored under out/tasks (sweep: where the tasks run,
    bilevel.studies.tasks.study_sweep; fresh: recompute every task); the payload's "failed"
    lists the failed tasks and MAL solves. Prints the tables, writes out/theorem.json and
    out/theorem.png; returns the JSON payload."""
    t0 = time.perf_counter()
    early_mdps = n_mdps if early_mdps is None else early_mdps
    checks = instance_tasks(n_mdps, seed, early_mdps)
    mal = mal_terms_tasks(mal_mdps, solver, mal_floor) if mal_mdps > 0 else []
    records = study_sweep([t for _, t in checks] + [t for t, _ in mal], out, "theorem", sweep,
                          fresh)
    rows: list[TheoremInstance] = []
    failed = []
    for (what, _), rec in zip(checks, records):
        if rec["status"] == "ok":
            rows.extend(instances_from_record(rec))
        else:
            failed.append(f"{what}: {rec['reason']}")
    viol = [r for r in rows if r.violation]
    tight = np.array([r.tightness for r in rows])
    q = quantiles(tight) if rows else {}
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
    mal_rows, mal_failed = (print_mal_terms(records[len(checks):], [m for _, m in mal], mal_floor)
                            if mal else ([], []))
    payload = {"n_mdps": n_mdps, "seed": seed, "n_instances": len(rows),
               "violations": [asdict(r) for r in viol], "tightness_quantiles": q,
               "by_model": by_model, "instances": [asdict(r) for r in rows],
               "mal_terms": [asdict(t) for t in mal_rows],
               "failed": failed + [f"{m['mdp']} MAL terms: {m['reason']}" for m in mal_failed]}
    save_json(out, "theorem", payload)
    if rows:
        _plot(rows, n_mdps, len(viol), out / "theorem.png")
    return payload


def _plot(rows: list[TheoremInstance], n_mdps: int, n_viol: int, path: Path) -> None:
    """Gap against bound (log-log) and the histogram of the tightness gap / bound."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    b = np.array([r.bound for r in rows])
    g = np.array([r.gap for r in rows])
    tight = np.array([r.tightness for r in rows])
    ax[0].loglog(np.maximum(b, 1e-12), np.maximum(g, 1e-12), ".", ms=2, alpha=.5)
    lim = [1e-12, max(b.max(), 1)]
    ax[0].plot(lim, lim, "k--", lw=1, label="gap = bound")
    ax[0].set_xlabel("bound eps_pi + 4 gamma sqrt(eps_M) R_max/(1-gamma)^2")
    ax[0].set_ylabel("gap J(pi*,M) - J(pi,M)  (clipped at 1e-12)")
    ax[0].legend()
    ax[1].hist(tight[tight > 0], bins=np.logspace(-8, 0, 41))
    ax[1].set_xscale("log")
    ax[1].set_xlabel("tightness gap / bound")
    ax[1].set_title(f"{len(rows)} solutions on {n_mdps} MDPs, {n_viol} violations")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
