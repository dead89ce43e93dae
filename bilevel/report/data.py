"""The report's numbers: everything written to data.json, computed from the MDP file, the exact
equilibria (`bilevel.equilibria.document.solve_to_dict`, or a saved `bilevel.solve --json`
document), the alpha sweeps of both MAL fixes (`alpha_sweep`), the run records of
`python -m bilevel.train` checked by `bilevel.verify.verify_runs`, and the saved studies.
Nothing here formats or draws."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bilevel.cache import ROOT, cache_key
from bilevel.game.formulations import DEFAULT_ALPHA
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import MDPError, TabularMDP
from bilevel.report.figures import LABELS, PROB_MIN, lying_pairs
from bilevel.equilibria.document import SWEEP_ALPHAS
from bilevel.studies.fixes import BAD_GAP
from bilevel.studies.reference import reference_for
from bilevel.tabular.occupancy import occupancy

NAMES = LABELS
SWEPT = tuple(DEFAULT_ALPHA)   # the formulations that take an alpha


class ReportError(ValueError):
    """Bad input to the report (one-line message)."""


def _quiet(msg: str) -> None:
    """The `log` of a caller that wants no progress messages."""


def report_mdp(path: str, occupancy: str | None = None, model_class: str | None = None) -> TabularMDP:
    """The file's MDP, with another occupancy or model class (`--occupancy`, `--model-class`)."""
    from bilevel.cli.common import apply_model_class
    try:
        mdp = load_mdp(path)
        if occupancy is not None:
            mdp = mdp.with_(occupancy=occupancy)
        return apply_model_class(mdp, model_class)
    except MDPError as e:
        raise ReportError(str(e)) from None


def exact_solution(mdp: TabularMDP, equilibria: str | None, log=None) -> dict:
    """The `bilevel.solve --json` document: read from `equilibria` (which must be of the same MDP,
    occupancy and model class), else solved now."""
    if equilibria:
        from bilevel.equilibria.document import read_solution
        try:
            doc = read_solution(equilibria)
        except ValueError as e:
            raise ReportError(str(e)) from None
        m = doc.get("mdp", {})
        if m.get("name") not in (None, mdp.name):
            raise ReportError(f"{equilibria}: equilibria of MDP {m['name']!r}, not {mdp.name!r}")
        for field, theirs, ours in (("occupancy", m.get("occupancy", "discounted"), mdp.occupancy),
                                    ("model_class", m.get("model_class", "tabular"), mdp.model_class.kind)):
            if theirs != ours:
                raise ReportError(f"{equilibria}: {field}: equilibria for {theirs}, the report is for {ours}")
        return doc
    from bilevel.equilibria.document import solve_to_dict
    return solve_to_dict(mdp, log=log)


def sweeps(mdp: TabularMDP, alphas, log=None, sweep: dict | None = None) -> dict:
    """Exact interval vs alpha for both MAL fixes (bilevel.equilibria.document.alpha_sweeps rows),
    every (formulation, alpha) an independent task (`sweep`: run_sweep's options)."""
    from bilevel.equilibria.document import alpha_sweeps
    say = log or _quiet
    say(f"alpha sweeps of {', '.join(SWEPT)}: {len(SWEPT) * len(alphas)} exact solves "
        f"(alpha = {', '.join(f'{a:g}' for a in alphas)})")
    return alpha_sweeps(mdp, SWEPT, alphas, log=log, sweep=sweep)


def hiding(mdp: TabularMDP, doc: dict) -> dict | None:
    """MAL's worst-case (min-J) equilibrium (pi, Phat): the true occupancy
    mu = occupancy(P, rho0, gamma, pi), and the pairs (s, a) where Phat(.|s,a) differs from
    P(.|s,a) (TV = 1/2 sum_s' |Phat - P|) while mu(s, a) = 0: the policy never goes there."""
    eq = doc["formulations"].get("MAL", {})
    low = (eq.get("equilibria") or {}).get("min") or {}
    if eq.get("status") != "solved" or "policy" not in low:
        return None
    pi, Phat = np.asarray(low["policy"], float), np.asarray(low["model"], float)
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    pairs = []
    for i, j in lying_pairs(mdp, Phat, mu):
        nz = lambda row: {mdp.states[k]: float(row[k]) for k in range(mdp.n_states) if row[k] >= PROB_MIN}
        pairs.append({"state": mdp.states[i], "action": mdp.actions[j], "true": nz(mdp.P[i, j]),
                      "model": nz(Phat[i, j]), "tv": float(0.5 * np.abs(Phat[i, j] - mdp.P[i, j]).sum()),
                      "occupancy": float(mu[i, j])})
    visits = {mdp.states[i]: float(mu[i].sum()) for i in range(mdp.n_states)}
    return {"formulation": "MAL", "J": low["J"], "episode_reward": low["episode_reward"],
            "policy": pi.tolist(), "model": Phat.tolist(), "occupancy": mu.tolist(),
            "state_occupancy": visits, "pairs": pairs}


