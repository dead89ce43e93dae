"""One formulation's interval with its two MPEC ends as parallel sweep tasks.

    solve_split(mdp, formulation, alpha, **options)
        routes as solve_formulation; where the route is the MPEC, runs the leader step and
        returns a continuation (bilevel.sweep.continuation): end_task("min"), end_task("max"),
        then combine_ends in the client. Every other route (exact, enumeration), and a leader
        step that fails, gives the interval itself.
    end_task(...)     rebuilds the MPEC from the MDP, loads the leader-optimal point, runs one
                      end step (bilevel.equilibria.mpec_interval.end_step)
    combine_ends      settles the lead and both ends as the serial path does; the rare cases
                      that need more than the two ends hand over to one more task: a restart
                      (an end beat L*) or an end task that failed -> the serial solve of the
                      formulation; a SCIP interval that failed under --solver auto -> IPOPT

Each end step is a pure function of the MDP, the options and the lead (mpec_interval), so the
settled interval is the serial one; only `seconds` differ: the leader step's plus the slower
end's (the critical path), plus any hand-over.
"""
from __future__ import annotations

import time

from bilevel.cli.output import say
from bilevel.equilibria.document import solve_task
from bilevel.equilibria.mpec_interval import (End, Lead, end_step, failed_interval, leader_step,
                                              open_route, route_info, settle, solve_route)
from bilevel.equilibria.routing import solve_formulation, with_scip_failure
from bilevel.mdp.io import mdp_from_arrays
from bilevel.sweep.continuation import Forward, continuation
from bilevel.sweep.task import Task

HERE = "bilevel.equilibria.parallel_ends"
ROUTE_OPTIONS = ("starts", "seed", "time_limit", "pal_reduction", "ipopt_mode", "epsilon")


class Split:
    """A leader step whose ends are still to run: what solve_formulation returns on the MPEC
    route when it is given `mpec=split_route`."""

    ok = True

    def __init__(self, result: dict, which: str):
        self.result, self.solver, self.scip = result, which, None

    def after_scip(self, reason: str, seconds: float) -> "Split":
        """This (IPOPT) split runs after SCIP did not certify: said when it settles."""
        self.result["continue"]["context"]["scip"] = {"reason": reason, "seconds": seconds}
        return self


def split_route(arrays: dict):
    """The MPEC hook of solve_formulation for a split solve of the MDP given as `arrays`."""
    def mpec(mdp, formulation, alpha, which, starts, seed, time_limit, pal_reduction, log,
             ipopt_mode="auto", epsilon=None):
        options = {"starts": starts, "seed": seed, "time_limit": time_limit,
                   "pal_reduction": pal_reduction, "ipopt_mode": ipopt_mode, "epsilon": epsilon}
        route = open_route(mdp, formulation, alpha, which, **options)
        if log:
            log(f"{formulation}: leader optimum ({which}); the ends as two tasks")
        lead = leader_step(route)
        if isinstance(lead, str):
            return failed_interval(route, lead)
        shared = {"mdp": arrays, "formulation": formulation, "alpha": alpha, "which": which,
                  "options": options}
        ends = [Task(f"{HERE}:end_task", {**shared, "lead": lead.to_json(), "name": name},
                     label=f"{formulation}-{name}", cost=1.0) for name in ("min", "max")]
        context = {**shared, "route": route_info(route),
                   "lead": {k: v for k, v in lead.to_json().items() if k != "result"}}
        return Split(continuation(ends, f"{HERE}:combine_ends", context), which)
    return mpec


def solve_split(mdp: dict, formulation: str, alpha=None, solver: str = "auto", **options):
    """The interval JSON of `formulation` (mdp as mdp_to_arrays), or, on the MPEC route, a
    continuation whose ends run as two tasks (module docstring)."""
    res = solve_formulation(mdp_from_arrays(mdp), formulation, alpha=alpha, solver=solver,
                            log=say("solve"), mpec=split_route(mdp), **options)
    if isinstance(res, Split):
        res.result["continue"]["context"]["fallback"] = solver in ("auto", "enumerate") and \
            res.solver == "scip"
        res.result["continue"]["context"]["solver"] = solver
        return res.result
    return res.to_json()


def end_task(mdp: dict, formulation: str, alpha, which: str, options: dict, lead: dict,
             name: str) -> dict:
    """One end step (mpec_interval.end_step) on the MPEC rebuilt from the MDP's arrays."""
    route = open_route(mdp_from_arrays(mdp), formulation, alpha, which, **options)
    return end_step(route, Lead.from_json(lead, route.bm.model), name).to_json()


def combine_ends(context: dict, records: list) -> dict:
    """The settled interval of a lead and its two end records (see the module docstring)."""
    t0 = time.perf_counter()
    if any(r["status"] != "ok" for r in records):
        return _hand_over(context, "serial_task")
    ends = [End.from_json(r["result"]) for r in records]
    lead = Lead.from_json(context["lead"])
    seconds = lead.seconds + max(e.seconds for e in ends)
    outcome = settle(context["route"], lead, ends, [], [], seconds)
    if outcome.interval is None:                       # an end beat L*: the serial restarts
        return _hand_over(context, "serial_task")
    interval = outcome.interval
    if not interval.ok and context.get("fallback"):
        return _hand_over(context, "ipopt_task", scip={"reason": interval.reason,
                                                       "seconds": interval.seconds})
    if context.get("scip"):
        interval = with_scip_failure(interval, context["scip"])
    return _timed(interval.to_json(), time.perf_counter() - t0)


def _timed(doc: dict, extra: float) -> dict:
    if doc.get("seconds") is not None:
        doc["seconds"] = round(doc["seconds"] + extra, 3)
    return doc


def _hand_over(context: dict, task: str, **extra) -> dict:
    """A continuation to one more task (`serial_task` or `ipopt_task`), whose record is this
    formulation's."""
    kwargs = {k: context[k] for k in ("mdp", "formulation", "alpha", "options")}
    kwargs.update({"solver": context.get("solver", "auto"), "scip": context.get("scip"), **extra})
    return continuation([Task(f"{HERE}:{task}", kwargs, label=f"{context['formulation']}-{task}",
                              cost=2.0)], f"{HERE}:forward", {})


def serial_task(mdp: dict, formulation: str, alpha, options: dict, solver: str,
                scip: dict | None = None) -> dict:
    """The formulation's interval by the serial path (document.solve_task), after SCIP's failure when
    `scip` is given (its route was then IPOPT)."""
    if scip is None:
        return solve_task(mdp, formulation, alpha, solver=solver, **options)
    return ipopt_task(mdp, formulation, alpha, options, solver, scip)


def ipopt_task(mdp: dict, formulation: str, alpha, options: dict, solver: str,
               scip: dict) -> dict:
    """IPOPT's interval after SCIP did not certify (routing's hand-over under --solver auto)."""
    say("solve")(f"{formulation}: SCIP did not certify ({scip['reason']}); IPOPT")
    local = solve_route(mdp_from_arrays(mdp), formulation, alpha, "ipopt", log=say("solve"),
                        **{k: options[k] for k in ROUTE_OPTIONS})
    return with_scip_failure(local, scip).to_json()


def forward(context: dict, records: list):
    """The one child's record as this task's (a failure keeps its reason as it is)."""
    record = records[0]
    if record["status"] != "ok":
        raise Forward(record)
    return record["result"]
