"""index.html and report.md from the report's data (data.json) and its PNGs, through the Jinja2
templates in templates/: report.html.j2 (autoescaped) and report.md.j2 share the prose of
sections.j2. Every number shown goes through one of the formatters below (`fmt_*`, also the
templates' filters); the tables' cells are built here, once for both formats."""
from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from bilevel.report.figures import LABELS as NAMES

TEMPLATES = Path(__file__).with_name("templates")


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
    """[min, max] of an interval {"min", "max"}, each end formatted by `f`."""
    return "n/a" if not d else f"[{f(d['min'])}, {f(d['max'])}]"


# --------------------------------------------------------------------------- table cells
# each builder returns (head, body): the header cells and one list of cells per row

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
    """The results table, one row per formulation."""
    T = data["mdp"].get("horizon")
    what = "T-step return" if data["mdp"].get("occupancy") == "average" else "discounted"
    head = ["formulation", "alpha", f"exact episode reward, T={T} [worst, best]",
            f"exact J ({what}) [worst, best]", "certificate"]
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
    """The pairs where MAL's worst model differs from P and its policy never goes."""
    head = ["state", "action", "true P(s'|s,a)", "MAL model Phat(s'|s,a)", "TV distance", "true occupancy"]
    dist = lambda d: ", ".join(f"{s}: {fmt_j(p)}" for s, p in d.items())
    body = [[p["state"], p["action"], dist(p["true"]), dist(p["model"]), fmt_j(p["tv"]), fmt_j(p["occupancy"])]
            for p in data["hiding"]["pairs"]]
    return head, body


def sweep_cells(data: dict, f: str) -> tuple[list[str], list[list[str]]]:
    """One MAL fix's exact episode-reward interval per swept alpha."""
    T = data["mdp"].get("horizon")
    head = ["alpha", f"exact episode reward, T={T} [worst, best]", "certificate"]
    body = [[fmt_g(p["alpha"]), interval(p["episode_reward"]) if p["status"] == "solved" else "failed",
             p.get("certificate") or ""] for p in data["sweeps"][f]]
    return head, body


def theorem_cells(t: dict) -> tuple[list[str], list[list[str]]]:
    """The PAL theorem study per model map: medians of eps_M, eps_pi and gap / bound."""
    head = ["model map", "param", "n", "median eps_M", "median eps_pi", "median tightness", "max tightness"]
    body = [[e["model"], fmt_g(e["param"]), str(e["n"]), fmt_s(e["eps_M_median"]), fmt_s(e["eps_pi_median"]),
             fmt_s(e["tightness_median"]), fmt_s(e["tightness_max"])] for e in t["by_model"]]
    return head, body


def mal_terms_cells(t: dict) -> tuple[list[str], list[list[str]]]:
    """Rajeswaran et al. Theorem 1 terms at MAL's worst equilibrium, per MDP."""
    head = ["MDP", "J* - min J", "eps_pi", "eps_M (own policy)", "sup_pi eps_M", "model term", "D_TV",
            "shift term", "certificate"]
    body = [[m["mdp"], fmt_j(m["gap"]), fmt_s(m["eps_pi"]), fmt_s(m["eps_M"]), fmt_s(m["eps_M_all"]),
             fmt_s(m["model_term"]), fmt_j(m["occupancy_tv"]), fmt_s(m["shift_term"]), m["certificate"]]
            for m in t["mal_terms"]]
    return head, body


def counterexample_cells(c: dict) -> tuple[list[str], list[list[str]]]:
    """MAL's and PAL's worst gaps J* - min J per reward scale k."""
    head = ["k", "J*", "MAL gap", "gap / k", "PAL gap (MPEC)", "PAL gap (closed form)", "MAL / PAL certificate"]
    body = [[fmt_g(r["k"]), fmt_j(r["J_star"]), fmt_j(r["mal_gap"]), fmt_j(r["gap_per_k"]), fmt_s(r["pal_gap"]),
             fmt_s(r["pal_closed_form_gap"]), f"{r['mal_certificate']} / {r['pal_certificate']}"]
            for r in c["rows"]]
    return head, body


