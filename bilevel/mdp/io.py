"""Read and write the YAML MDP format; every error is an MDPError naming file and field."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from bilevel.mdp.class_io import read_model_class, write_model_class
from bilevel.mdp.model import DEFAULT_FLOOR, MDPError, SUM_TOL, SUPPORT_KINDS, TabularMDP, with_model_class
from bilevel.mdp.model_class import ModelClass
from bilevel.mdp.graph import support_mask


def load_mdp(path: str | Path) -> TabularMDP:
    """Load and validate an MDP file (explicit or gridworld form). Raises MDPError."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise MDPError(src, "", "file does not exist" if not path.exists() else "not a regular file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise MDPError(src, "", f"cannot read file ({e.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise MDPError(src, "", f"malformed YAML{where}: {problem}") from None
    return mdp_from_dict(data, source=src, default_name=path.stem)


def mdp_from_dict(data: Any, source: str = "<dict>", default_name: str = "mdp") -> TabularMDP:
    """Validate a parsed MDP document and build a TabularMDP. Raises MDPError."""
    v = _Reader(source)
    if not isinstance(data, Mapping):
        raise MDPError(source, "", "top level must be a mapping of fields (name, gamma, states, ...)")
    known = {"name", "gamma", "horizon", "states", "actions", "initial", "terminal", "transitions",
             "rewards", "model_support", "model_floor", "gridworld", "description", "occupancy",
             "model_class"}
    for k in data:
        if k not in known:
            raise MDPError(source, str(k), f"unknown field (known: {', '.join(sorted(known))})")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise MDPError(source, "name", "must be a non-empty string")
    gamma = v.number(data, "gamma", required=True)
    if not 0.0 < gamma < 1.0:
        raise MDPError(source, "gamma", f"must lie in (0, 1), got {gamma}")
    horizon = None
    if data.get("horizon") is not None:
        horizon = data["horizon"]
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise MDPError(source, "horizon", f"must be a positive integer, got {horizon!r}")
    floor = v.number(data, "model_floor", required=False, default=DEFAULT_FLOOR)
    if not 0.0 <= floor < 1.0:
        raise MDPError(source, "model_floor", f"must lie in [0, 1), got {floor}")
    occupancy = data.get("occupancy", "discounted")     # checked by TabularMDP

    grid = None
    if "gridworld" in data:
        from bilevel.mdp.gridworld import compile_gridworld
        for k in ("states", "actions", "transitions", "rewards", "initial", "terminal"):
            if k in data:
                raise MDPError(source, k, "not allowed together with 'gridworld' (the grid defines it)")
        data = dict(data, **compile_gridworld(data["gridworld"], source))
        grid = data.pop("_grid")

    states = v.names(data, "states")
    actions = v.names(data, "actions")
    S = len(states)
    sidx = {s: i for i, s in enumerate(states)}
    aidx = {a: i for i, a in enumerate(actions)}

    terminal = np.zeros(S, dtype=bool)
    term_list = data.get("terminal", []) or []
    if not isinstance(term_list, list):
        raise MDPError(source, "terminal", "must be a list of state names")
    for t in term_list:
        terminal[v.state(t, sidx, "terminal")] = True

    rho0 = _initial(data, v, sidx)
    P = _transitions(data, v, sidx, aidx, terminal)
    R = _rewards(data, v, sidx, aidx, terminal, P)
    K, support = _model_support(data.get("model_support", "all"), v, sidx, aidx, P, terminal)
    model_class = read_model_class(data.get("model_class"), source, states, actions, P, terminal, floor)
    mdp = TabularMDP(name=name, states=tuple(states), actions=tuple(actions), P=P, R=R,
                     rho0=rho0, gamma=float(gamma), terminal=terminal, K=K, support=support,
                     horizon=horizon, floor=float(floor), source=source, grid=grid,
                     occupancy=occupancy)
    if model_class.tabular:
        return mdp
    mdp = with_model_class(mdp, model_class)
    if model_class.kind == "aggregated" and mdp.K.sum(axis=-1).max() * floor > 1.0:
        raise MDPError(source, "model_floor", "times the size of a group's support exceeds 1")
    return mdp


class _Reader:
    """Small typed accessors that raise MDPError naming the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field_: str, problem: str):
        raise MDPError(self.source, field_, problem)

    def number(self, data, key, required=False, default=None, field_=None) -> float:
        field_ = field_ or key
        if key not in data or data[key] is None:
            if required:
                self.fail(field_, "missing (required)")
            return default
        return self.as_number(data[key], field_)

    def as_number(self, x, field_) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            self.fail(field_, f"must be a number, got {x!r}")
        x = float(x)
        if not math.isfinite(x):
            self.fail(field_, f"must be finite, got {x}")
        return x

    def names(self, data, key) -> list[str]:
        if key not in data or data[key] is None:
            self.fail(key, "missing (required)")
        xs = data[key]
        if not isinstance(xs, list) or not xs:
            self.fail(key, "must be a non-empty list of names")
        out = []
        for x in xs:
            if isinstance(x, bool) or not isinstance(x, (str, int)):
                self.fail(key, f"names must be strings, got {x!r}")
            out.append(str(x))
        dup = {x for x in out if out.count(x) > 1}
        if dup:
            self.fail(key, f"duplicate names: {', '.join(sorted(dup))}")
        return out

    def state(self, name, sidx, field_) -> int:
        key = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else None
        if key not in sidx:
            self.fail(field_, f"unknown state {name!r} (states: {', '.join(sidx)})")
        return sidx[key]

    def action(self, name, aidx, field_) -> int:
        key = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else None
        if key not in aidx:
            self.fail(field_, f"unknown action {name!r} (actions: {', '.join(aidx)})")
        return aidx[key]

    def mapping(self, x, field_) -> Mapping:
        if not isinstance(x, Mapping):
            self.fail(field_, f"must be a mapping, got {type(x).__name__}")
        return x


def _initial(data, v: _Reader, sidx) -> np.ndarray:
    if "initial" not in data or data["initial"] is None:
        v.fail("initial", "missing (required): a state name or a mapping state -> probability")
    init = data["initial"]
    rho0 = np.zeros(len(sidx))
    if isinstance(init, Mapping):
        for s, p in init.items():
            p = v.as_number(p, f"initial.{s}")
            if p < 0:
                v.fail(f"initial.{s}", f"negative probability {p}")
            rho0[v.state(s, sidx, "initial")] += p
        total = rho0.sum()
        if abs(total - 1.0) > SUM_TOL:
            v.fail("initial", f"probabilities sum to {total:.12g}, expected 1 (tolerance {SUM_TOL:g})")
    else:
        rho0[v.state(init, sidx, "initial")] = 1.0
    return rho0


def _transitions(data, v: _Reader, sidx, aidx, terminal) -> np.ndarray:
    S, A = len(sidx), len(aidx)
    names = list(sidx)
    P = np.zeros((S, A, S))
    trans = v.mapping(data.get("transitions", {}) or {}, "transitions")
    seen = set()
    for s, row in trans.items():
        i = v.state(s, sidx, "transitions")
        if terminal[i]:
            v.fail(f"transitions.{s}", "a terminal state is absorbing and must not list transitions")
        row = v.mapping(row, f"transitions.{s}")
        for a, dist in row.items():
            j = v.action(a, aidx, f"transitions.{s}")
            fld = f"transitions.{s}.{a}"
            dist = v.mapping(dist, fld)
            for s2, p in dist.items():
                k = v.state(s2, sidx, fld)
                p = v.as_number(p, f"{fld}.{s2}")
                if p < 0:
                    v.fail(f"{fld}.{s2}", f"negative probability {p}")
                P[i, j, k] += p
            total = P[i, j].sum()
            if abs(total - 1.0) > SUM_TOL:
                v.fail(fld, f"probabilities of state {s}, action {a} sum to {total:.12g}, "
                            f"expected 1 (tolerance {SUM_TOL:g})")
            seen.add((i, j))
    for i in range(S):
        if terminal[i]:
            P[i, :, i] = 1.0
            continue
        for j in range(A):
            if (i, j) not in seen:
                v.fail(f"transitions.{names[i]}", f"missing action {list(aidx)[j]!r} "
                       "(every non-terminal state needs every action)")
    return P


def _rewards(data, v: _Reader, sidx, aidx, terminal, P) -> np.ndarray:
    S, A = len(sidx), len(aidx)
    R = np.zeros((S, A, S))
    rew = v.mapping(data.get("rewards", {}) or {}, "rewards")
    for s, row in rew.items():
        i = v.state(s, sidx, "rewards")
        if terminal[i]:
            v.fail(f"rewards.{s}", "a terminal state earns zero reward after entry; remove it")
        row = v.mapping(row, f"rewards.{s}")
        for a, val in row.items():
            j = v.action(a, aidx, f"rewards.{s}")
            fld = f"rewards.{s}.{a}"
            if isinstance(val, Mapping):
                for s2, x in val.items():
                    R[i, j, v.state(s2, sidx, fld)] = v.as_number(x, f"{fld}.{s2}")
            else:
                R[i, j, :] = v.as_number(val, fld)
    return R


def _model_support(spec, v: _Reader, sidx, aidx, P, terminal):
    if isinstance(spec, str):
        if spec not in SUPPORT_KINDS:
            v.fail("model_support", f"must be one of {', '.join(SUPPORT_KINDS)} "
                                    f"or a mapping state -> action -> [next states], got {spec!r}")
        return support_mask(P, terminal, spec), spec
    if spec is True:  # YAML `true` parses as a boolean
        return support_mask(P, terminal, "true"), "true"
    spec = v.mapping(spec, "model_support")
    K = support_mask(P, terminal, "true")
    for s, row in spec.items():
        i = v.state(s, sidx, "model_support")
        row = v.mapping(row, f"model_support.{s}")
        for a, nexts in row.items():
            j = v.action(a, aidx, f"model_support.{s}")
            fld = f"model_support.{s}.{a}"
            if not isinstance(nexts, list):
                v.fail(fld, "must be a list of next-state names")
            mask = np.zeros(len(sidx), dtype=bool)
            for s2 in nexts:
                mask[v.state(s2, sidx, fld)] = True
            missing = [n for n, k in zip(sidx, P[i, j] > 0) if k and not mask[sidx[n]]]
            if missing:
                v.fail(fld, f"model support excludes true transition(s) to {', '.join(missing)}")
            if not terminal[i]:
                K[i, j] = mask
    return K, "explicit"


def mdp_to_dict(mdp: TabularMDP) -> dict:
    """The explicit YAML form of an MDP (round-trips through mdp_from_dict: every number of P and
    R, R also off the support of P)."""
    S, A = mdp.n_states, mdp.n_actions
    st, ac = mdp.states, mdp.actions
    trans, rew = {}, {}
    for i in range(S):
        if mdp.terminal[i]:
            continue
        trans[st[i]], rew[st[i]] = {}, {}
        for j in range(A):
            nz = np.flatnonzero(mdp.P[i, j] > 0)
            trans[st[i]][ac[j]] = {st[k]: float(mdp.P[i, j, k]) for k in nz}
            # R also where P = 0 but a model may move mass (the model reward uses R on K)
            kr = np.flatnonzero((mdp.P[i, j] > 0) | (mdp.R[i, j] != 0))
            rew[st[i]][ac[j]] = {st[k]: float(mdp.R[i, j, k]) for k in kr}
    init = ({st[i]: float(p) for i, p in enumerate(mdp.rho0) if p > 0}
            if np.count_nonzero(mdp.rho0) > 1 else st[int(np.argmax(mdp.rho0))])
    d = {"name": mdp.name, "gamma": mdp.gamma}
    if mdp.horizon is not None:
        d["horizon"] = mdp.horizon
    d.update({"states": list(st), "actions": list(ac), "initial": init,
              "terminal": [st[i] for i in np.flatnonzero(mdp.terminal)],
              "transitions": trans, "rewards": rew})
    K = mdp.K if mdp.model_class.declared_K is None else mdp.model_class.declared_K
    if mdp.support == "explicit":
        d["model_support"] = {st[i]: {ac[j]: [st[k] for k in np.flatnonzero(K[i, j])]
                                      for j in range(A)} for i in range(S) if not mdp.terminal[i]}
    else:
        d["model_support"] = mdp.support
    if mdp.floor != DEFAULT_FLOOR:
        d["model_floor"] = mdp.floor
    if mdp.averaged:
        d["occupancy"] = mdp.occupancy
    if mdp.restricted:
        d["model_class"] = write_model_class(mdp.model_class, st, ac)
    return d


def dump_mdp(mdp: TabularMDP) -> str:
    """YAML text of the explicit form."""
    return yaml.safe_dump(mdp_to_dict(mdp), sort_keys=False, default_flow_style=None, width=100)


ARRAY_FIELDS = ("P", "R", "rho0", "terminal", "K")


def mdp_to_arrays(mdp: TabularMDP) -> dict:
    """Every field of the MDP as plain JSON (arrays as nested lists): an exact round trip through
    mdp_from_arrays, R included off the support of P (a sweep task carries its MDP this way)."""
    d = {f: getattr(mdp, f) for f in mdp.__dataclass_fields__}
    for f in ARRAY_FIELDS:
        d[f] = np.asarray(d[f]).tolist()
    d["states"], d["actions"] = list(mdp.states), list(mdp.actions)
    d["model_class"] = mdp.model_class.to_json()
    return d


def mdp_from_arrays(d: dict) -> TabularMDP:
    """The TabularMDP of an mdp_to_arrays document."""
    kw = dict(d)
    for f in ARRAY_FIELDS:
        kw[f] = np.array(d[f], dtype=bool if f in ("terminal", "K") else float)
    kw["states"], kw["actions"] = tuple(d["states"]), tuple(d["actions"])
    kw["model_class"] = ModelClass.from_json(d.get("model_class"))
    return TabularMDP(**kw)
