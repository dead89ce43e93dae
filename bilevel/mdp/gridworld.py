"""Gridworld form: a character map compiled to the explicit MDP form.

    gridworld:
      map: ["S..D", ".#..", "...G"]   # rows; '#' wall, 'S' start, '.' free, letters = cells
      slip: 0.1                       # prob. of moving to one of the two perpendicular
                                      # directions instead (slip/2 each)
      rewards: {D: 1.0, G: 0.75}      # reward on entering (or staying in) a cell with that letter
      terminal: [D]                   # letters whose cells end the episode (absorbing)
      step_reward: 0.0                # added to every transition

States are the non-wall cells, named `r{row}c{col}`; actions `up, down, left, right`.
Moving into a wall or off the grid leaves the agent in place.
"""
from __future__ import annotations

from typing import Any, Mapping

ACTIONS = ("up", "down", "left", "right")
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
PERPENDICULAR = {"up": ("left", "right"), "down": ("left", "right"),
                 "left": ("up", "down"), "right": ("up", "down")}


def _fail(source, field_, problem):
    from bilevel.mdp.model import MDPError
    raise MDPError(source, field_, problem)


def compile_gridworld(spec: Any, source: str) -> dict:
    """Explicit-form fields (states, actions, initial, terminal, transitions, rewards, _grid)."""
    if not isinstance(spec, Mapping):
        _fail(source, "gridworld", "must be a mapping with map, slip, rewards, terminal")
    known = {"map", "slip", "rewards", "terminal", "step_reward"}
    for k in spec:
        if k not in known:
            _fail(source, f"gridworld.{k}", f"unknown field (known: {', '.join(sorted(known))})")
    rows = spec.get("map")
    if isinstance(rows, str):
        rows = rows.strip("\n").splitlines()
    if not isinstance(rows, list) or not rows or not all(isinstance(r, str) and r for r in rows):
        _fail(source, "gridworld.map", "must be a non-empty list of equal-length strings")
    rows = [r.strip() for r in rows]
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        _fail(source, "gridworld.map", "rows must all have the same length")
    slip = spec.get("slip", 0.0)
    if isinstance(slip, bool) or not isinstance(slip, (int, float)) or not 0.0 <= slip <= 1.0:
        _fail(source, "gridworld.slip", f"must be a number in [0, 1], got {slip!r}")
    step = spec.get("step_reward", 0.0)
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        _fail(source, "gridworld.step_reward", f"must be a number, got {step!r}")
    cell_reward = spec.get("rewards", {}) or {}
    if not isinstance(cell_reward, Mapping):
        _fail(source, "gridworld.rewards", "must be a mapping letter -> reward")
    letters = {ch for r in rows for ch in r}
    for ch, x in cell_reward.items():
        if not isinstance(ch, str) or ch not in letters:
            _fail(source, "gridworld.rewards", f"letter {ch!r} does not occur in the map")
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            _fail(source, f"gridworld.rewards.{ch}", f"must be a number, got {x!r}")
    term_letters = spec.get("terminal", []) or []
    if not isinstance(term_letters, list) or any(
            not isinstance(ch, str) or ch not in letters for ch in term_letters):
        _fail(source, "gridworld.terminal", "must be a list of letters that occur in the map")
    if "#" in term_letters or "#" in cell_reward:
        _fail(source, "gridworld", "walls '#' cannot carry rewards or be terminal")

    cells = [(i, j) for i, r in enumerate(rows) for j, ch in enumerate(r) if ch != "#"]
    name = {c: f"r{c[0]}c{c[1]}" for c in cells}
    starts = [c for c in cells if rows[c[0]][c[1]] == "S"]
    if not starts:
        _fail(source, "gridworld.map", "no start cell 'S'")
    terminal = [c for c in cells if rows[c[0]][c[1]] in term_letters]

    def move(c, a):
        n = (c[0] + MOVES[a][0], c[1] + MOVES[a][1])
        return n if n in name else c

    def reward(c2):
        return float(step) + float(cell_reward.get(rows[c2[0]][c2[1]], 0.0))

    transitions, rewards = {}, {}
    for c in cells:
        if c in terminal:
            continue
        transitions[name[c]], rewards[name[c]] = {}, {}
        for a in ACTIONS:
            dist: dict[str, float] = {}
            outcomes = [(a, 1.0 - slip)] + [(b, slip / 2) for b in PERPENDICULAR[a]]
            for b, p in outcomes:
                if p > 0:
                    n = name[move(c, b)]
                    dist[n] = dist.get(n, 0.0) + p
            transitions[name[c]][a] = dist
            rewards[name[c]][a] = {n: reward(_cell(n)) for n in dist}
    initial = {name[c]: 1.0 / len(starts) for c in starts}
    grid = {"rows": rows, "cells": {name[c]: list(c) for c in cells}}
    return {"states": [name[c] for c in cells], "actions": list(ACTIONS), "initial": initial,
            "terminal": [name[c] for c in terminal], "transitions": transitions,
            "rewards": rewards, "_grid": grid}


def _cell(state_name: str) -> tuple[int, int]:
    r, c = state_name[1:].split("c")
    return int(r), int(c)
