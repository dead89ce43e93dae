"""Model-based RL under a misspecified model class (`python -m bilevel.studies misspecified`).

For each MDP and each state aggregation of increasing coarseness (a partition of the states whose
groups share one next-state distribution per action, bilevel.mdp.model_class; "none" is the
tabular class), one row:

    J*              sup_pi J(pi, M) (value iteration in the true MDP)
    intervals       [min J, max J] over the equilibria of PAL, MAL, MAL + random noise and
                    MAL + agent true reward (default alphas) with the model restricted to the class
    ML              plain maximum likelihood: Phat_0 = the class's fit to the uniform policy's data
                    (TabularMDP.reference_fit), pi_0 = greedy in Phat_0; J(pi_0, M)
    iterated ML     pi_{k+1} = greedy in argmin_{Phat in class} l(Phat, mu_M^{pi_k}), from pi_0,
                    until a policy repeats or ML_ROUNDS rounds: what a plain MBRL loop settles on;
                    its J is the fixed point's J(pi, M), or the largest over a cycle's policies
    eps_M           min_{Phat in class} l(Phat, mu_M^pi) at PAL's low-end policy pi: the class's
                    irreducible error on PAL's own data
    bound           4 gamma sqrt(eps_M) R_max / (1-gamma)^2 (common.pal_bound, eps_pi = 0: the
                    low end is leader-optimal); holds: J* - PAL's min J <= bound; tightness: their
                    ratio. The theorem's premise bounds the loss of EVERY policy; this eps_M is the
                    one at PAL's policy, the premise's smallest admissible value.

MDPs: mdps/aggregated_trap.yaml, mdps/hidden_goal.yaml and small Garnets (4 states, 2 actions,
start in state 0). A group keeps its live states only (terminal states are absorbing in every
class); an aggregation without a group of two live states is the tabular class and is skipped.
Each interval is a task of the sweep engine (bilevel.studies.tasks) stored under OUT/tasks by
its content key; J*, the ML returns and eps_M (value iterations and closed-form fits) are not.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bilevel.mdp.garnet import garnet
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import TabularMDP, with_model_class
from bilevel.mdp.model_class import TABULAR, ModelClass
from bilevel.studies.common import MDPS, model_optimum, pal_bound, pyplot, save_json, true_optimum
from bilevel.studies.fixes import BAD_GAP
from bilevel.studies.tasks import restore, route_seconds, study_sweep, task_time_limit
from bilevel.sweep import Task, task_key

FORMULATIONS = ("PAL", "MAL", "MAL_random_noise", "MAL_agent_true_reward")
ML_ROUNDS = 20            # rounds of iterated maximum likelihood at most
BOUND_TOL = 1e-9          # J* - min J <= bound + BOUND_TOL counts as the bound holding
FN = "bilevel.studies.misspecified:"

# the named MDPs and their aggregations (groups of state names; None: tabular, "file": the file's)
NAMED = (("aggregated_trap.yaml", (None, "file", (("start", "left", "right"),))),
         ("hidden_goal.yaml", (None, (("A", "B"),))))
# the Garnets' aggregations (groups of state indices), pairs merged, then coarser
GARNET_AGGREGATIONS = (None, ((0, 1),), ((0, 1), (2, 3)), ((0, 1, 2, 3),))


# --------------------------------------------------------------------------- MDPs and classes

def study_garnet(i: int, seed: int) -> TabularMDP:
    """Garnet number i of the study: 4 states, 2 actions, branching 2, start in state 0,
    gamma 0.9, model support all."""
    rng = np.random.default_rng([seed, i, 11])
    return garnet(4, 2, 2, seed=int(rng.integers(2**31)), gamma=0.9, initial="first",
                  support="all", name=f"mis{i}_S4_A2")


def base_mdp(source: str, seed: int) -> TabularMDP:
    """The MDP a source names: "FILE.yaml" (under mdps/) or "garnet:I" (study_garnet(I, seed))."""
    if source.startswith("garnet:"):
        return study_garnet(int(source.split(":", 1)[1]), seed)
    return load_mdp(MDPS / source)


def live_partition(mdp: TabularMDP, groups) -> tuple | None:
    """The full partition of the aggregated class with `groups` (state indices): each group keeps
    its live states, groups of fewer than two live states are dropped, every other state is alone.
    None when no group is left (the class is the tabular one)."""
    kept = [tuple(int(s) for s in g if not mdp.terminal[s]) for g in groups]
    kept = [g for g in kept if len(g) >= 2]
    if not kept:
        return None
    grouped = {s for g in kept for s in g}
    return tuple(kept) + tuple((s,) for s in range(mdp.n_states) if s not in grouped)


def class_mdp(mdp: TabularMDP, partition) -> TabularMDP:
    """mdp with the aggregated class of `partition` (None: the tabular class)."""
    if partition is None:
        return with_model_class(mdp, TABULAR)
    return with_model_class(mdp, ModelClass("aggregated",
                                            partition=tuple(tuple(g) for g in partition)))


def aggregation_label(mdp: TabularMDP, partition) -> str:
    """"none", or the groups of two or more states by name, e.g. [[left,right]]."""
    if partition is None:
        return "none"
    groups = [g for g in partition if len(g) >= 2]
    return "[" + ",".join("[" + ",".join(mdp.states[s] for s in g) + "]" for g in groups) + "]"


def study_rows(n_garnets: int, seed: int) -> list[tuple[str, tuple | None]]:
    """(source, partition) of every row in table order; identical and trivial aggregations of an
    MDP appear once."""
    out = []
    for source, aggs in NAMED + tuple((f"garnet:{i}", GARNET_AGGREGATIONS)
                                      for i in range(n_garnets)):
        mdp, seen = base_mdp(source, seed), set()
        sidx = {s: i for i, s in enumerate(mdp.states)}
        for agg in aggs:
            groups = mdp.model_class.partition if agg == "file" else agg
            part = None if agg is None else live_partition(
                mdp, [[sidx.get(s, s) for s in g] for g in groups])
            if agg is not None and part is None:
                continue
            key = None if part is None else frozenset(frozenset(g) for g in part)
            if key not in seen:
                seen.add(key)
                out.append((source, part))
    return out


# --------------------------------------------------------------------------- maximum likelihood

def greedy(mdp: TabularMDP, Phat: np.ndarray) -> np.ndarray:
    """The greedy optimal policy of the model Phat with the model reward rhat = sum_s' Phat R."""
    return model_optimum(mdp, Phat)[1]


