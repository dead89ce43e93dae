"""Complementarity pairs a >= 0 _|_ b >= 0 read from every active pyomo.mpec.Complementarity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyomo.core.expr import value as pvalue
from pyomo.core.expr.numvalue import native_numeric_types
from pyomo.mpec import Complementarity


# --------------------------------------------------------------------------------------------
# pairs
@dataclass(frozen=True)
class Pair:
    """One complementarity condition  a >= 0 _|_ b >= 0  (a, b Pyomo expressions)."""

    source: Any   # the ComplementarityData it came from
    a: Any
    b: Any


def _is_zero(e) -> bool:
    return e.__class__ in native_numeric_types and e == 0 or (
        hasattr(e, "is_constant") and e.is_constant() and pvalue(e) == 0)


def _nonneg(lo, e, hi):
    """(lo, e, hi) with one finite side -> the expression that must be >= 0."""
    if lo is not None and hi is None:
        return e if _is_zero(lo) else e - lo
    if hi is not None and lo is None:
        return hi - e
    raise NotImplementedError("ranged complementarity (l <= x <= u _|_ F) is not supported")


def complementarity_pairs(model) -> list[Pair]:
    """All active complementarity conditions of `model` as pairs a >= 0 _|_ b >= 0.

    Accepted forms (Pyomo's canonical (lo, expr, hi) of each argument):
    - two one-sided inequalities: complements(e1 >= l1, e2 <= u2)  -> (e1 - l1, u2 - e2);
    - one one-sided inequality and a free expression (MCP form):
      complements(x >= l, F) -> (x - l, F);  complements(x <= u, F) -> (u - x, -F).
    An equality argument (complements(h == 0, v)) is not a pair: it is rejected here, write
    it as a Constraint.
    """
    pairs = []
    for comp in model.component_data_objects(Complementarity, active=True, descend_into=True):
        e1, e2 = (comp._canonical_expression(arg) for arg in comp._args)  # noqa: SLF001
        if len(e1) == 2 or len(e2) == 2:
            raise NotImplementedError(f"{comp.name}: equality inside complements(); "
                                      "write it as a Constraint")
        free1 = e1[0] is None and e1[2] is None
        free2 = e2[0] is None and e2[2] is None
        if free1 and free2:
            raise ValueError(f"{comp.name}: both sides are free expressions")
        if free1:
            e1, e2, free1, free2 = e2, e1, free2, free1
        a = _nonneg(*e1)
        if free2:
            b = e2[1] if e1[2] is None else -e2[1]
        else:
            b = _nonneg(*e2)
        pairs.append(Pair(comp, a, b))
    return pairs


def complementarity_violation(pairs) -> float:
    """max_i |min(a_i, b_i)| at the current values: 0 iff every a, b >= 0 and a*b = 0."""
    worst = 0.0
    for p in pairs:
        worst = max(worst, abs(min(pvalue(p.a), pvalue(p.b))))
    return worst
