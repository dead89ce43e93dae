"""The YAML `model_class` field: read it (errors name file and field) and write it back.

    model_class: tabular                       # default: every floored model on the support
    model_class:
      kind: aggregated
      partition: [[A, B], [C]]                 # groups of states; a state not listed is alone
    model_class:
      kind: linear
      basis:                                   # kernels: state -> action -> {next state: p}
        stay: {A: {X: {A: 1.0}}, ...}          # a kernel not given at (s, a) is no atom there
        move: {A: {X: {B: 0.5, C: 0.5}}, ...}
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from bilevel.mdp.model_class import MODEL_CLASSES, TABULAR, ModelClass
from bilevel.mdp.model import SUM_TOL, MDPError


def read_model_class(spec, source: str, states, actions, P: np.ndarray, terminal: np.ndarray,
                     floor: float) -> ModelClass:
    """The ModelClass of a parsed `model_class` field (None: tabular). Raises MDPError."""
    if spec is None or spec == "tabular":
        return TABULAR
    fld = "model_class"
    if isinstance(spec, str):
        raise MDPError(source, fld, f"must be tabular or a mapping with kind: aggregated | linear, got {spec!r}")
    if not isinstance(spec, Mapping):
        raise MDPError(source, fld, f"must be tabular or a mapping, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in MODEL_CLASSES:
        raise MDPError(source, f"{fld}.kind", f"must be one of {', '.join(MODEL_CLASSES)}, got {kind!r}")
    allowed = {"tabular": {"kind"}, "aggregated": {"kind", "partition"}, "linear": {"kind", "basis"}}[kind]
    for k in spec:
        if k not in allowed:
            raise MDPError(source, f"{fld}.{k}", f"not a field of a {kind} class "
                           f"(fields: {', '.join(sorted(allowed))})")
    sidx = {s: i for i, s in enumerate(states)}
    if kind == "tabular":
        return TABULAR
    if kind == "aggregated":
        return ModelClass("aggregated", partition=_partition(spec.get("partition"), source, sidx),
                          names=())
    return _linear(spec.get("basis"), source, states, actions, P, terminal, floor)


def _state(name, sidx, source, fld) -> int:
    key = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else None
    if key not in sidx:
        raise MDPError(source, fld, f"unknown state {name!r} (states: {', '.join(sidx)})")
    return sidx[key]


def _partition(groups, source, sidx) -> tuple:
    fld = "model_class.partition"
    if not isinstance(groups, list) or not groups:
        raise MDPError(source, fld, "must be a non-empty list of groups (lists of state names)")
    seen, out = {}, []
    for i, g in enumerate(groups):
        if not isinstance(g, list) or not g:
            raise MDPError(source, f"{fld}[{i}]", "must be a non-empty list of state names")
        idx = []
        for name in g:
            s = _state(name, sidx, source, f"{fld}[{i}]")
            if s in seen:
                raise MDPError(source, f"{fld}[{i}]", f"state {name!r} is already in group {seen[s]}")
            seen[s] = i
            idx.append(s)
        out.append(tuple(idx))
    out += [(s,) for s in range(len(sidx)) if s not in seen]
    return tuple(out)


def _linear(basis, source, states, actions, P, terminal, floor) -> ModelClass:
    fld = "model_class.basis"
    if not isinstance(basis, Mapping) or not basis:
        raise MDPError(source, fld, "must be a mapping of kernel names to kernels "
                                    "(state -> action -> {next state: probability})")
    sidx = {s: i for i, s in enumerate(states)}
    aidx = {a: i for i, a in enumerate(actions)}
    S, A = len(states), len(actions)
    Phi = np.zeros((len(basis), S, A, S))
    for k, (name, kernel) in enumerate(basis.items()):
        kf = f"{fld}.{name}"
        if not isinstance(kernel, Mapping):
            raise MDPError(source, kf, "must be a mapping state -> action -> {next state: probability}")
        for s, row in kernel.items():
            i = _state(s, sidx, source, kf)
            if terminal[i]:
                raise MDPError(source, f"{kf}.{s}", "a terminal state has no model to choose")
            if not isinstance(row, Mapping):
                raise MDPError(source, f"{kf}.{s}", "must be a mapping action -> {next state: probability}")
            for a, dist in row.items():
                af = f"{kf}.{s}.{a}"
                if str(a) not in aidx:
                    raise MDPError(source, af, f"unknown action {a!r} (actions: {', '.join(aidx)})")
                j = aidx[str(a)]
                if not isinstance(dist, Mapping):
                    raise MDPError(source, af, "must be a mapping next state -> probability")
                for t, p in dist.items():
                    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 0:
                        raise MDPError(source, f"{af}.{t}", f"must be a probability >= 0, got {p!r}")
                    Phi[k, i, j, _state(t, sidx, source, af)] += float(p)
                if abs(Phi[k, i, j].sum() - 1.0) > SUM_TOL:
                    raise MDPError(source, af, f"probabilities sum to {Phi[k, i, j].sum():.12g}, expected 1")
    for i in np.flatnonzero(~terminal):
        for j in range(A):
            where = f"{fld} at {states[i]}.{actions[j]}"
            n = int(np.sum(Phi[:, i, j].sum(axis=-1) > 0))
            if n == 0:
                raise MDPError(source, where, "no kernel is given for this state and action")
            cover = Phi[:, i, j].sum(axis=0) > 0
            missing = [states[t] for t in np.flatnonzero((P[i, j] > 0) & ~cover)]
            if missing:
                raise MDPError(source, where, f"no kernel reaches the true next state(s) {', '.join(missing)} "
                                              "(every model of the class would have infinite loss)")
            if n * floor > 1.0:
                raise MDPError(source, where, f"{n} kernels times model_floor {floor} exceed 1")
    return ModelClass("linear", basis=Phi, names=tuple(str(n) for n in basis))


def write_model_class(model_class: ModelClass, states, actions):
    """The YAML form of a model class (read_model_class inverts it)."""
    if model_class.tabular:
        return "tabular"
    if model_class.kind == "aggregated":
        # singletons are implied; all singletons: one is written (the field needs a group)
        groups = [g for g in model_class.partition if len(g) > 1] or model_class.partition[:1]
        return {"kind": "aggregated", "partition": [[states[s] for s in g] for g in groups]}
    basis = {}
    for k, name in enumerate(model_class.names):
        kernel = {}
        for i, s in enumerate(states):
            row = {}
            for j, a in enumerate(actions):
                dist = model_class.basis[k, i, j]
                if dist.sum() > 0:
                    row[a] = {states[t]: float(dist[t]) for t in np.flatnonzero(dist > 0)}
            if row:
                kernel[s] = row
        basis[name] = kernel
    return {"kind": "linear", "basis": basis}
