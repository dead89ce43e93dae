"""Figures of the report (matplotlib, Agg). Every function draws from plain arrays / the report's
data dict and returns a Figure; `save` writes it as PNG; `make_figures` draws and saves all of a
report's figures. No figure reads solver internals."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, Rectangle  # noqa: E402

from bilevel.game.formulations import FORMULATIONS
from bilevel.mdp.model import TabularMDP  # noqa: E402

PROB_MIN = 0.01          # transitions drawn when P(s'|s,a) >= this
LIE_TV = 0.01            # a model row "lies" when TV(Phat, P) > this
COLORS = {"PAL": "tab:blue", "MAL": "tab:red", "MAL_agent_reward": "tab:orange",
          "MAL_random_noise": "tab:green", "MAL_agent_true_reward": "tab:purple"}
LABELS = {name: f.label for name, f in FORMULATIONS.items()}
plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11})


def save(fig, path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- state-graph drawing

def _layout(mdp: TabularMDP) -> tuple[dict, dict]:
    """Positions of state nodes (on a circle of radius 3) and of action nodes (s, a), fanned out
    on the outer side of their state so arrows to successors do not collide near the states."""
    S, A = mdp.n_states, mdp.n_actions
    ang = np.pi / 2 + 2 * np.pi * np.arange(S) / S
    spos = {i: np.array([np.cos(t), np.sin(t)]) * 3.0 for i, t in enumerate(ang)}
    apos = {}
    spread = min(0.9, 2.4 / max(A - 1, 1))
    for i in range(S):
        if mdp.terminal[i]:
            continue
        for j in range(A):
            t = ang[i] + (j - (A - 1) / 2) * spread
            apos[(i, j)] = spos[i] + 1.8 * np.array([np.cos(t), np.sin(t)])
    return spos, apos


def _arrow(ax, p, q, color, lw, rad=0.15, shrinkA=14, shrinkB=14, style="-|>"):
    ax.add_patch(FancyArrowPatch(p, q, arrowstyle=style, mutation_scale=12, color=color, lw=lw,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=shrinkA, shrinkB=shrinkB))


def _on_arc(p, q, rad, t=0.5):
    """Point at parameter t of matplotlib's arc3 quadratic Bezier from p to q."""
    d = q - p
    c = (p + q) / 2 + rad * np.array([d[1], -d[0]])
    return (1 - t) ** 2 * p + 2 * t * (1 - t) * c + t ** 2 * q


def draw_transitions(ax, mdp: TabularMDP, P: np.ndarray, title: str, policy=None,
                     highlight=(), show_rewards=True) -> None:
    """States (circles), action nodes (dots, labelled by the action), arrows s -> (s,a) -> s'
    labelled with P(s'|s,a) [and r]. The policy's actions are drawn bold; `highlight` is a set of
    (s, a) index pairs drawn in red."""
    spos, apos = _layout(mdp)
    for i, s in enumerate(mdp.states):
        term = bool(mdp.terminal[i])
        ax.add_patch(Circle(spos[i], 0.58, fc="#dddddd" if term else "white", ec="black", lw=1.5, zorder=6))
        ax.text(spos[i][0], spos[i][1] + 0.08, s, ha="center", va="center", fontsize=13, weight="bold", zorder=7)
        tag = []
        if mdp.rho0[i] > 0:
            tag.append("start")
        if term:
            tag.append("terminal")
        if tag:
            ax.text(spos[i][0], spos[i][1] - 0.15, "\n".join(tag), ha="center", va="top", fontsize=7,
                    style="italic", zorder=7)
    for (i, j), pa in apos.items():
        hl = (i, j) in highlight
        w = 1.0 if policy is None else float(policy[i, j])
        col = "crimson" if hl else "black"
        lw = 0.8 + 2.2 * w
        _arrow(ax, spos[i], pa, col, lw, rad=0.0, shrinkA=22, shrinkB=10, style="-")
        filled = hl or w > 0.5
        ax.add_patch(Circle(pa, 0.24, fc=("crimson" if hl else "black") if filled else "white",
                            ec=col, lw=1.2, zorder=6))
        ax.text(*pa, mdp.actions[j], ha="center", va="center", fontsize=9, weight="bold",
                color="white" if filled else "black", zorder=7)
        for k in range(mdp.n_states):
            p = float(P[i, j, k])
            if p < PROB_MIN:
                continue
            rad = 0.2 if k != i else -0.35
            _arrow(ax, pa, spos[k], col, 0.6 + 1.6 * p, rad=rad, shrinkA=10, shrinkB=24)
            if k == i:      # back to its own state: label beyond the action node
                u = (pa - spos[i]) / np.linalg.norm(pa - spos[i])
                m = pa + u * 0.45
                ha = "right" if u[0] < -0.3 else ("left" if u[0] > 0.3 else "center")
            else:
                m, ha = _on_arc(pa, spos[k], rad), "center"
            lab = f"{p:.2f}"
            if show_rewards and mdp.R[i, j, k] != 0:
                lab += f", r={mdp.R[i, j, k]:g}"
            ax.text(*m, lab, fontsize=8, ha=ha, va="center", color=col, zorder=5,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))
    allp = np.array(list(spos.values()) + list(apos.values()))
    lo, hi = allp.min(0) - np.array([1.6, 0.9]), allp.max(0) + np.array([1.6, 0.9])
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)