def runs_data(runs_dir: str, mdp: TabularMDP, doc: dict) -> dict:
    """Run records of DIR grouped by formulation, each with its bilevel.verify check; per
    formulation the mean and sample std (ddof 1) of the final episode rewards over seeds."""
    from bilevel.verify import VerifyInputError, load_runs, verify_runs
    try:
        runs = load_runs(Path(runs_dir))
        runs = [(f, r) for f, r in runs if r.mdp == mdp.name]
        if not runs:
            raise VerifyInputError(f"{runs_dir}: no runs of MDP {mdp.name!r}")
        solved = [(f, r) for f, r in runs if doc["formulations"].get(r.formulation, {}).get("status") == "solved"]
        checks = dict(zip((f for f, _ in solved), verify_runs(solved, doc))) if solved else {}
    except VerifyInputError as e:
        raise ReportError(str(e)) from None
    out: dict = {}
    for file, rec in runs:
        chk = checks.get(file)
        g = out.setdefault(rec.formulation, {"alpha": rec.alpha, "algorithm": rec.algorithm, "runs": []})
        g["runs"].append({"file": Path(file).name, "seed": rec.seed, "final": rec.final,
                          "env_samples": rec.env_samples,
                          "curve": {"env_samples": [p.env_samples for p in rec.curve],
                                    "episode_reward": [p.episode_reward for p in rec.curve]},
                          "check": chk.to_dict() if chk else None})
    for g in out.values():
        g["runs"].sort(key=lambda r: r["seed"])
        ep = np.array([r["final"]["episode_reward"] for r in g["runs"]], float)
        g["n"] = len(ep)
        g["episode_reward"] = {"mean": float(ep.mean()), "std": float(ep.std(ddof=1)) if len(ep) > 1 else 0.0}
        g["verified"] = sum(bool(r["check"]) and r["check"]["verdict"] == "verified" for r in g["runs"])
        kinds: dict = {}
        for r in g["runs"]:
            k = r["check"]["equilibrium"] if r["check"] else "unchecked (no exact solution)"
            kinds[k] = kinds.get(k, 0) + 1
        g["equilibria_found"] = kinds
    order = [f for f in doc["formulations"] if f in out] + [f for f in out if f not in doc["formulations"]]
    return {"dir": repo_path(runs_dir), "formulations": {f: out[f] for f in order}}


def exact_verdict(eq: dict, opt_ep: float | None) -> str:
    """What the exact interval [ep_min, ep_max] of episode rewards says against the optimum
    ep*: safe when ep_min >= ep* - tol, hiding when only ep_max >= ep* - tol, with
    tol = 0.01 max(1, |ep*|)."""
    if eq.get("status") == "not solved":
        return "no exact solution given"
    if eq.get("status") != "solved":
        return "exact solve failed"
    ep = eq.get("episode_reward")
    if not ep or opt_ep is None:
        return "solved"
    tol = 0.01 * max(1.0, abs(opt_ep))
    if ep["min"] >= opt_ep - tol:
        return "every equilibrium optimal"
    if ep["max"] >= opt_ep - tol:
        return "an equilibrium hides the goal"
    return "every equilibrium suboptimal"


def table_rows(doc: dict, runs: dict | None, reference: dict | None) -> list[dict]:
    """The results table, one row per formulation, as data."""
    rows = []
    opt_ep = doc["optimal"].get("episode_reward")
    run_forms = list((runs or {}).get("formulations", {}))
    for f in list(doc["formulations"]) + [f for f in run_forms if f not in doc["formulations"]]:
        eq = doc["formulations"].get(f, {"status": "not solved"})
        g = (runs or {}).get("formulations", {}).get(f)
        alpha = eq.get("alpha") if eq.get("alpha") is not None else (g or {}).get("alpha")
        row = {"formulation": f, "name": NAMES.get(f, f), "alpha": alpha,
               "exact_episode_reward": eq.get("episode_reward") if eq.get("status") == "solved" else None,
               "exact_J": eq.get("J") if eq.get("status") == "solved" else None,
               "certificate": eq.get("certificate", "none"), "exact_verdict": exact_verdict(eq, opt_ep),
               "rl": None, "reference": (reference or {}).get(f)}
        if g:
            row["rl"] = {"mean": g["episode_reward"]["mean"], "std": g["episode_reward"]["std"], "n": g["n"],
                         "verified": g["verified"], "equilibria_found": g["equilibria_found"]}
        rows.append(row)
    return rows


