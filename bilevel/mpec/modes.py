"""Reductions (modes) of complementarity pairs to ordinary constraints.

Every active `pyomo.mpec.Complementarity` of a model is read as pairs  a >= 0 _|_ b >= 0
(`complementarity_pairs`). A mode has three steps:

    accepts(model) -> Acceptance   can it reduce the model, and if not, why (one line);
    apply(model)   -> (model, InverseData)   a new Block with the mode's constraints, the
                      Complementarity components deactivated; raises exactly when `accepts`
                      says no (ReductionError, or the pair reader's error for a form it does
                      not read);
    invert(model, inverse)         delete the Block, reactivate the components (values stay).

Every mode writes the sides as nonnegative variables: a side that is a plain unfixed variable
is used as is (with  a >= 0  added unless its lower bound is >= 0), any other side gets a
slack  s == a, s >= 0  (the lifted form, friendlier to IPOPT). The modes then add

    Scholtes(schedule)   a*b <= eps, eps -> 0 along the schedule          (IPOPT, local)
    ExactProduct()       a*b == 0                                         (SCIP, global)
    BigM(M)              a <= M_a z,  b <= M_b (1 - z),  z binary         (SCIP, MILP/MINLP)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyomo.environ as pyo
from pyomo.common.collections import ComponentSet
from pyomo.core.expr import value as pvalue

from bilevel.mpec.bounds import ReductionError, pair_name, short, side_bounds
from bilevel.mpec.pairs import Pair, complementarity_pairs


@dataclass
class InverseData:
    """What `invert` needs: the added block, the deactivated components, the pairs and the
    nonnegative sides (slack or plain var) used in the reduced model; `big_m` the (M_a, M_b)
    BigM wrote for each pair."""

    block_name: str
    components: list
    pairs: list
    sides: list          # [(a_side, b_side)], Pyomo vars (or expressions) >= 0
    eps: Any = None      # Scholtes: the eps Var
    big_m: list | None = None


@dataclass(frozen=True)
class Acceptance:
    """Answer of `accepts`: `ok`, and when not ok the one-line `reason`. Truthy iff ok."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class _Reduction:
    """accepts / apply / invert (module doc). A mode adds `_plan` (what it needs from the model
    before writing anything; raises ReductionError) and `_build` (its constraints)."""

    name = "reduction"

    def accepts(self, model) -> Acceptance:
        """Whether `apply` can reduce `model`. A model without pairs is accepted (the reduction
        is then the identity plus an empty block)."""
        try:
            self._plan(model, complementarity_pairs(model))
        except (ReductionError, NotImplementedError, ValueError) as err:
            return Acceptance(False, f"{self.name}: {err}")
        return Acceptance(True)

    def _plan(self, model, pairs):
        return None

    def apply(self, model):
        """Reduce every active pair of `model`; returns (model, InverseData)."""
        pairs = complementarity_pairs(model)
        plan = self._plan(model, pairs)
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
        self._build(blk, sides, inv, plan)
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

    def _build(self, blk, sides, inv, plan):  # pragma: no cover - abstract
        raise NotImplementedError

    def invert(self, model, inv: InverseData):
        """Delete the reduction block and reactivate the Complementarity components."""
        model.del_component(inv.block_name)
        for c in inv.components:
            c.activate()
        return model


@dataclass(frozen=True)
class Scholtes(_Reduction):
    """Scholtes' relaxation: a >= 0, b >= 0, a*b <= eps, with eps one Var fixed by its bounds
    (lb = ub = the current step of `schedule`, moved by `set_eps` between warm-started solves).

    Exact only at eps = 0 (then the feasible set is the complementarity set, but no NLP
    constraint qualification holds there); for eps > 0 it is a relaxation whose feasible set
    contains every complementary point. An empty schedule means no relaxed solve at all: each
    start goes straight to the active-set polish (for starts that are already complementary,
    e.g. follower-optimal points). Accepts any model whose pairs can be read, with eps >= 0."""

    schedule: tuple = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
    name = "scholtes"

    def _plan(self, model, pairs):
        bad = [e for e in self.schedule if not float(e) >= 0]
        if bad:
            raise ReductionError(f"eps schedule has negative or NaN steps {bad} (a*b <= eps "
                                 "with eps < 0 is infeasible)")

    def _build(self, blk, sides, inv, plan):
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
    """The product form: a >= 0, b >= 0, a*b == 0 (one nonconvex bilinear equality per pair).

    Always exact: its feasible set is the complementarity set. SCIP solves it globally by
    spatial branch and bound; for NLP solvers it is degenerate (use Scholtes). Accepts any model
    whose pairs can be read."""

    name = "exact_product"

    def _build(self, blk, sides, inv, plan):
        blk.product = pyo.Constraint(range(len(sides)),
                                     rule=lambda b, i: sides[i][0] * sides[i][1] == 0)


