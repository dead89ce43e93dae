"""Worst-case gaps of MAL's fixes against alpha (`python -m bilevel.studies fixes`).

On small random MDPs, gap = J* - min J(pi, M) over the equilibria of MAL, MAL + agent reward
(alpha), MAL + random noise (alpha), PAL (MPEC) and PAL's closed form
(bilevel.studies.common.pal_closed_form_gap); then plain MAL on the deterministic and ergodic
hidden goals. An equilibrium more than BAD_GAP below J* counts as a bad one.

Each result is one task of the sweep engine (bilevel.studies.tasks): a unit
(MDP i, formulation, alpha, requested solver, time limit) whose record is stored under OUT/tasks
by its content key (the MDP's numbers, the unit and the code version) as it finishes, so a
stopped study resumes and more alphas extend a finished one. The named hidden goals run in the
same sweep; a second sweep enumerates again the units --recheck applies to.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bilevel.cli.output import logger
from bilevel.game.formulations import DEFAULT_ALPHA
from bilevel.game.formulations import formulation as formulation_of
from bilevel.mdp.garnet import garnet
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import TabularMDP
from bilevel.studies.common import MDPS, pal_closed_form_gap, pyplot, save_json, true_optimum
from bilevel.studies.tasks import restore, route_seconds, study_sweep, task_time_limit
from bilevel.sweep import Task, task_key

BAD_GAP = 1e-3          # an equilibrium this far below J* counts as a bad one
FORMULATION_ORDER = ["MAL", "MAL_agent_reward", "MAL_random_noise", "PAL", "PAL_closed_form"]


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
    bilevel.equilibria.enumeration (time_limit per policy); gap = J* - low.J (J discounted).
    A solve that raises is a failed result (gap NaN, the reason recorded)."""
    from bilevel.cli.common import failure_reason
    from bilevel.equilibria.enumeration import enumerate_interval
    from bilevel.equilibria.routing import solve_formulation
    J_star, _ = true_optimum(mdp)
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
    """PAL's closed-form equilibrium as a FixResult: gap = common.pal_closed_form_gap(mdp)."""
    t0 = time.perf_counter()
    gap = pal_closed_form_gap(mdp)
    return FixResult(mdp=mdp.name, formulation="PAL_closed_form", alpha=None, ok=True, gap=gap,
                     solver="value_iteration", certificate="closed_form",
                     seconds=time.perf_counter() - t0)


def failure_line(r: FixResult) -> str:
    """'<mdp> <formulation>(<alpha>): <reason>' for a failed result."""
    a = "" if r.alpha is None else f"({r.alpha:g})"
    return f"{r.mdp} {r.formulation}{a}: {r.reason or 'failed'}"


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


Unit = tuple    # (formulation, alpha or None, requested solver, time limit or None)
FN = "bilevel.studies.fixes:"


def fixes_units(settings: dict, with_agent: bool) -> list[Unit]:
    """The units of one MDP in table order: MAL, MAL + random noise per alpha, PAL (with_pal),
    MAL + agent reward per agent alpha (with_agent), PAL's closed form."""
    solver, tl = settings["solver"], settings["time_limit"]
    units = [("MAL", None, solver, tl)] + [("MAL_random_noise", a, solver, tl)
                                           for a in settings["alphas"]]
    if settings["with_pal"]:
        units.append(("PAL", None, solver, tl))
    if with_agent:
        units += [("MAL_agent_reward", a, settings["agent_solver"], settings["agent_time_limit"])
                  for a in settings["agent_alphas"]]
    return units + [("PAL_closed_form", None, "closed_form", None)]


def recheck_unit(r: FixResult, recheck: float | None) -> Unit | None:
    """(formulation, alpha, "enumerate", recheck) for a MAL-fix result that is local with a gap
    > BAD_GAP (a bad gap that is not proved), else None."""
    if recheck and r.formulation in DEFAULT_ALPHA and r.ok \
            and r.certificate == "local" and r.gap > BAD_GAP:
        return (r.formulation, r.alpha, "enumerate", float(recheck))
    return None


def unit_result(i: int, seed: int, formulation: str, alpha, solver: str,
                time_limit: float) -> dict:
    """asdict(worst_gap(fixes_mdp(i, seed), ...)), with one IPOPT start for MAL + agent reward
    (8 otherwise): a task of the fixes sweep."""
    starts = 1 if solver == "ipopt" and formulation_of(formulation).polish_only else 8
    return asdict(worst_gap(fixes_mdp(i, seed), formulation, alpha, solver, time_limit,
                            starts=starts))


def closed_form_result(i: int, seed: int) -> dict:
    """asdict(pal_closed_form(fixes_mdp(i, seed))): a task of the fixes sweep."""
    return asdict(pal_closed_form(fixes_mdp(i, seed)))