def repo_path(p) -> str:
    """A path as the report records it: relative to the repository when inside it, else only its
    last component (a report never holds a path of the machine it was made on)."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return p.name


def build_data(path: str, runs_dir: str | None = None, equilibria: str | None = None,
               sweep_alphas=SWEEP_ALPHAS, cached: dict | None = None, log=None,
               studies_dir: str | None = None, sweep: dict | None = None,
               occupancy: str | None = None, model_class: str | None = None) -> dict:
    """Everything the report shows. `cached`: a previous data.json whose sweeps are reused when
    their `sweep_key` (bilevel.cache: the MDP's content, the alphas, the code version) matches.
    `log(msg)`: progress messages, also passed to the exact solves. `sweep`: where the alpha
    sweep's tasks run (run_sweep's options; None: in this process). `occupancy`, `model_class`:
    instead of the file's (`report_mdp`)."""
    say = log or _quiet
    mdp = report_mdp(path, occupancy, model_class)
    t0 = time.perf_counter()
    if equilibria:
        say(f"{mdp.name}: reading the exact equilibria from {equilibria}")
    else:
        say(f"{mdp.name}: solving the exact equilibria of every formulation "
            f"({mdp.n_states} states, {mdp.n_actions} actions; pass --equilibria to reuse a saved solve)")
    doc = exact_solution(mdp, equilibria, log=log)
    t_solve = time.perf_counter() - t0
    if not equilibria:
        say(f"{mdp.name}: exact equilibria in {t_solve:.1f} s")
    sw, t_sweep, sweep_source = None, 0.0, None
    sweep_key = cache_key(mdp, what="alpha sweep", alphas=list(sweep_alphas or ()))
    if sweep_alphas:
        old = (cached or {}).get("sweeps")
        if old and (cached or {}).get("sweep_key") == sweep_key:
            say(f"{mdp.name}: alpha sweeps reused from the previous data.json (same content key)")
            sw, sweep_source = old, "cached"
        else:
            t1 = time.perf_counter()
            sw, sweep_source = sweeps(mdp, sweep_alphas, log=log, sweep=sweep), "solved"
            t_sweep = time.perf_counter() - t1
            say(f"{mdp.name}: alpha sweeps in {t_sweep:.1f} s")
    t2 = time.perf_counter()
    if runs_dir:
        say(f"{mdp.name}: checking the run records of {runs_dir} against the exact intervals")
    runs = runs_data(runs_dir, mdp, doc) if runs_dir else None
    reference = reference_for(mdp.name)
    if studies_dir:
        say(f"reading the saved studies of {studies_dir}")
    return {"mdp_file": repo_path(path), "mdp": doc["mdp"], "optimal": doc["optimal"],
            "formulations": doc["formulations"], "hiding": hiding(mdp, doc),
            "reference_study": reference, "runs": runs, "sweeps": sw, "sweep_key": sweep_key,
            "table": table_rows(doc, runs, reference),
            "studies": studies_data(studies_dir) if studies_dir else None,
            "timings": {"solve_seconds": t_solve, "sweep_seconds": t_sweep, "sweep_source": sweep_source,
                        "runs_seconds": time.perf_counter() - t2}}


def studies_data(studies_dir: str) -> dict:
    """Summaries of the saved studies (`python -m bilevel.studies ... --out DIR`: theorem.json,
    counterexample.json, fixes.json; any of them may be missing), without per-instance rows.
    Counterexample rows gain gap_per_k = mal_gap / k."""
    d, out = Path(studies_dir), {"dir": repo_path(studies_dir)}
    if not d.is_dir():
        raise ReportError(f"{studies_dir}: --studies: not a directory")

    def load(name):
        f = d / f"{name}.json"
        try:
            return json.loads(f.read_text()) if f.exists() else None
        except ValueError as e:
            raise ReportError(f"{f}: not valid JSON ({e})") from None

    if (t := load("theorem")) is not None:
        out["theorem"] = {k: t[k] for k in ("n_mdps", "seed", "n_instances", "tightness_quantiles",
                                            "by_model", "mal_terms")}
        out["theorem"]["n_violations"] = len(t["violations"])
    if (c := load("counterexample")) is not None:
        out["counterexample"] = {**c, "rows": [
            {**r, "gap_per_k": None if r.get("mal_gap") is None or not r.get("k")
             else r["mal_gap"] / r["k"]} for r in c["rows"]]}
    if (f := load("fixes")) is not None:
        out["fixes"] = {k: f[k] for k in ("n_mdps", "seed", "solver", "time_limit", "table", "named")}
        out["fixes"]["bad_gap"] = BAD_GAP
    if (ms := load("misspecified")) is not None:
        out["misspecified"] = {"summary": ms["summary"], "n_garnets": ms["n_garnets"],
                               "time_limit": ms["time_limit"], "failed": ms["failed"],
                               "rows": [{k: r[k] for k in ("mdp", "aggregation", "J_star", "ml_J",
                                                           "iterated_ml_J", "eps_M", "bound", "intervals")}
                                        for r in ms["rows"]]}
    if len(out) == 1:
        raise ReportError(f"{studies_dir}: --studies: no theorem.json, counterexample.json, "
                          "fixes.json or misspecified.json (write them with python -m "
                          "bilevel.studies ... --out DIR)")
    return out


def failures(data: dict) -> list[str]:
    """What the report computed (or was given) that failed: exact formulations not solved, sweep
    points not solved."""
    out = [f for f, d in data["formulations"].items() if d.get("status") != "solved"]
    for f, rows in (data.get("sweeps") or {}).items():
        out += [f"{f} sweep alpha={r['alpha']:g}" for r in rows if r.get("status") != "solved"]
    return out
