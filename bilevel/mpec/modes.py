"""Reductions of complementarity pairs to ordinary constraints (Scholtes, ExactProduct, BigM).

Each mode accepts a model, applies itself (new Block, Complementarity deactivated) and inverts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyomo.environ as pyo
from pyomo.common.collections import ComponentSet
from pyomo.core.expr import value as pvalue

from bilevel.mpec.pairs import Pair, complementarity_pairs


# --------------------------------------------------------------------------------------------
# reductions
@dataclass
class InverseData:
    """What `invert` needs: the added block, the deactivated components, the pairs and the
    nonnegative sides (slack or plain var) used in the reduced model."""

    block_name: str
    components: list
    pairs: list
    sides: list          # [(a_side, b_side)], Pyomo vars (or expressions) >= 0
    eps: Any = None      # Scholtes: the eps Var


class _Reduction:
    """apply(model) -> (model, InverseData); invert(model, inverse) restores the model."""

    name = "reduction"

    def accepts(self, model) -> bool:
        return bool(complementarity_pairs(model))

    def apply(self, model):
        pairs = complementarity_pairs(model)
        bname = "_mpec_reduction"
        k = 0
        while model.component(bname) is not None:
            k += 1
            bname = f"_mpec_reduction_{k}"
        blk = pyo.Block(concrete=True)
        model.add_component(bname, blk)
        blk.slack = pyo.Var(pyo.Any, dense=False, bounds=(0, None))
        blk.slack_def = pyo.Constraint(pyo.Any)
        blk.nonneg = pyo.Constraint(pyo.Any)
        sides = []
        for i, p in enumerate(pairs):
            sides.append((self._side(blk, (i, "a"), p.a), self._side(blk, (i, "b"), p.b)))
        comps = []
        seen = ComponentSet()
        for p in pairs:
            c = p.source.parent_component()
            if c not in seen:
                seen.add(c)
                comps.append(c)
                c.deactivate()
        inv = InverseData(bname, comps, pairs, sides)
        self._build(blk, sides, inv)
        return model, inv

    @staticmethod
    def _side(blk, key, e):
        """A nonnegative Pyomo var equal to e: e itself if it is a var, else a slack."""
        if getattr(e, "is_variable_type", lambda: False)() and not e.fixed:
            if e.lb is None or e.lb < 0:
                blk.nonneg[key] = e >= 0
            return e
        s = blk.slack[key]
        val = pvalue(e, exception=False)
        if val is not None:
            s.set_value(max(0.0, float(val)), skip_validation=True)
        blk.slack_def[key] = s == e
        return s

    def _build(self, blk, sides, inv):  # pragma: no cover - abstract
        raise NotImplementedError

    def invert(self, model, inv: InverseData):
        """Delete the reduction block and reactivate the Complementarity components."""
        model.del_component(inv.block_name)
        for c in inv.components:
            c.activate()
        return model


@dataclass(frozen=True)
class Scholtes(_Reduction):
    """a*b <= eps with eps -> 0 along `schedule` (one Var `eps`, lb = ub = current step).
    An empty schedule means no relaxed solve at all: each start goes straight to the active-set
    polish (for starts that are already complementary, e.g. follower-optimal points)."""

    schedule: tuple = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
    name = "scholtes"

    def _build(self, blk, sides, inv):
        e0 = float(self.schedule[0]) if self.schedule else 0.0   # () = polish only
        blk.eps = pyo.Var(bounds=(e0, e0), initialize=e0)
        blk.relaxed = pyo.Constraint(range(len(sides)),
                                     rule=lambda b, i: sides[i][0] * sides[i][1] <= b.eps)
        inv.eps = blk.eps

    @staticmethod
    def set_eps(inv: InverseData, eps: float):
        inv.eps.setlb(float(eps))
        inv.eps.setub(float(eps))
        inv.eps.set_value(float(eps))


@dataclass(frozen=True)
class ExactProduct(_Reduction):
    """a*b == 0 (a nonconvex equality; SCIP solves it globally)."""

    name = "exact_product"

    def _build(self, blk, sides, inv):
        blk.product = pyo.Constraint(range(len(sides)),
                                     rule=lambda b, i: sides[i][0] * sides[i][1] == 0)


@dataclass(frozen=True)
class BigM(_Reduction):
    """a <= M_a z, b <= M_b (1 - z), z binary. `M` is a scalar, an (M_a, M_b) tuple, or a
    mapping {ComplementarityData: scalar or (M_a, M_b)} with `default` for the rest. The caller
    is responsible for M being a valid bound on a and b at some optimum."""

    M: Any = 1e3
    default: Any = None
    name = "big_m"

    def _bounds(self, p: Pair):
        m = self.M
        if hasattr(m, "get"):  # dict-like, e.g. ComponentMap {ComplementarityData: M}
            m = m.get(p.source, self.default)
            if m is None:
                raise KeyError(f"BigM: no M for {p.source.name}")
        if isinstance(m, (tuple, list)):
            return float(m[0]), float(m[1])
        return float(m), float(m)

    def _build(self, blk, sides, inv):
        ms = [self._bounds(p) for p in inv.pairs]
        n = len(sides)
        blk.z = pyo.Var(range(n), domain=pyo.Binary)
        blk.big_a = pyo.Constraint(range(n), rule=lambda b, i: sides[i][0] <= ms[i][0] * b.z[i])
        blk.big_b = pyo.Constraint(range(n),
                                   rule=lambda b, i: sides[i][1] <= ms[i][1] * (1 - b.z[i]))