@dataclass(frozen=True)
class MaximumLikelihood:
    """Plain and iterated maximum-likelihood model-based RL in one class."""

    J: float                 # J(pi_0, M), pi_0 greedy in the class's fit to uniform data
    policy: list
    iterated_J: float        # J(pi, M) of the fixed point; the largest over a cycle's policies
    iterated_policy: list    # the fixed point; in a cycle the policy of iterated_J
    cycle_J: list            # J(pi, M) of the policies the loop repeats (one: a fixed point)
    rounds: int              # fits made by the loop
    end: str                 # fixed point | cycle | round limit


def maximum_likelihood(mdp: TabularMDP, rounds: int = ML_ROUNDS) -> MaximumLikelihood:
    """pi_0 = greedy(reference_fit), then pi_{k+1} = greedy(class_fit(mu_M^{pi_k})) until
    pi_{k+1} is a policy already seen (a fixed point when it is pi_k, else a cycle: the policies
    from its first visit on) or `rounds` fits were made (the last policy); the returns are
    J(pi, M) = mdp.true_return(pi)."""
    pi0 = greedy(mdp, mdp.reference_fit())
    seen, end, k = [pi0], "round limit", 0
    cycle = [pi0]
    for k in range(1, rounds + 1):
        nxt = greedy(mdp, mdp.class_fit(mdp.data_occupancy(seen[-1])))
        first = next((i for i, p in enumerate(seen) if np.array_equal(nxt, p)), None)
        if first is not None:
            end = "fixed point" if first == len(seen) - 1 else "cycle"
            cycle = seen[first:]
            break
        seen.append(nxt)
        cycle = [nxt]
    J = [mdp.true_return(p) for p in cycle]
    best = int(np.argmax(J))
    return MaximumLikelihood(J=mdp.true_return(pi0), policy=pi0.tolist(), iterated_J=J[best],
                             iterated_policy=cycle[best].tolist(), cycle_J=J, rounds=k, end=end)


# --------------------------------------------------------------------------- intervals (tasks)

