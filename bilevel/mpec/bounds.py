"""Proven bounds on the sides of complementarity pairs (what BigM derives its M from).

For a pair  a >= 0 _|_ b >= 0  the bound of a side e is an interval [lo, hi] with

    lo <= e(v) <= hi   for every v within the variables' bounds,

computed by interval arithmetic on the expression (`compute_bounds_on_expr`; for a plain
variable these are its own bounds). With `tighten`, the variables' bounds are first tightened by
feasibility-based bound tightening (FBBT) over the model's active constraints, so the interval
then holds for every point that satisfies those constraints; the model's bounds are restored
afterwards. Either way the bound is proven, never guessed: an unbounded side stays unbounded
(hi = inf).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap
from pyomo.contrib.fbbt.fbbt import compute_bounds_on_expr, fbbt
from pyomo.common.errors import InfeasibleConstraintException


class ReductionError(ValueError):
    """A reduction cannot be applied to a model; the message is one line naming the cause."""


def pair_name(pair) -> str:
    """'name (Complementarity <component>, index <i>)' of the ComplementarityData of a pair."""
    data = pair.source
    comp = data.parent_component()
    if data is comp:
        return f"{data.name} (scalar Complementarity)"
    return f"{data.name} (Complementarity {comp.name}, index {data.index()!r})"


def short(expr, width: int = 60) -> str:
    """One-line text of a Pyomo expression, cut to `width` characters."""
    text = " ".join(str(expr).split())
    return text if len(text) <= width else text[: width - 3] + "..."


@contextmanager
def tightened_bounds(model):
    """Run FBBT on `model` (its variables' bounds are tightened in place) and restore, on exit,
    the declared bounds of every variable FBBT changed (mutable Param bounds stay Params)."""
    saved = ComponentMap((v, (v.lower, v.upper, v.bounds))
                         for v in model.component_data_objects(pyo.Var, descend_into=True))
    try:
        try:
            fbbt(model, deactivate_satisfied_constraints=False)
        except InfeasibleConstraintException as err:
            raise ReductionError(f"bound tightening proves the model infeasible: "
                                 f"{' '.join(str(err).split())}") from None
        yield
    finally:
        for v, (lower, upper, bounds) in saved.items():
            if v.bounds != bounds:
                v.lower, v.upper = lower, upper


def _interval(expr) -> tuple[float, float]:
    if getattr(expr, "is_variable_type", lambda: False)() and not expr.fixed:
        lo, hi = expr.bounds
    else:
        lo, hi = compute_bounds_on_expr(expr)
    return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))


def side_bounds(model, pairs, tighten: bool = True) -> list:
    """[((lo_a, hi_a), (lo_b, hi_b)) for each pair]: proven intervals of the two sides (module
    doc), +-inf where a side is unbounded. Raises ReductionError if FBBT proves infeasibility."""
    if not tighten:
        return [(_interval(p.a), _interval(p.b)) for p in pairs]
    with tightened_bounds(model):
        return [(_interval(p.a), _interval(p.b)) for p in pairs]