@dataclass(frozen=True)
class BigM(_Reduction):
    """The big-M (Fortuny-Amat and McCarl) form: a >= 0, b >= 0, a <= M_a z, b <= M_b (1 - z),
    z binary (z = 1 lets a > 0 and forces b = 0; z = 0 the reverse).

    Exact when M_a >= a and M_b >= b at every point of interest. Derived M (the default) are
    proven bounds: M_a is the upper end of `side_bounds` of a (its variable bounds, or interval
    arithmetic on the expression, after FBBT over the model's constraints when `tighten`), so
    the reduction is exact. A side without a finite proven upper bound (e.g. a KKT multiplier
    with no bound: see `KKTBlock.bound_multipliers`) makes `accepts` say no and `apply` raise a
    ReductionError naming the pair.

    `M` may be given: a scalar, an (M_a, M_b) tuple (None entries derived), or a mapping
    {ComplementarityData: scalar or tuple} with `default` for pairs not in it (None: derive).
    A given M must be finite, >= 0 and not below the side's proven upper bound when there is
    one (a smaller M is not implied by the model and can cut off solutions: rejected). A given
    M on a side with no proven bound is the caller's claim about the points of interest."""

    M: Any = None
    default: Any = None
    tighten: bool = True
    name = "big_m"

    def _given(self, p: Pair):
        m = self.M
        if hasattr(m, "get"):  # dict-like, e.g. ComponentMap {ComplementarityData: M}
            m = m.get(p.source, self.default)
        if isinstance(m, (tuple, list)):
            return m[0], m[1]
        return m, m

    def big_m(self, model, pairs=None) -> list:
        """[(M_a, M_b) for each pair of `model`] as `apply` would write them (class doc)."""
        pairs = complementarity_pairs(model) if pairs is None else pairs
        proven = side_bounds(model, pairs, tighten=self.tighten)
        out = []
        for p, bounds in zip(pairs, proven):
            out.append(tuple(_side_m(p, side, expr, g, hi) for side, expr, g, (_, hi)
                             in zip("ab", (p.a, p.b), self._given(p), bounds)))
        return out

    def _plan(self, model, pairs):
        return self.big_m(model, pairs)

    def _build(self, blk, sides, inv, ms):
        n = len(sides)
        inv.big_m = ms
        blk.z = pyo.Var(range(n), domain=pyo.Binary)
        blk.big_a = pyo.Constraint(range(n), rule=lambda b, i: sides[i][0] <= ms[i][0] * b.z[i])
        blk.big_b = pyo.Constraint(range(n),
                                   rule=lambda b, i: sides[i][1] <= ms[i][1] * (1 - b.z[i]))


def _side_m(p: Pair, side: str, expr, given, hi: float) -> float:
    """M of one side: the proven upper bound `hi` (at least 0) when none is given, else the
    given value after checking it (BigM doc)."""
    where = f"pair {pair_name(p)}, side {side} = {short(expr)}"
    if given is None:
        if not math.isfinite(hi):
            raise ReductionError(f"{where} has no finite upper bound: bound its variables "
                                 "or give M")
        return max(float(hi), 0.0)
    m = float(given)
    if not (math.isfinite(m) and m >= 0):
        raise ReductionError(f"{where}: M = {given!r} must be finite and >= 0")
    if math.isfinite(hi) and m < hi - 1e-9 * max(1.0, abs(hi)):
        raise ReductionError(f"{where}: M = {m:g} is below its proven upper bound {hi:g}, so "
                             "it can cut off solutions; omit M to use the bound, or tighten "
                             "the variables' bounds")
    return m
