"""MAL's worst-case gap on the hidden goal with its hidden rewards scaled by k
(`python -m bilevel.studies counterexample`).

On mdps/hidden_goal.yaml the rewards of the hidden loop, R(A,Y,A) = 0.75 k and R(B,Y,A) = 0.5 k,
are scaled by k. MAL has an equilibrium whose model hides them, so its gap J* - min J over its
equilibria grows in proportion to k; PAL's gap is 0 by its closed form
(bilevel.studies.common.pal_closed_form_gap, an independent check) and within the solver's gap by
its MPEC. The gaps come from the exact equilibrium intervals (strong Stackelberg equilibria).
One task per scale k (bilevel.studies.tasks), stored under OUT/tasks.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bilevel.mdp.io import load_mdp, mdp_from_dict, mdp_to_dict
from bilevel.mdp.model import TabularMDP
from bilevel.studies.common import MDPS, pal_closed_form_gap, pyplot, save_json, true_optimum
from bilevel.studies.tasks import restore, route_seconds, study_sweep, task_time_limit
from bilevel.sweep import Task, task_key

FN = "bilevel.studies.counterexample:"


def scaled_hidden_goal(k: float, path: str | Path = MDPS / "hidden_goal.yaml") -> TabularMDP:
    """hidden_goal with the hidden rewards scaled by k: R(A,Y,A) = 0.75 k, R(B,Y,A) = 0.5 k."""
    d = mdp_to_dict(load_mdp(path))
    d["name"] = f"hidden_goal_k{k:g}"
    d["rewards"]["A"]["Y"] = {"A": 0.75 * k}
    d["rewards"]["B"]["Y"] = {"A": 0.5 * k, "B": -0.05}
    return mdp_from_dict(d, source=f"<hidden_goal x{k:g}>")


@dataclass(frozen=True)
class CounterexampleRow:
    """Gaps J* - min J over the equilibria of MAL and PAL on the k-scaled hidden goal."""

    k: float
    J_star: float
    mal_min_J: float
    mal_gap: float
    pal_min_J: float
    pal_gap: float
    pal_closed_form_gap: float   # J* - J(pi, M), pi greedy in the floored fit P_eta
    mal_certificate: str
    pal_certificate: str
    seconds: float


def counterexample_row(k: float, solver: str = "scip", time_limit: float = 60.0) -> CounterexampleRow:
    """Exact MAL and PAL intervals on the k-scaled hidden goal; gaps J* - min J, and PAL's
    closed-form gap (common.pal_closed_form_gap). A solve that raises is a failed row
    (NaN gaps, certificate "failed: <reason>")."""
    from bilevel.cli.common import failure_reason
    from bilevel.equilibria.interval import EquilibriumInterval
    from bilevel.equilibria.routing import solve_formulation
    t0 = time.perf_counter()
    mdp = scaled_hidden_goal(k)
    J_star, _ = true_optimum(mdp)

    def solve(f):
        try:
            return solve_formulation(mdp, f, solver=solver, time_limit=time_limit)
        except Exception as e:      # recorded as a failed row, the other scales still run
            return EquilibriumInterval(formulation=f, status="failed", reason=failure_reason(e))

    mal, pal = solve("MAL"), solve("PAL")
    nan = float("nan")
    return CounterexampleRow(
        pal_closed_form_gap=pal_closed_form_gap(mdp),
        k=k, J_star=J_star, mal_min_J=mal.low.J if mal.ok else nan,
        mal_gap=J_star - mal.low.J if mal.ok else nan,
        pal_min_J=pal.low.J if pal.ok else nan, pal_gap=J_star - pal.low.J if pal.ok else nan,
        mal_certificate=mal.certificate if mal.ok else f"failed: {mal.reason}",
        pal_certificate=pal.certificate if pal.ok else f"failed: {pal.reason}",
        seconds=time.perf_counter() - t0)


def row_result(k: float, solver: str, time_limit: float) -> dict:
    """asdict(counterexample_row(k, solver, time_limit)): a task of the counterexample sweep."""
    return asdict(counterexample_row(k, solver=solver, time_limit=time_limit))


def row_task(k: float, solver: str, time_limit: float) -> Task:
    """The task of scale k, keyed by the scaled MDP's content; its time limit covers the MAL
    and PAL solves (tasks.task_time_limit)."""
    mdp = scaled_hidden_goal(k)
    kwargs = {"k": float(k), "solver": solver, "time_limit": float(time_limit)}
    return Task(FN + "row_result", kwargs, key=task_key(FN + "row_result", kwargs, mdp),
                label=f"{mdp.name}-{solver}",
                time_limit=task_time_limit(2 * route_seconds(mdp, solver, time_limit)))


def row_from_record(record: dict, k: float) -> CounterexampleRow:
    """The row of a scale's record (null numbers are NaN); for a failed record (a time limit, a
    lost worker) J* and PAL's closed-form gap, NaN gaps and certificates "failed: <reason>"."""
    if record["status"] == "ok":
        return restore(CounterexampleRow, record["result"])
    mdp, nan = scaled_hidden_goal(k), float("nan")
    why = f"failed: {record['reason']}"
    return CounterexampleRow(k=k, J_star=true_optimum(mdp)[0], mal_min_J=nan, mal_gap=nan,
                             pal_min_J=nan, pal_gap=nan,
                             pal_closed_form_gap=pal_closed_form_gap(mdp), mal_certificate=why,
                             pal_certificate=why, seconds=nan)


def run_counterexample(scales, out: Path, solver: str = "scip", time_limit: float = 60.0,
                       sweep: dict | None = None, fresh: bool = False) -> dict:
    """One CounterexampleRow per scale k, each a task of one sweep stored under out/tasks
    (sweep: where the tasks run, bilevel.studies.tasks.study_sweep; fresh: recompute every
    task), printed in order; writes out/counterexample.json and out/counterexample.png and
    returns the JSON payload, whose "failed" lists each failed solve."""
    records = study_sweep([row_task(k, solver, time_limit) for k in scales], out,
                          "counterexample", sweep, fresh)
    rows = [row_from_record(rec, float(k)) for k, rec in zip(scales, records)]
    print("hidden goal scaled by k (A/Y loop 0.75k, B-Y->A 0.5k); J discounted; "
          "strong (optimistic) Stackelberg equilibria; gap = J* - min J over equilibria")
    print(f"{'k':>6} {'J*':>10} {'MAL min J':>10} {'MAL gap':>10} {'gap/k':>8} "
          f"{'PAL min J':>10} {'PAL gap':>9} {'PAL cf gap':>10} {'MAL cert':>8} {'PAL cert':>8} {'s':>6}")
    for r in rows:
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
    save_json(out, "counterexample", payload)
    plt = pyplot()
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