def named_result(file: str, solver: str, time_limit: float) -> dict:
    """asdict(worst_gap) of plain MAL on mdps/FILE: a task of the fixes sweep."""
    return asdict(worst_gap(load_mdp(MDPS / file), "MAL", None, solver, time_limit))


def unit_task(mdp: TabularMDP, i: int, seed: int, unit: Unit) -> Task:
    """The task of `unit` on mdp = fixes_mdp(i, seed), keyed by the MDP's content; a solve gets
    the time limit tasks.task_time_limit of its solver's own limits."""
    f, a, which, limit = unit
    label = f"{mdp.name}-{f}" + ("" if a is None else f"-{a:g}") + f"-{which}"
    if f == "PAL_closed_form":
        kwargs = {"i": i, "seed": seed}
        return Task(FN + "closed_form_result", kwargs, label=label,
                    key=task_key(FN + "closed_form_result", kwargs, mdp))
    kwargs = {"i": i, "seed": seed, "formulation": f, "alpha": a, "solver": which,
              "time_limit": limit}
    return Task(FN + "unit_result", kwargs, key=task_key(FN + "unit_result", kwargs, mdp),
                label=label, time_limit=task_time_limit(route_seconds(mdp, which, limit)))


def named_task(file: str, solver: str, time_limit: float) -> tuple[Task, TabularMDP]:
    """The task of plain MAL on mdps/FILE, and the MDP."""
    mdp = load_mdp(MDPS / file)
    kwargs = {"file": file, "solver": solver, "time_limit": time_limit}
    return Task(FN + "named_result", kwargs, key=task_key(FN + "named_result", kwargs, mdp),
                label=f"{mdp.name}-MAL-{solver}",
                time_limit=task_time_limit(route_seconds(mdp, solver, time_limit))), mdp


def fix_from_record(record: dict, mdp: str, unit: Unit) -> FixResult:
    """The FixResult of a unit's record: its result (a null gap is NaN), or for a failed record
    (a time limit, a lost worker) a failed result with the record's reason (seconds: the time
    limit it exceeded, else 0)."""
    if record["status"] == "ok":
        return restore(FixResult, record["result"])
    f, a, which, _ = unit
    return FixResult(mdp=mdp, formulation=f, alpha=a, ok=False, gap=float("nan"), solver=which,
                     certificate="none", seconds=float(record.get("time_limit") or 0.0),
                     reason=record["reason"])