def draw_grid(ax, mdp: TabularMDP, title: str, policy=None, highlight_states=()) -> None:
    """A gridworld map: walls black, special cells lettered, policy arrows, highlighted cells red."""
    rows = mdp.grid["rows"]
    cells = {s: tuple(rc) for s, rc in mdp.grid["cells"].items()}
    H, W = len(rows), max(len(r) for r in rows)
    for r in range(H):
        for c in range(W):
            ch = rows[r][c] if c < len(rows[r]) else "#"
            fc = {"#": "black", "D": "#ffd9a0", "G": "#b8e6b8", "S": "#dde6ff"}.get(ch, "white")
            ax.add_patch(Rectangle((c, H - 1 - r), 1, 1, fc=fc, ec="gray", lw=0.5))
            if ch not in ".#":   # letter in the cell's corner, clear of the policy arrow
                ax.text(c + 0.08, H - r - 0.08, ch, ha="left", va="top", fontsize=10, weight="bold")
    index = {s: i for i, s in enumerate(mdp.states)}
    moves = {"up": (0, 1), "down": (0, -1), "left": (-1, 0), "right": (1, 0),
             "N": (0, 1), "S": (0, -1), "W": (-1, 0), "E": (1, 0)}
    for s, (r, c) in cells.items():
        i = index.get(s)
        if i is None:
            continue
        x, y = c + 0.5, H - 0.5 - r
        if s in highlight_states:
            ax.add_patch(Rectangle((c, H - 1 - r), 1, 1, fc="crimson", alpha=0.3, ec="none"))
        if policy is not None and not mdp.terminal[i]:
            j = int(np.argmax(policy[i]))
            dx, dy = moves.get(mdp.actions[j], (0, 0))
            if dx or dy:
                ax.annotate("", (x + 0.3 * dx, y + 0.3 * dy), (x - 0.3 * dx, y - 0.3 * dy),
                            arrowprops=dict(arrowstyle="-|>", color="tab:blue", lw=1.5))
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def fig_mdp(mdp: TabularMDP, policy=None):
    """The MDP: its transition graph (small MDPs) or its map (gridworlds), with the optimal policy."""
    fig, ax = plt.subplots(figsize=(7, 6))
    if mdp.grid:
        draw_grid(ax, mdp, f"{mdp.name}: map and optimal policy (arrows)", policy)
    else:
        draw_transitions(ax, mdp, mdp.P, f"{mdp.name}: true transitions P(s'|s,a), rewards r\n"
                         "(filled / bold: the optimal policy's actions)", policy)
    return fig


def lying_pairs(mdp: TabularMDP, Phat: np.ndarray, mu: np.ndarray) -> list[tuple[int, int]]:
    """(s, a) with TV(Phat, P) > LIE_TV and true occupancy mu(s, a) = 0: the model lies where the
    policy never goes, so its data cannot correct it."""
    tv = 0.5 * np.abs(Phat - mdp.P).sum(-1)
    ok = ~mdp.terminal[:, None]
    return [(int(i), int(j)) for i, j in zip(*np.nonzero((tv > LIE_TV) & (mu <= 1e-12) & ok))]