@dataclass(frozen=True)
class IntervalResult:
    """[min J, max J] over one formulation's equilibria in one class (NaN when it failed)."""

    mdp: str
    aggregation: str
    formulation: str
    alpha: float | None
    ok: bool
    J_min: float
    J_max: float
    certificate: str
    solver: str
    seconds: float
    reason: str = ""
    low_policy: list | None = None     # the policy of the low end


def interval_result(source: str, seed: int, partition, formulation: str, solver: str,
                    time_limit: float) -> dict:
    """asdict(IntervalResult) of solve_formulation on the class-restricted MDP (default alpha):
    a task of the misspecified sweep. A solve that raises is a failed result with its reason."""
    from bilevel.cli.common import failure_reason
    from bilevel.equilibria.routing import solve_formulation
    base = base_mdp(source, seed)
    mdp = class_mdp(base, partition)
    label, nan = aggregation_label(base, partition), float("nan")
    t0 = time.perf_counter()
    try:
        res = solve_formulation(mdp, formulation, solver=solver, time_limit=time_limit)
    except Exception as e:      # a failed result; the study goes on
        return asdict(IntervalResult(mdp.name, label, formulation, None, False, nan, nan, "none",
                                     solver, time.perf_counter() - t0, failure_reason(e)))
    return asdict(IntervalResult(
        mdp.name, label, formulation, res.alpha, res.ok, res.low.J if res.ok else nan,
        res.high.J if res.ok else nan, res.certificate, res.solver, res.seconds, res.reason,
        res.low.policy.tolist() if res.ok else None))


def interval_task(source: str, seed: int, partition, formulation: str, solver: str,
                  time_limit: float) -> Task:
    """The task of one interval, keyed by the class-restricted MDP's content; its time limit
    covers the solver's own limits (tasks.task_time_limit)."""
    base = base_mdp(source, seed)
    mdp = class_mdp(base, partition)
    kwargs = {"source": source, "seed": seed,
              "partition": None if partition is None else [list(g) for g in partition],
              "formulation": formulation, "solver": solver, "time_limit": float(time_limit)}
    limit = route_seconds(mdp, solver, time_limit)
    return Task(FN + "interval_result", kwargs, key=task_key(FN + "interval_result", kwargs, mdp),
                label=f"{mdp.name}-{aggregation_label(base, partition)}-{formulation}",
                time_limit=task_time_limit(limit), cost=limit if mdp.restricted else 0.0)


def interval_from_record(record: dict, mdp: str, aggregation: str, formulation: str,
                         solver: str) -> IntervalResult:
    """The IntervalResult of a record; a failed record (a time limit, a lost worker) is a failed
    result with its reason."""
    if record["status"] == "ok":
        return restore(IntervalResult, record["result"])
    nan = float("nan")
    return IntervalResult(mdp, aggregation, formulation, None, False, nan, nan, "none", solver,
                          float(record.get("time_limit") or 0.0), record["reason"])


# --------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class MisspecifiedRow:
    """One (MDP, aggregation): J*, the intervals, the ML returns and PAL's bound."""

    mdp: str
    aggregation: str
    partition: list | None         # groups of state names (None: tabular)
    J_star: float
    ml_J: float
    iterated_ml_J: float           # the fixed point's J; the largest over a cycle
    ml_rounds: int
    ml_end: str
    eps_M: float                   # class error at PAL's low-end policy (NaN: PAL failed)
    bound: float
    bound_holds: bool | None
    tightness: float               # (J* - PAL's min J) / bound
    intervals: dict                # formulation -> asdict(IntervalResult)


def build_row(source: str, seed: int, partition, records: list, solver: str) -> MisspecifiedRow:
    """The row of (source, partition) from the records of its intervals (FORMULATIONS order)."""
    base = base_mdp(source, seed)
    mdp, label = class_mdp(base, partition), aggregation_label(base, partition)
    intervals = {f: interval_from_record(rec, base.name, label, f, solver)
                 for f, rec in zip(FORMULATIONS, records)}
    J_star, _ = true_optimum(mdp)
    ml = maximum_likelihood(mdp)
    pal, nan = intervals["PAL"], float("nan")
    eps_M = bound = tightness = nan
    holds = None
    if pal.ok:
        # eps_M = min_{Phat in class} l(Phat, mu_M^pi) at PAL's low-end policy pi
        eps_M = mdp.loss_minimum(mdp.data_occupancy(np.array(pal.low_policy, dtype=float)))
        bound = pal_bound(0.0, eps_M, mdp.gamma, mdp.r_max)
        gap = J_star - pal.J_min
        holds = bool(gap <= bound + BOUND_TOL)
        tightness = gap / bound if bound > 0 else nan
    names = None if partition is None else [[base.states[s] for s in g] for g in partition]
    return MisspecifiedRow(mdp=base.name, aggregation=label,
                           partition=names, J_star=J_star, ml_J=ml.J,
                           iterated_ml_J=ml.iterated_J, ml_rounds=ml.rounds, ml_end=ml.end,
                           eps_M=eps_M, bound=bound, bound_holds=holds, tightness=tightness,
                           intervals={f: asdict(r) for f, r in intervals.items()})