def fixes_cells(f: dict) -> tuple[list[str], list[list[str]]]:
    """Worst gaps J* - min J of each formulation over the random MDPs of the fixes study."""
    head = ["formulation", "alpha", "solved", "global", "failed", "max gap", "mean gap",
            f"# gap > {fmt_s(f['bad_gap'])}", "max gap (global)"]
    body = [[NAMES.get(e["formulation"], e["formulation"]), fmt_g(e["alpha"]), str(e["solved"]),
             str(e.get("n_global", "n/a")), str(e["failed"]), fmt_s(e["max_gap"]), fmt_s(e["mean_gap"]),
             str(e["n_bad"]), fmt_s(e.get("max_gap_global"))] for e in f["table"]]
    return head, body


def misspecified_cells(ms: dict) -> tuple[list[str], list[list[str]]]:
    """Per (MDP, aggregation): J*, the intervals of PAL, MAL and the two fixes under the
    aggregated class (g global, l local), and plain maximum likelihood's returns."""
    forms = ("PAL", "MAL", "MAL_random_noise", "MAL_agent_true_reward")
    head = ["MDP", "aggregation", "J*"] + [NAMES.get(f, f) for f in forms] + ["ML J", "iterated ML J"]

    def cell(iv):
        if not iv.get("ok"):
            return "failed"
        return f"[{fmt_j(iv['J_min'])}, {fmt_j(iv['J_max'])}] {iv['certificate'][:1]}"

    body = [[r["mdp"], r["aggregation"], fmt_j(r["J_star"])] + [cell(r["intervals"][f]) for f in forms]
            + [fmt_j(r["ml_J"]), fmt_j(r["iterated_ml_J"])] for r in ms["rows"]]
    return head, body


def tables(data: dict) -> dict:
    """Every table of the report, by name, as (head, body)."""
    out = {"results": table_cells(data)}
    if data["hiding"]:
        out["hiding"] = hiding_cells(data)
    if data["sweeps"]:
        out["sweeps"] = {f: sweep_cells(data, f) for f in data["sweeps"]}
    st = data.get("studies") or {}
    if t := st.get("theorem"):
        out["theorem"], out["mal_terms"] = theorem_cells(t), mal_terms_cells(t)
    if c := st.get("counterexample"):
        out["counterexample"] = counterexample_cells(c)
    if f := st.get("fixes"):
        out["fixes"] = fixes_cells(f)
    if ms := st.get("misspecified"):
        out["misspecified"] = misspecified_cells(ms)
    return out


# --------------------------------------------------------------------------- templates

def collapse(text):
    """A paragraph on one line: runs of whitespace become one space (Markup stays Markup)."""
    one = " ".join(str(text).split())
    return Markup(one) if isinstance(text, Markup) else one


def md_cell(text: str) -> str:
    """A markdown table cell: "|" escaped."""
    return str(text).replace("|", "\\|")


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


@lru_cache(maxsize=2)
def environment(html: bool) -> Environment:
    """The templates' environment: autoescaped for HTML, plain for markdown."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=html, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(fmt_er=fmt_er, fmt_j=fmt_j, fmt_g=fmt_g, fmt_s=fmt_s, interval=interval,
                       label=lambda f: NAMES.get(f, f), collapse=collapse, md_cell=md_cell, b64=b64)
    return env


def render(template: str, data: dict, figures: dict) -> str:
    return environment(template.endswith(".html.j2")).get_template(template).render(
        data=data, figures=figures, tables=tables(data))


def render_html(data: dict, figures: dict) -> str:
    """index.html: self-contained (CSS inline, PNGs embedded as base64, no script)."""
    return render("report.html.j2", data, figures)


def render_md(data: dict, figures: dict) -> str:
    """report.md: the same sections, figures linked as NAME.png beside it."""
    return render("report.md.j2", data, figures).rstrip("\n") + "\n"
