"""An MPEC end (`mpec_interval.End`) that its own repair lifted out of the band, solved again
below the band (docs/DESIGN.md section 4). `route`, `lead`: the `mpec_interval.Route` and `Lead`
of the interval."""
from __future__ import annotations

from bilevel.equilibria.mpec_route import _certified_end, _load, cap_leader
from bilevel.mpec.driver import solve_mpec


def pull_back(route, lead, name: str, bound: float, out) -> None:
    """A SCIP end at the band's edge whose snap to the follower's best response lifts its leader
    value above the band by s = after - before (taken at least after - band; the follower's KKT
    residual at SCIP's feasibility tolerance, amplified by the model's return): solve the end
    again with the leader capped at band - 2^k s (k = 1, 2), so that the snapped point falls
    inside the band. The first solve's bound on J over the whole band stays the proof, and the
    new end's proved gap is its distance |J - bound| to it (for the min end: no equilibrium of
    the band has J below the bound, and the new end is one with J = its value). `out` is
    updated when a retry passes."""
    m = route.bm.model
    after = out.snapped["leader_objective_after"]
    # the snap's lift, or (when SCIP's own point was already past the band) the excess itself
    shift = max(after - out.snapped["leader_objective_before"], after - lead.band)
    floor = max(lead.L, lead.L_check)
    for k in (1, 2):
        cap = max(lead.band - 2 ** k * shift, floor)
        _load(lead.result.point)
        cap_leader(m, cap)
        res = solve_mpec(m, route.reduction, route.backend, **route.kw)
        if not res.ok:
            return
        snapped, polished = {}, {}
        eq, why, local = _certified_end(route.bm, name, res, route.which, lead.band,
                                        f"{lead.L + lead.tol:.9g}", snapped, polished)
        if not why:
            out.snapped = {**snapped.get(name, {}), "pulled_back": {
                "leader_cap": cap, "first_end_leader_objective": out.eq.leader_objective,
                "J_bound_over_band": bound}}
            out.eq, out.why, out.local = eq, "", local
            out.end_gap = abs(eq.J - bound)
            return
        if cap == floor:
            return
