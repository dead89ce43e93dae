"""`python -m bilevel.report FILE [--runs DIR] [--studies DIR] [--out reports/NAME]`: a self-contained report.

Writes OUT/index.html (PNGs embedded as base64, no network, no JS), OUT/report.md, OUT/*.png,
OUT/data.json holding every number shown, and OUT/equilibria.json (the solve document, to pass back
with --equilibria: solving hidden_goal's four formulations takes minutes, rendering seconds). The numbers come from `bilevel.solve.solve_to_dict`
(exact equilibria), `bilevel.solve.alpha_sweep` (both MAL fixes) and, with --runs, the run records
of `python -m bilevel.train` checked by `bilevel.verify.verify_runs`. Every number in the HTML
and markdown is rendered from data.json with the formatters below (`fmt_*`).

Exit status: 0 written, 1 written but something it computed failed (an exact formulation, a
sweep point; one line on stderr names them), 2 bad input (one line on stderr). JSON files hold
null where a number is NaN or infinite.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import sys
import time
from pathlib import Path

import numpy as np

from bilevel.report import figures as plots
from bilevel.cache import ROOT, cache_key
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import MDPError, TabularMDP
from bilevel.tabular.occupancy import occupancy
from bilevel.studies.core import BAD_GAP

REFERENCE = {  # the reference study's published "Avg. Ep. Reward" on hidden_goal (mean ± std)
    "MAL": {"mean": 0.97, "std": 0.05}, "MAL_agent_reward": {"mean": 36.93, "std": 0.57},
    "MAL_random_noise": {"mean": 36.74, "std": 0.67}, "PAL": {"mean": 36.77, "std": 0.64}}
SWEEP_ALPHAS = (0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0)
NAMES = plots.LABELS


class ReportError(ValueError):
    """Bad input to the report (one-line message)."""


# --------------------------------------------------------------------------- number formats

def fmt_er(x) -> str:
    """Episode rewards and RL statistics."""
    return "n/a" if x is None else f"{x:.2f}"


def fmt_j(x) -> str:
    """Discounted returns, probabilities, losses."""
    return "n/a" if x is None else f"{x:.4f}"


def fmt_g(x) -> str:
    """Parameters (alpha, gamma) and counts."""
    return "n/a" if x is None else f"{x:g}"


def fmt_s(x) -> str:
    """Study quantities spanning orders of magnitude (eps, tightness, gaps near 0)."""
    return "n/a" if x is None or x != x else f"{x:.3g}"      # x != x: NaN


def interval(d: dict | None, f=fmt_er) -> str:
    return "n/a" if not d else f"[{f(d['min'])}, {f(d['max'])}]"


# --------------------------------------------------------------------------- data

def exact_solution(mdp: TabularMDP, equilibria: str | None, log=None) -> dict:
    """The `bilevel.solve --json` document: read from `equilibria`, else solved now."""
    if equilibria:
        from bilevel.equilibria.document import read_solution
        try:
            doc = read_solution(equilibria)
        except ValueError as e:
            raise ReportError(str(e)) from None
        if doc.get("mdp", {}).get("name") not in (None, mdp.name):
            raise ReportError(f"{equilibria}: equilibria of MDP {doc['mdp']['name']!r}, not {mdp.name!r}")
        return doc
    from bilevel.equilibria.document import solve_to_dict
    return solve_to_dict(mdp, log=log)


def sweeps(mdp: TabularMDP, alphas, log=None) -> dict:
    """Exact interval vs alpha for both MAL fixes (bilevel.solve.alpha_sweep rows)."""
    from bilevel.equilibria.document import alpha_sweep
    return {f: alpha_sweep(mdp, f, alphas, log=log) for f in ("MAL_agent_reward", "MAL_random_noise")}


def hiding(mdp: TabularMDP, doc: dict) -> dict | None:
    """MAL's worst-case (min-J) equilibrium: policy, model, true occupancy, and the state-action
    pairs where the model differs from P while the policy never goes there (occupancy 0)."""
    eq = doc["formulations"].get("MAL", {})
    low = (eq.get("equilibria") or {}).get("min") or {}
    if eq.get("status") != "solved" or "policy" not in low:
        return None
    pi, Phat = np.asarray(low["policy"], float), np.asarray(low["model"], float)
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    pairs = []
    for i, j in plots.lying_pairs(mdp, Phat, mu):
        nz = lambda row: {mdp.states[k]: float(row[k]) for k in range(mdp.n_states) if row[k] >= plots.PROB_MIN}
        pairs.append({"state": mdp.states[i], "action": mdp.actions[j], "true": nz(mdp.P[i, j]),
                      "model": nz(Phat[i, j]), "tv": float(0.5 * np.abs(Phat[i, j] - mdp.P[i, j]).sum()),
                      "occupancy": float(mu[i, j])})
    visits = {mdp.states[i]: float(mu[i].sum()) for i in range(mdp.n_states)}
    return {"formulation": "MAL", "J": low["J"], "episode_reward": low["episode_reward"],
            "policy": pi.tolist(), "model": Phat.tolist(), "occupancy": mu.tolist(),
            "state_occupancy": visits, "pairs": pairs}


def runs_data(runs_dir: str, mdp: TabularMDP, doc: dict) -> dict:
    """Run records of DIR grouped by formulation, each with its bilevel.verify check."""
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
    """What the exact interval says: the formulation is safe (interval at the optimum) or hides."""
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
               studies_dir: str | None = None) -> dict:
    """Everything the report shows. `cached`: a previous data.json whose sweeps are reused when
    their `sweep_key` (bilevel.cache: the MDP's content, the alphas, the code version) matches."""
    try:
        mdp = load_mdp(path)
    except MDPError as e:
        raise ReportError(str(e)) from None
    t0 = time.perf_counter()
    doc = exact_solution(mdp, equilibria, log=log)
    t_solve = time.perf_counter() - t0
    sw, t_sweep, sweep_source = None, 0.0, None
    sweep_key = cache_key(mdp, what="alpha sweep", alphas=list(sweep_alphas or ()))
    if sweep_alphas:
        old = (cached or {}).get("sweeps")
        if old and (cached or {}).get("sweep_key") == sweep_key:
            sw, sweep_source = old, "cached"
        else:
            t1 = time.perf_counter()
            sw, sweep_source = sweeps(mdp, sweep_alphas, log=log), "solved"
            t_sweep = time.perf_counter() - t1
    t2 = time.perf_counter()
    runs = runs_data(runs_dir, mdp, doc) if runs_dir else None
    reference = REFERENCE if mdp.name == "hidden_goal" else None
    return {"mdp_file": repo_path(path), "mdp": doc["mdp"], "optimal": doc["optimal"],
            "formulations": doc["formulations"], "hiding": hiding(mdp, doc),
            "reference_study": reference, "runs": runs, "sweeps": sw, "sweep_key": sweep_key,
            "table": table_rows(doc, runs, reference),
            "studies": studies_data(studies_dir) if studies_dir else None,
            "timings": {"solve_seconds": t_solve, "sweep_seconds": t_sweep, "sweep_source": sweep_source,
                        "runs_seconds": time.perf_counter() - t2}}


def studies_data(studies_dir: str) -> dict:
    """Summaries of the saved studies (`python -m bilevel.studies ... --out DIR`: theorem.json,
    counterexample.json, fixes.json; any of them may be missing), without per-instance rows."""
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
    if len(out) == 1:
        raise ReportError(f"{studies_dir}: --studies: no theorem.json, counterexample.json or "
                          "fixes.json (write them with python -m bilevel.studies ... --out DIR)")
    return out


# --------------------------------------------------------------------------- rendering

def rl_cell(row: dict) -> str:
    rl = row["rl"]
    return "" if not rl else f"{fmt_er(rl['mean'])} ± {fmt_er(rl['std'])} (n={rl['n']})"


def verdict_cell(row: dict) -> str:
    rl = row["rl"]
    if not rl:
        return row["exact_verdict"]
    found = ", ".join(f"{k} ×{v}" for k, v in rl["equilibria_found"].items())
    return f"{row['exact_verdict']}; runs: {rl['verified']}/{rl['n']} verified; found {found}"


def table_cells(data: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the results table (shared by HTML and markdown)."""
    T = data["mdp"].get("horizon")
    head = ["formulation", "alpha", f"exact episode reward, T={T} [worst, best]",
            "exact J (discounted) [worst, best]", "certificate"]
    with_runs = data["runs"] is not None
    with_ref = data["reference_study"] is not None
    if with_runs:
        head.append("RL mean ± std over seeds")
    if with_ref:
        head.append("reference study (published)")
    head.append("verdict")
    body = []
    for r in data["table"]:
        cells = [r["name"], "" if r["alpha"] is None else fmt_g(r["alpha"]),
                 interval(r["exact_episode_reward"]), interval(r["exact_J"], fmt_j), r["certificate"]]
        if with_runs:
            cells.append(rl_cell(r))
        if with_ref:
            ref = r["reference"]
            cells.append(f"{fmt_er(ref['mean'])} ± {fmt_er(ref['std'])}" if ref else "")
        cells.append(verdict_cell(r))
        body.append(cells)
    return head, body


def hiding_cells(data: dict) -> tuple[list[str], list[list[str]]]:
    head = ["state", "action", "true P(s'|s,a)", "MAL model Phat(s'|s,a)", "TV distance", "true occupancy"]
    dist = lambda d: ", ".join(f"{s}: {fmt_j(p)}" for s, p in d.items())
    body = [[p["state"], p["action"], dist(p["true"]), dist(p["model"]), fmt_j(p["tv"]), fmt_j(p["occupancy"])]
            for p in data["hiding"]["pairs"]]
    return head, body


def sweep_cells(data: dict, f: str) -> tuple[list[str], list[list[str]]]:
    T = data["mdp"].get("horizon")
    head = ["alpha", f"exact episode reward, T={T} [worst, best]", "certificate"]
    body = [[fmt_g(p["alpha"]), interval(p["episode_reward"]) if p["status"] == "solved" else "failed",
             p.get("certificate") or ""] for p in data["sweeps"][f]]
    return head, body


def sections(data: dict, figures: dict) -> list[tuple[str, list]]:
    """The report as (title, blocks); a block is ("p", text) | ("table", (head, body)) | ("img", name)."""
    m, opt = data["mdp"], data["optimal"]
    out = []
    intro = (f"MDP {m['name']} ({data['mdp_file']}): {m['states']} states, {m['actions']} actions, "
             f"gamma = {fmt_g(m['gamma'])}, horizon T = {m['horizon']}. Optimum: J* = {fmt_j(opt['J'])} "
             f"(discounted return), episode reward {fmt_er(opt['episode_reward'])} "
             f"(undiscounted sum over the first T steps).")
    out.append(("The MDP", [("p", intro), ("img", "mdp")]))
    res = [("p", "Exact Stackelberg equilibria are strong (optimistic): the leader picks among the "
                 "follower's best responses. Each interval runs from the worst to the best true "
                 "episode reward over all leader-optimal equilibria; certificate global = proved by "
                 "SCIP, local = IPOPT multistart."),
           ("table", table_cells(data))]
    if data["reference_study"]:
        res.append(("p", "The reference-study column reproduces the published Avg. Ep. Reward "
                         "(mean ± std over seeds) of Cremer, Ozieblowski and Zengaffinen for hidden_goal; "
                         "it is not computed here."))
    if data["runs"]:
        res.append(("p", f"RL: final policies of the run records in {data['runs']['dir']}, exact "
                         "episode reward in the true MDP, mean ± sample std over seeds; each run checked "
                         "by bilevel.verify against the exact interval."))
    out.append(("Results", res))
    h = data["hiding"]
    if h:
        txt = (f"MAL's worst-case equilibrium has true episode reward {fmt_er(h['episode_reward'])} "
               f"(J = {fmt_j(h['J'])}). Its model fits the data of its own policy perfectly, yet differs "
               f"from the truth where that policy never goes (red): the data cannot correct the lie, "
               f"and the lie keeps the policy away.")
        blocks = [("p", txt), ("img", "hiding")]
        if h["pairs"]:
            blocks.append(("table", hiding_cells(data)))
        out.append(("How MAL hides the goal", blocks))
    if "curves" in figures:
        out.append(("Learning curves", [("p", "True-env episode reward (exact evaluation of the current "
                                              "policy) vs true-env samples; line: mean over seeds, "
                                              "shade: ± one std; gray band: the exact equilibrium interval."),
                                        ("img", "curves")]))
    if "sweeps" in figures:
        blocks = [("p", "Exact equilibrium interval of both MAL fixes as alpha varies."), ("img", "sweeps")]
        for f in data["sweeps"]:
            blocks += [("p", NAMES.get(f, f)), ("table", sweep_cells(data, f))]
        out.append(("Alpha sweeps", blocks))
    return out + study_sections(data.get("studies"), figures)


def study_sections(st: dict | None, figures: dict) -> list[tuple[str, list]]:
    """Sections for the saved studies (issue 7), rendered from their summaries in data.json."""
    if not st:
        return []
    out = []
    if t := st.get("theorem"):
        q = t["tightness_quantiles"]
        blocks = [("p", f"{t['n_instances']} approximate PAL solutions on {t['n_mdps']} random MDPs "
                        f"(seed {t['seed']}); violations of J(pi*,M) - J(pi,M) <= eps_pi + 4 gamma "
                        f"sqrt(eps_M) R_max/(1-gamma)^2: {t['n_violations']}. Tightness (gap / "
                        f"bound) quantiles: " + ", ".join(f"{k} {fmt_s(v)}" for k, v in q.items()) + "."),
                  ("table", (["model map", "param", "n", "median eps_M", "median eps_pi",
                              "median tightness", "max tightness"],
                             [[e["model"], fmt_g(e["param"]), str(e["n"]), fmt_s(e['eps_M_median']),
                               fmt_s(e['eps_pi_median']), fmt_s(e['tightness_median']),
                               fmt_s(e['tightness_max'])] for e in t["by_model"]]))]
        if "theorem" in figures:
            blocks.append(("img", "theorem"))
        if t["mal_terms"]:
            blocks += [("p", "Rajeswaran et al. Theorem 1 terms at MAL's worst equilibrium: MAL's "
                             "premises hold (small eps_pi, small loss on its own occupancy), and only the "
                             "distribution-shift term 2 R_max D_TV(mu_M^pi*, mu_Mhat^pi*)/(1-gamma) covers "
                             "the gap."),
                       ("table", (["MDP", "J* - min J", "eps_pi", "eps_M (own policy)",
                                   "sup_pi eps_M", "model term", "D_TV", "shift term", "certificate"],
                                  [[m["mdp"], fmt_j(m["gap"]), fmt_s(m['eps_pi']),
                                    fmt_s(m['eps_M']), fmt_s(m['eps_M_all']),
                                    fmt_s(m['model_term']), fmt_j(m['occupancy_tv']),
                                    fmt_s(m['shift_term']), m["certificate"]]
                                   for m in t["mal_terms"]]))]
        out.append(("Study: the PAL theorem", blocks))
    if c := st.get("counterexample"):
        blocks = [("p", "The hidden goal with its hidden rewards scaled by k: MAL's worst gap J* - min J "
                        "grows in proportion to k, PAL's stays 0."),
                  ("table", (["k", "J*", "MAL gap", "gap / k", "PAL gap (MPEC)", "PAL gap (closed form)",
                              "MAL / PAL certificate"],
                             [[fmt_g(r["k"]), fmt_j(r["J_star"]), fmt_j(r["mal_gap"]),
                               fmt_j(r["gap_per_k"]), fmt_s(r['pal_gap']),
                               fmt_s(r['pal_closed_form_gap']),
                               f"{r['mal_certificate']} / {r['pal_certificate']}"] for r in c["rows"]]))]
        if "counterexample" in figures:
            blocks.append(("img", "counterexample"))
        out.append(("Study: MAL can be made arbitrarily bad", blocks))
    if f := st.get("fixes"):
        blocks = [("p", f"Worst gap J* - min J over the equilibria found, on {f['n_mdps']} random MDPs "
                        f"(solver {f['solver']}; global = certified by SCIP, the other solved ones are "
                        "local IPOPT results, so their gaps are lower bounds on the worst gap)."),
                  ("table", (["formulation", "alpha", "solved", "global", "failed", "max gap",
                              "mean gap", f"# gap > {fmt_s(f['bad_gap'])}", "max gap (global)"],
                             [[NAMES.get(e["formulation"], e["formulation"]), fmt_g(e["alpha"]),
                               str(e["solved"]), str(e.get("n_global", "n/a")), str(e["failed"]),
                               fmt_s(e['max_gap']), fmt_s(e['mean_gap']), str(e["n_bad"]),
                               fmt_s(e.get("max_gap_global"))]
                              for e in f["table"]])),
                  ("p", "Plain MAL on the named MDPs: " + "; ".join(
                      f"{r['mdp']}: worst gap {fmt_j(r['gap'])} ({r['certificate']})"
                      for r in f["named"]) + ".")]
        if "fixes" in figures:
            blocks.append(("img", "fixes"))
        out.append(("Study: the MAL fixes", blocks))
    return out


CSS = """body{font-family:sans-serif;max-width:1150px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #bbb;padding:4px 8px;
text-align:left}th{background:#eee}img{max-width:100%}"""


def render_html(data: dict, figures: dict) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(data['mdp']['name'])}"
             f" report</title><style>{CSS}</style></head><body>",
             f"<h1>Stackelberg model-based RL: {html.escape(data['mdp']['name'])}</h1>"]
    for title, blocks in sections(data, figures):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for kind, x in blocks:
            if kind == "p":
                parts.append(f"<p>{html.escape(x)}</p>")
            elif kind == "img":
                b64 = base64.b64encode(figures[x]).decode()
                parts.append(f"<img alt='{x}' src='data:image/png;base64,{b64}'>")
            else:
                head, body = x
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
                for row in body:
                    parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
                parts.append("</table>")
    parts.append("<p><small>Generated by python -m bilevel.report; every number is in data.json.</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_md(data: dict, figures: dict) -> str:
    lines = [f"# Stackelberg model-based RL: {data['mdp']['name']}", ""]
    for title, blocks in sections(data, figures):
        lines += [f"## {title}", ""]
        for kind, x in blocks:
            if kind == "p":
                lines += [x, ""]
            elif kind == "img":
                lines += [f"![{x}]({x}.png)", ""]
            else:
                head, body = x
                lines.append("| " + " | ".join(h.replace("|", "\\|") for h in head) + " |")
                lines.append("|" + "---|" * len(head))
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
                lines.append("")
    return "\n".join(lines)


def make_figures(data: dict, mdp: TabularMDP, out: Path, studies_dir=None) -> dict:
    """Draw and save the PNGs (and copy the studies' own from `studies_dir`); return
    {name: png bytes}."""
    figs = {}
    from bilevel.equilibria.document import optimum
    figs["mdp"] = plots.fig_mdp(mdp, np.asarray(optimum(mdp)["policy"]))
    h = data["hiding"]
    if h:
        pairs = [(mdp.states.index(p["state"]), mdp.actions.index(p["action"])) for p in h["pairs"]]
        figs["hiding"] = plots.fig_hiding(mdp, np.asarray(h["policy"]), np.asarray(h["model"]), pairs)
    if data["runs"]:
        figs["curves"] = plots.fig_curves(data)
    if data["sweeps"]:
        figs["sweeps"] = plots.fig_sweeps(data)
    pngs = {}
    for name, fig in figs.items():
        p = out / f"{name}.png"
        plots.save(fig, p)
        pngs[name] = p.read_bytes()
    for name in ("theorem", "counterexample", "fixes"):   # the studies' own figures
        src = Path(studies_dir) / f"{name}.png" if data.get("studies") and studies_dir else None
        if src is not None and name in data["studies"] and src.exists():
            pngs[name] = src.read_bytes()
            (out / f"{name}.png").write_bytes(pngs[name])
    return pngs


def write_report(path: str, out: str | Path, runs_dir=None, equilibria=None, sweep_alphas=SWEEP_ALPHAS,
                 log=None, studies_dir=None, fresh: bool = False) -> dict:
    """Build data, figures, index.html and report.md under `out`; return the data. The alpha
    sweep of a previous OUT/data.json is reused when its content key matches, unless `fresh`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cached = None
    if (out / "data.json").exists() and not fresh:
        try:
            cached = json.loads((out / "data.json").read_text())
        except ValueError:
            cached = None
    data = build_data(path, runs_dir, equilibria, sweep_alphas, cached, log=log,
                      studies_dir=studies_dir)
    t0 = time.perf_counter()
    pngs = make_figures(data, load_mdp(path), out, studies_dir)
    data["timings"]["figures_seconds"] = time.perf_counter() - t0
    from bilevel.cli.common import json_dumps
    (out / "data.json").write_text(json_dumps(data, indent=1))
    doc = {k: data[k] for k in ("mdp", "optimal", "formulations")}
    (out / "equilibria.json").write_text(json_dumps(doc, indent=1))   # reuse with --equilibria
    (out / "index.html").write_text(render_html(data, pngs))
    (out / "report.md").write_text(render_md(data, pngs))
    return data


def failures(data: dict) -> list[str]:
    """What the report computed (or was given) that failed: exact formulations not solved, sweep
    points not solved."""
    out = [f for f, d in data["formulations"].items() if d.get("status") != "solved"]
    for f, rows in (data.get("sweeps") or {}).items():
        out += [f"{f} sweep alpha={fmt_g(r['alpha'])}" for r in rows if r.get("status") != "solved"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bilevel.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="MDP YAML file")
    ap.add_argument("--runs", help="directory of run records (python -m bilevel.train --out DIR)")
    ap.add_argument("--out", help="output directory (default reports/<mdp name>/)")
    ap.add_argument("--equilibria", help="saved `python -m bilevel.solve FILE --json` output (else solved now)")
    ap.add_argument("--studies", help="directory of saved studies (python -m bilevel.studies "
                                      "theorem|counterexample|fixes --out DIR) to add to the report")
    ap.add_argument("--no-sweep", action="store_true", help="skip the alpha sweeps")
    ap.add_argument("--alphas", help=f"comma-separated sweep alphas (default {','.join(map(str, SWEEP_ALPHAS))}); "
                                     "a sweep in OUT/data.json with the same content key (MDP, "
                                     "alphas, code version) is reused")
    ap.add_argument("--fresh", action="store_true", help="recompute the sweep even if cached")
    args = ap.parse_args(argv)
    try:
        alphas = () if args.no_sweep else (tuple(float(a) for a in args.alphas.split(",")) if args.alphas
                                           else SWEEP_ALPHAS)
    except ValueError:
        print(f"error: --alphas {args.alphas!r}: not comma-separated numbers", file=sys.stderr)
        return 2
    try:
        name = load_mdp(args.file).name
        out = Path(args.out or f"reports/{name}")
        t0 = time.perf_counter()
        data = write_report(args.file, out, args.runs, args.equilibria, alphas,
                            studies_dir=args.studies, fresh=args.fresh)
    except (MDPError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = data["timings"]
    print(f"wrote {out}/index.html, report.md, data.json and {len(list(out.glob('*.png')))} figures in "
          f"{time.perf_counter() - t0:.1f} s (solve {t['solve_seconds']:.1f} s, sweep "
          f"{t['sweep_seconds']:.1f} s{' (cached)' if t['sweep_source'] == 'cached' else ''}, "
          f"figures {t['figures_seconds']:.1f} s)")
    failed = failures(data)
    if failed:
        print(f"error: failed: {', '.join(failed)} (shown as failed in the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