def fig_hiding(mdp: TabularMDP, policy, Phat, pairs):
    """True transitions next to MAL's worst-case equilibrium model, lying unvisited pairs in red."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    hl = set(pairs)
    if mdp.grid:
        states = {mdp.states[i] for i, _ in pairs}
        draw_grid(axes[0], mdp, "true MDP, MAL's policy (arrows)", policy)
        draw_grid(axes[1], mdp, "MAL's worst-case model: red = lies where\nthe policy never goes",
                  policy, states)
    else:
        draw_transitions(axes[0], mdp, mdp.P, "true transitions P\n(bold: MAL worst-case policy)",
                         policy, hl, show_rewards=False)
        draw_transitions(axes[1], mdp, Phat, "MAL's worst-case equilibrium model Phat\n"
                         "(red: model differs from P and the policy never goes there)",
                         policy, hl, show_rewards=False)
    return fig


# --------------------------------------------------------------------------- curves and sweeps

def _grid_mean(curves: list[tuple[np.ndarray, np.ndarray]], n: int = 200):
    """Mean and std over seeds of step curves on a common x grid (each held at its last value)."""
    xmax = max(x[-1] for x, _ in curves)
    xs = np.linspace(0, xmax, n)
    ys = np.array([np.interp(xs, x, y) for x, y in curves])
    return xs, ys.mean(0), ys.std(0)


def fig_curves(data: dict):
    """Learning curves per formulation: exact true-env episode reward vs env samples, mean and
    ±1 std over seeds, with the exact equilibrium interval as a band."""
    forms = [f for f in data["runs"]["formulations"]]
    n = len(forms)
    cols = 2 if n > 1 else 1
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4.2 * rows), squeeze=False)
    T = data["mdp"]["horizon"]
    for ax, f in zip(axes.flat, forms):
        runs = data["runs"]["formulations"][f]["runs"]
        curves = [(np.array(r["curve"]["env_samples"], float), np.array(r["curve"]["episode_reward"], float))
                  for r in runs if r["curve"]["env_samples"]]
        col = COLORS.get(f, "black")
        if curves:
            xs, m, s = _grid_mean(curves)
            ax.plot(xs, m, color=col, lw=2, label=f"RL mean over {len(curves)} seeds")
            ax.fill_between(xs, m - s, m + s, color=col, alpha=0.25, label="± 1 std")
        eq = data["formulations"].get(f, {})
        ep = eq.get("episode_reward") if eq.get("status") == "solved" else None
        if ep:
            lo, hi = ep["min"], ep["max"]
            pad = 0.01 * max(1.0, abs(hi))
            ax.axhspan(lo - pad, hi + pad, color="gray", alpha=0.3, label="exact equilibrium interval")
            for y in (lo, hi):
                ax.axhline(y, color="dimgray", ls="--", lw=0.8)
        opt = data["optimal"].get("episode_reward")
        if opt is not None:
            ax.axhline(opt, color="black", ls=":", lw=1, label="optimum")
        ax.set_title(LABELS.get(f, f) + (f" (alpha={eq['alpha']:g})" if eq.get("alpha") is not None else ""))
        ax.set_xlabel("true-env samples")
        ax.set_ylabel(f"episode reward (T={T}, exact)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def fig_sweeps(data: dict):
    """Exact episode-reward interval of both MAL fixes vs alpha."""
    sw = data["sweeps"]
    fig, axes = plt.subplots(1, len(sw), figsize=(6 * len(sw), 4.5), squeeze=False)
    T = data["mdp"]["horizon"]
    opt = data["optimal"].get("episode_reward")
    for ax, (f, pts) in zip(axes.flat, sw.items()):
        pos = {p["alpha"]: i for i, p in enumerate(pts)}    # evenly spaced: alphas crowd near 1
        ok = [p for p in pts if p["status"] == "solved"]
        a = np.array([pos[p["alpha"]] for p in ok], float)
        lo = np.array([p["episode_reward"]["min"] for p in ok])
        hi = np.array([p["episode_reward"]["max"] for p in ok])
        col = COLORS.get(f, "black")
        if len(ok):
            ax.fill_between(a, lo, hi, color=col, alpha=0.25, label="equilibrium interval")
            ax.plot(a, lo, "v-", color=col, label="worst equilibrium (min)")
            ax.plot(a, hi, "^--", color=col, label="best equilibrium (max)")
        bad = [pos[p["alpha"]] for p in pts if p["status"] != "solved"]
        if bad:
            ax.plot(bad, [0] * len(bad), "kx", label="solve failed")
        ax.set_xticks(range(len(pts)), [f"{p['alpha']:g}" for p in pts])
        if opt is not None:
            ax.axhline(opt, color="black", ls=":", lw=1, label="optimum")
        ax.set_xlabel("alpha (evenly spaced)")
        ax.set_ylabel(f"exact episode reward (T={T})")
        ax.set_title(f"{LABELS.get(f, f)}: equilibrium interval vs alpha")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    return fig


def make_figures(data: dict, mdp: TabularMDP, out: Path, studies_dir=None) -> dict:
    """Draw and save the report's PNGs under `out` (and copy the studies' own from
    `studies_dir`); return {name: png bytes}."""
    from bilevel.equilibria.document import optimum
    figs = {"mdp": fig_mdp(mdp, np.asarray(optimum(mdp)["policy"]))}
    h = data["hiding"]
    if h:
        pairs = [(mdp.states.index(p["state"]), mdp.actions.index(p["action"])) for p in h["pairs"]]
        figs["hiding"] = fig_hiding(mdp, np.asarray(h["policy"]), np.asarray(h["model"]), pairs)
    if data["runs"]:
        figs["curves"] = fig_curves(data)
    if data["sweeps"]:
        figs["sweeps"] = fig_sweeps(data)
    pngs = {}
    for name, fig in figs.items():
        p = Path(out) / f"{name}.png"
        save(fig, p)
        pngs[name] = p.read_bytes()
    for name in ("theorem", "counterexample", "fixes", "misspecified"):   # the studies' own figures
        src = Path(studies_dir) / f"{name}.png" if data.get("studies") and studies_dir else None
        if src is not None and name in data["studies"] and src.exists():
            pngs[name] = src.read_bytes()
            (Path(out) / f"{name}.png").write_bytes(pngs[name])
    return pngs