def run_fixes(n_mdps: int, seed: int, alphas, out: Path, solver: str = "scip",
              time_limit: float = 10.0, with_pal: bool = True, agent_mdps: int | None = None,
              agent_solver: str = "ipopt", agent_alphas=None,
              agent_time_limit: float | None = None, recheck: float | None = None,
              sweep: dict | None = None, fresh: bool = False) -> dict:
    """Worst-case gaps of MAL, MAL + agent reward (alpha), MAL + random noise (alpha) and PAL
    over n_mdps random MDPs, then plain MAL on the deterministic and ergodic hidden goals.
    MAL + agent reward is the expensive one (SCIP did not certify it within 15 s even on
    3-state Garnets; IPOPT with one random start takes ~30 s): it is solved with `agent_solver`
    (one start for IPOPT) on the first `agent_mdps` MDPs only (None: all), at `agent_alphas`.
    Every unit is a task of the sweep engine, stored under out/tasks (sweep: where the tasks
    run, bilevel.studies.tasks.study_sweep; fresh: recompute every task). The payload's
    "failed" holds one line per failed result. Prints the table, writes out/fixes.json and
    out/fixes.png; returns the JSON payload."""
    log = logger("studies")
    agent_alphas = alphas if agent_alphas is None else agent_alphas
    agent_mdps = n_mdps if agent_mdps is None else agent_mdps
    settings = fixes_settings(seed, alphas, solver, time_limit, with_pal, agent_solver,
                              agent_alphas, agent_time_limit, recheck)
    t0 = time.perf_counter()
    mdps = [fixes_mdp(i, seed) for i in range(n_mdps)]
    units = [(i, u) for i in range(n_mdps) for u in fixes_units(settings, i < agent_mdps)]
    tasks = [unit_task(mdps[i], i, seed, u) for i, u in units]
    named_files = ("hidden_goal_deterministic.yaml", "hidden_goal_ergodic.yaml")
    named_tasks = [named_task(f, solver, max(time_limit, 30.0)) for f in named_files]
    records = study_sweep(tasks + [t for t, _ in named_tasks], out, "fixes", sweep, fresh)
    reused, n_tasks = records.counts["reused"], len(tasks) + len(named_tasks)
    done = {(i, u): fix_from_record(rec, mdps[i].name, u) for (i, u), rec in zip(units, records)}
    results = [done[k] for k in units]
    # a fix's bad gap that is not proved: the enumeration again, with `recheck` s per policy
    again = [(j, (units[j][0], u)) for j, r in enumerate(results)
             if (u := recheck_unit(r, recheck)) is not None]
    new = list(dict.fromkeys(k for _, k in again if k not in done))
    if new:
        second = study_sweep([unit_task(mdps[i], i, seed, u) for i, u in new], out,
                             "fixes-recheck", sweep, fresh)
        reused, n_tasks = reused + second.counts["reused"], n_tasks + len(new)
        done.update({(i, u): fix_from_record(rec, mdps[i].name, u)
                     for (i, u), rec in zip(new, second)})
    for j, k in again:
        if done[k].ok and done[k].certificate == "global":
            results[j] = done[k]
    for i in range(n_mdps):
        rs = [r for (m, _), r in zip(units, results) if m == i]
        log.info(f"  {rs[0].mdp}: " + ", ".join(
            f"{r.formulation}{'' if r.alpha is None else f'({r.alpha:g})'}="
            f"{r.gap:.3g}" for r in rs))
    lost = [failure_line(r) for r in results if not r.ok]
    print(f"\nfixes: {n_mdps} random MDPs (S 3..4, A 2, gamma 0.9, start in s0), solver {solver}, "
          f"MPEC time limit {time_limit:g} s per solve (exact routes: none); "
          f"MAL_agent_reward on the first {min(agent_mdps, n_mdps)} MDPs with {agent_solver} "
          f"(time limit {settings['agent_time_limit']:g} s{' per policy' if agent_solver == 'enumerate' else ''}); "
          f"solver time {sum(r.seconds for r in results):.0f} s (this run "
          f"{time.perf_counter() - t0:.0f} s, {reused} of {n_tasks} tasks reused); "
          "gap = J* - min J over equilibria found (discounted; exact routes: the limit interval, "
          "docs/DESIGN.md 5.1); global = proved (exact route, SCIP, or a resolved enumeration), "
          "the other solved ones are local (IPOPT, or an enumeration whose bounds did not resolve "
          "the leader optimum); max global = largest gap among the global ones; failed = no "
          "certified end, or a task that failed (not counted)")
    table = summary_table(results)
    named = []
    print("\nplain MAL on the named hidden-goal variants:")
    for (task, mdp), rec in zip(named_tasks, records[len(tasks):]):
        r = fix_from_record(rec, mdp.name, ("MAL", None, solver, task.kwargs["time_limit"]))
        named.append(r)
        if not r.ok:
            lost.append(failure_line(r))
        J_star, _ = true_optimum(mdp)
        print(f"  {mdp.name}: J* = {J_star:.4f}, MAL worst gap = {r.gap:.4f} "
              f"({r.certificate}{'' if r.ok else ', ' + r.reason}) -> "
              f"{'MAL fails' if r.ok and r.gap > 1.0 else 'no failure found'}")
    payload = {"n_mdps": n_mdps, "seed": seed, "alphas": list(alphas), "solver": solver,
               "time_limit": time_limit, "settings": settings, "table": table,
               "results": [asdict(r) for r in results], "named": [asdict(r) for r in named],
               "failed": lost}
    save_json(out, "fixes", payload)
    _plot(table, n_mdps, out / "fixes.png")
    return payload


def summary_table(results: list[FixResult]) -> list[dict]:
    """Per (formulation, alpha): solved, failed, n_global, max_gap_global, max_gap, mean_gap and
    n_bad (gaps > BAD_GAP) over the solved results; printed, and returned as dicts."""
    print(f"{'formulation':>18} {'alpha':>6} {'solved':>7} {'global':>7} {'failed':>7} "
          f"{'max gap':>9} {'mean gap':>9} {f'#gap>{BAD_GAP:g}':>9} {'max global':>10}")
    table = []
    keys = sorted({(r.formulation, r.alpha) for r in results},
                  key=lambda k: (FORMULATION_ORDER.index(k[0]), k[1] or 0))
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
    return table


def _plot(table: list[dict], n_mdps: int, path: Path) -> None:
    """Largest gap against alpha for the two alpha fixes; MAL and PAL as horizontal lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for f in DEFAULT_ALPHA:
        rows = [e for e in table if e["formulation"] == f]
        ax.plot([e["alpha"] for e in rows], [e["max_gap"] for e in rows], "o-", label=f"{f} max gap")
    for f, st in (("MAL", "--"), ("PAL", ":"), ("PAL_closed_form", "-.")):
        rows = [e for e in table if e["formulation"] == f]
        if rows:
            ax.axhline(rows[0]["max_gap"], ls=st, color={"MAL": "k", "PAL": "g"}.get(f, "c"),
                       label=f"{f} max gap")
    ax.set_xlabel("alpha")
    ax.set_ylabel("largest J* - min J over equilibria")
    ax.set_title(f"{n_mdps} random MDPs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