def summary(rows: list[MisspecifiedRow]) -> dict:
    """Counts over the rows whose intervals were found: PAL's min J >= iterated ML's J - BAD_GAP
    (PAL still beats plain maximum likelihood); a MAL fix's min J < J* - BAD_GAP (the fix fails);
    the bound holding, and the median tightness."""
    def low(f):     # (row, min J) of the rows where f's interval was found
        return [(r, r.intervals[f]["J_min"]) for r in rows if r.intervals[f]["ok"]]

    pal = low("PAL")
    tight = [r.tightness for r, _ in pal if math.isfinite(r.tightness)]
    out = {"rows": len(rows), "pal_solved": len(pal),
           "pal_beats_iterated_ml": sum(J >= r.iterated_ml_J - BAD_GAP for r, J in pal),
           "bound_holds": sum(bool(r.bound_holds) for r, _ in pal),
           "median_tightness": float(np.median(tight)) if tight else float("nan")}
    for f in ("MAL_random_noise", "MAL_agent_true_reward"):
        out[f"{f}_solved"] = len(low(f))
        out[f"{f}_fails"] = sum(J < r.J_star - BAD_GAP for r, J in low(f))
    return out


SHORT = {"PAL": "PAL", "MAL": "MAL", "MAL_random_noise": "MAL_rn",
         "MAL_agent_true_reward": "MAL_atr"}


def print_table(rows: list[MisspecifiedRow]) -> None:
    """One line per row: J*, each interval [min, max] with its certificate (g global, l local,
    - failed), ML and iterated ML returns, eps_M, the bound and its tightness."""
    head = "".join(f" {SHORT[f] + ' [min, max]':>18}" for f in FORMULATIONS)
    print(f"{'mdp':<15} {'aggregation':<21} {'J*':>7}{head} {'ML J':>7} {'iterML J':>8} "
          f"{'eps_M':>8} {'bound':>8} {'holds':>5} {'tight':>7}")
    for r in rows:
        cells = ""
        for f in FORMULATIONS:
            i = r.intervals[f]
            c = {"global": "g", "local": "l"}.get(i["certificate"], "?") if i["ok"] else "-"
            cells += f" [{i['J_min']:7.3f},{i['J_max']:7.3f}]{c}"
        holds = "-" if r.bound_holds is None else ("yes" if r.bound_holds else "NO")
        end = {"fixed point": " ", "cycle": "c"}.get(r.ml_end, "r")
        print(f"{r.mdp:<15} {r.aggregation:<21} {r.J_star:7.3f}{cells} {r.ml_J:7.3f} "
              f"{r.iterated_ml_J:7.3f}{end} {r.eps_M:8.2g} {r.bound:8.3g} {holds:>5} "
              f"{r.tightness:7.2g}", flush=True)


def run_misspecified(n_garnets: int, seed: int, out: Path, solver: str = "auto",
                     time_limit: float = 30.0, sweep: dict | None = None,
                     fresh: bool = False) -> dict:
    """Every (MDP, aggregation) row of the study (study_rows): its four intervals as tasks of one
    sweep stored under out/tasks (sweep: where the tasks run, bilevel.studies.tasks.study_sweep;
    fresh: recompute every task), then J*, the ML returns and PAL's bound here. Prints the table
    and the summary, writes out/misspecified.json and out/misspecified.png; returns the JSON
    payload, whose "failed" holds one line per failed interval."""
    t0, n = time.perf_counter(), len(FORMULATIONS)
    specs = study_rows(n_garnets, seed)
    tasks = [interval_task(source, seed, part, f, solver, time_limit)
             for source, part in specs for f in FORMULATIONS]
    records = study_sweep(tasks, out, "misspecified", sweep, fresh)
    rows = [build_row(source, seed, part, records[n * j:n * (j + 1)], solver)
            for j, (source, part) in enumerate(specs)]
    failed = [f"{r.mdp} {r.aggregation} {f}: {r.intervals[f]['reason'] or 'failed'}"
              for r in rows for f in FORMULATIONS if not r.intervals[f]["ok"]]
    solver_seconds = sum(r.intervals[f]["seconds"] for r in rows for f in FORMULATIONS)
    print(f"\nmisspecified: {len(rows)} (MDP, aggregation) rows: aggregated_trap, hidden_goal and "
          f"{n_garnets} Garnets (S 4, A 2, gamma 0.9, start in s0, seed {seed}); solver {solver}, "
          f"time limit {time_limit:g} s per solve; solver time {solver_seconds:.0f} s (this run "
          f"{time.perf_counter() - t0:.0f} s, {records.counts['reused']} of {len(tasks)} tasks "
          "reused); J discounted; intervals [min J, max J] over equilibria with the model in the "
          "class (g global, l local, - failed); ML = greedy in the class's fit to uniform data, "
          "iterML = iterated ML's fixed point (c: the best policy of a cycle, r: the last of "
          f"{ML_ROUNDS} rounds); eps_M = min over the class of l(Phat, mu) at PAL's "
          "low-end policy; bound = 4 gamma sqrt(eps_M) R_max / (1-gamma)^2; tight = "
          "(J* - PAL min J) / bound")
    print_table(rows)
    s = summary(rows)
    print(f"PAL's min J >= iterated ML's J - {BAD_GAP:g} (PAL still beats plain maximum "
          f"likelihood): {s['pal_beats_iterated_ml']} of {s['pal_solved']} rows")
    for f in ("MAL_random_noise", "MAL_agent_true_reward"):
        print(f"{f} min J < J* - {BAD_GAP:g} (the fix fails): {s[f + '_fails']} of "
              f"{s[f + '_solved']} rows")
    print(f"PAL bound (eps_pi = 0, eps_M at PAL's low end) holds: {s['bound_holds']} of "
          f"{s['pal_solved']} rows; median tightness {s['median_tightness']:.3g}")
    payload = {"n_garnets": n_garnets, "seed": seed, "solver": solver, "time_limit": time_limit,
               "formulations": list(FORMULATIONS), "summary": s,
               "rows": [asdict(r) for r in rows], "failed": failed}
    save_json(out, "misspecified", payload)
    _plot(rows, out / "misspecified.png")
    return payload


def _plot(rows: list[MisspecifiedRow], path: Path) -> None:
    """One panel per MDP (its own scale); per row each formulation's interval as a vertical bar,
    J* as a black tick, the ML and iterated-ML returns as markers."""
    plt = pyplot()
    mdps = list(dict.fromkeys(r.mdp for r in rows))
    width = [sum(r.mdp == m for r in rows) for m in mdps]
    fig, axes = plt.subplots(1, len(mdps), figsize=(0.8 * len(rows) + 3, 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": width})
    offsets = np.linspace(-0.3, 0.3, len(FORMULATIONS))
    colors = dict(zip(FORMULATIONS, ("tab:green", "tab:red", "tab:orange", "tab:purple")))
    for ax, m in zip(axes[0], mdps):
        mine = [r for r in rows if r.mdp == m]
        for x, r in enumerate(mine):
            for dx, f in zip(offsets, FORMULATIONS):
                if r.intervals[f]["ok"]:
                    ax.plot([x + dx] * 2, [r.intervals[f]["J_min"], r.intervals[f]["J_max"]],
                            "-_", color=colors[f], lw=2, label=f)
            ax.plot([x - 0.4, x + 0.4], [r.J_star] * 2, "k-", lw=1, label="J*")
            ax.plot(x - 0.4, r.ml_J, "x", color="tab:blue", label="ML")
            ax.plot(x + 0.4, r.iterated_ml_J, "+", color="tab:blue", ms=9, label="iterated ML")
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels([r.aggregation for r in mine], rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.set_title(m, fontsize=8)
    axes[0][0].set_ylabel("J(pi, M) (discounted)")
    handles = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), fontsize=7, ncol=7, loc="upper center")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=120)
