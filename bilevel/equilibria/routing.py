"""Routing: which route (exact, enumeration, MPEC on SCIP or IPOPT) computes a formulation's interval."""
from __future__ import annotations

import math
from dataclasses import replace

import bilevel.game as game
from bilevel.equilibria.interval import EquilibriumInterval
from bilevel.equilibria.mpec_interval import solve_route
from bilevel.mdp.graph import live_pairs, n_policies
from bilevel.mdp.model import TabularMDP


AUTO_SCIP_MAX_PAIRS = 16     # --solver auto: SCIP (global) up to this many state-action pairs
# --solver auto for a formulation with `enumerate_on_auto` (MAL + agent reward, whose MPEC SCIP
# does not close): enumerate the follower's deterministic policies (bilevel.equilibria.enumeration,
# global) when there are at most this many ...
ENUMERATE_AUTO_MAX_POLICIES = 16
ENUMERATE_TIME_LIMIT = 5.0   # ... with at most this many seconds per policy; else IPOPT
SCIP_TIME_LIMIT = 30.0       # seconds per SCIP solve; auto falls back to IPOPT past it
# --solver auto, MAL + agent reward past the enumeration, on MDPs with at most this many live
# pairs: IPOPT's interval, then the binary-follower MINLP started from its ends
# (`refined_by_minlp`), both within AUTO_AGENT_REWARD_SECONDS (an 8 x 3 MDP has 10 s for all four
# formulations), and at least AUTO_MINLP_MIN_SECONDS for the MINLP
AUTO_MINLP_MAX_PAIRS = 36
AUTO_AGENT_REWARD_SECONDS = 6.5
AUTO_MINLP_MIN_SECONDS = 2.0
SOLVERS = ("auto", "exact", "mpec-scip", "mpec-ipopt", "enumerate")
SOLVER_ALIASES = {"scip": "mpec-scip", "ipopt": "mpec-ipopt"}


def choose_solver(mdp: TabularMDP, solver: str, formulation: str = "") -> str:
    """`auto`: SCIP (global) for MDPs with at most AUTO_SCIP_MAX_PAIRS state-action pairs, except
    a formulation with `enumerate_on_auto` (MAL + agent reward: SCIP did not close its gap in
    30 s on hidden_goal for alpha >= 0.99; MAL + true reward under `occupancy: average`, which
    has no closed form there): enumeration of the follower's policies when there are at most
    ENUMERATE_AUTO_MAX_POLICIES, else IPOPT. (solve_formulation: a SCIP solve that
    does not certify hands over to the enumeration when it applies and proves both ends, else to
    IPOPT; MAL + agent reward's IPOPT interval then goes to the MINLP where `refines_on_auto`.)
    `enumerate` covers the `enumerable` formulations (a policy follower: the MAL
    family); the others (PAL) then take the `auto` route."""
    spec = game.formulation(formulation) if formulation else None
    if solver == "enumerate":
        return "enumerate" if spec is None or spec.enumerable else choose_solver(mdp, "auto", formulation)
    if solver != "auto":
        return solver
    if spec is not None and (spec.enumerate_on_auto or (mdp.averaged and spec.exact_route == "true_return")):
        return "enumerate" if n_policies(mdp) <= ENUMERATE_AUTO_MAX_POLICIES else "ipopt"
    return "scip" if live_pairs(mdp) <= AUTO_SCIP_MAX_PAIRS else "ipopt"




def takes_minlp(mdp: TabularMDP, solver: str, spec) -> bool:
    """Whether MAL + agent reward (`spec.exact_minlp`) runs on the binary-follower MINLP
    (bilevel.equilibria.exact.agent_reward) alone, without a budget: with `exact`, on tabular
    models and the discounted occupancy. (`auto` runs it after IPOPT within a budget on small
    MDPs, `refines_on_auto`: it proves 8 x 3 Garnets where the MPEC route is local, but in up
    to minutes, past the 10 s that auto has for all formulations of such an MDP;
    benchmarks/RESULTS.md 10 and 12.)"""
    if solver != "exact" or not spec.exact_minlp:
        return False
    from bilevel.equilibria.exact.minlp import minlp_applies
    return minlp_applies(mdp)


def refines_on_auto(mdp: TabularMDP, spec, solver: str, which: str, epsilon=None) -> bool:
    """Whether `solver` (after solve_formulation's aliases and hand-overs), routed to `which`,
    follows IPOPT's interval of MAL + agent reward with the binary-follower MINLP
    (`refined_by_minlp`): `auto` on IPOPT, no epsilon band, tabular models, discounted
    occupancy, at most AUTO_MINLP_MAX_PAIRS live pairs. On small Garnets IPOPT's local interval misses the band's
    low end more often than not (34 of 54 Garnets of 3-8 states), and within the budget the
    MINLP proves every 3- and 4-state one measured (benchmarks/RESULTS.md 12)."""
    if solver != "auto" or which != "ipopt" or epsilon is not None or not spec.exact_minlp \
            or live_pairs(mdp) > AUTO_MINLP_MAX_PAIRS:
        return False
    from bilevel.equilibria.exact.minlp import minlp_applies
    return minlp_applies(mdp)


def refined_by_minlp(mdp: TabularMDP, alpha, ipopt: EquilibriumInterval, time_limit: float,
                     log=None) -> EquilibriumInterval:
    """IPOPT's interval handed to the MINLP (bilevel.equilibria.exact.agent_reward): its two
    ends join SCIP's starting solutions, and the MINLP gets what is left of
    AUTO_AGENT_REWARD_SECONDS (at least AUTO_MINLP_MIN_SECONDS). The MINLP's interval stands
    (global where SCIP proves all three solves, else local with SCIP's proved gaps), except when
    it failed, or when it is local and IPOPT's leader value beats its band, which is then not
    the band of the best leader value known: IPOPT's interval stands, and says why."""
    from bilevel.equilibria.exact.agent_reward import agent_reward_interval
    budget = max(AUTO_MINLP_MIN_SECONDS, AUTO_AGENT_REWARD_SECONDS - ipopt.seconds)
    starts = ((ipopt.low, "IPOPT's min end"), (ipopt.high, "IPOPT's max end")) if ipopt.ok else ()
    exact = agent_reward_interval(mdp, alpha, time_limit=time_limit, log=log, budget=budget,
                                  starts=starts)
    seconds = ipopt.seconds + exact.seconds
    summary = {"certificate": ipopt.certificate, "seconds": round(ipopt.seconds, 3),
               "J": [ipopt.low.J, ipopt.high.J] if ipopt.ok else None, "reason": ipopt.reason}
    beaten = ipopt.ok and exact.ok and exact.certificate != "global" and \
        ipopt.leader_objective < exact.leader_objective - exact.tolerance
    if not ipopt.ok or (exact.ok and not beaten):
        return replace(exact, seconds=seconds, details={**exact.details, "ipopt": summary,
                                                        "minlp_budget": round(budget, 3)})
    why = exact.reason if not exact.ok else \
        f"local, and IPOPT's leader value {ipopt.leader_objective:.9g} lies below its band"
    return replace(ipopt, seconds=seconds, details={**ipopt.details, "minlp": why})


def solve_formulation(mdp: TabularMDP, formulation: str, alpha: float | None = None,
                      solver: str = "auto", starts: int = 3, seed: int = 0,
                      time_limit: float = SCIP_TIME_LIMIT, pal_reduction: str = "closed_form",
                      log=None, ipopt_mode: str = "auto",
                      epsilon: float | None = None, mpec=None) -> EquilibriumInterval:
    """The equilibrium interval of `formulation` (see module docstring).
    epsilon: the interval over epsilon-leader-optimal equilibria (leader <= L* + epsilon, at the
    file's floor) instead of the exact limit one: PAL in closed form, the MAL family on the
    MPEC route with that band.
    solver: "auto" takes the exact route where the formulation has one (bilevel.equilibria.exact:
    PAL, MAL, MAL + random noise) and the MPEC route below otherwise (MAL + agent reward; the
    enumeration on tiny MDPs; on small ones IPOPT's interval is then handed to the MINLP,
    `refined_by_minlp`); "exact" the same, but MAL + agent reward goes to the
    binary-follower MINLP (bilevel.equilibria.exact.agent_reward, SCIP, `time_limit` per solve,
    `takes_minlp`); "mpec-scip" / "mpec-ipopt" (aliases
    "scip" / "ipopt") force the MPEC with that back-end. On the MPEC route with "auto", a SCIP
    solve that cannot prove its gap in `time_limit` hands over to IPOPT (local).
    ipopt_mode: "homotopy" (Scholtes eps schedule, then polish), "polish" (active-set polish
    from follower-optimal starts only), "auto" (polish past POLISH_ONLY_PAIRS live pairs).
    solver="enumerate" (MAL family, tiny MDPs): bilevel.equilibria.enumeration, at most
    min(time_limit, ENUMERATE_TIME_LIMIT) s per policy (the bounds need only resolve the band).
    mpec: what runs the MPEC route (default mpec_interval.solve_route, in this process;
    parallel_ends.split_route returns its ends as tasks instead)."""
    say = log or (lambda msg: None)
    solver = SOLVER_ALIASES.get(solver, solver)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    spec = game.formulation(formulation)
    if epsilon is not None:
        if not (epsilon >= 0.0 and math.isfinite(epsilon)):
            raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
        if spec.epsilon_closed_form and not mdp.restricted:
            from bilevel.equilibria.exact.routes import pal_epsilon_interval
            return pal_epsilon_interval(mdp, epsilon)
        if solver in ("auto", "exact", "enumerate"):
            solver = "auto"
    elif solver in ("auto", "exact", "enumerate"):
        from bilevel.equilibria.exact import exact_interval, has_exact_route
        if has_exact_route(formulation, mdp) and (solver != "enumerate" or not spec.enumerable):
            return exact_interval(mdp, formulation, alpha, log=log)
        if takes_minlp(mdp, solver, spec):
            # no closed-form structure: SCIP on the binary-follower MINLP (global where proved)
            from bilevel.equilibria.exact.agent_reward import agent_reward_interval
            return agent_reward_interval(mdp, alpha, time_limit=time_limit, log=log)
        if solver == "exact":
            say(f"{formulation}: no exact route; the MPEC route of --solver auto")
        if solver != "enumerate":
            solver = "auto"
    solver = {"mpec-scip": "scip", "mpec-ipopt": "ipopt"}.get(solver, solver)

    def enumerated() -> EquilibriumInterval:
        from bilevel.equilibria.enumeration import enumerate_interval
        return enumerate_interval(mdp, formulation, alpha,
                                  time_limit=min(time_limit, ENUMERATE_TIME_LIMIT), log=log)

    which = choose_solver(mdp, solver, formulation)
    if which == "enumerate":
        return enumerated()
    refine = refines_on_auto(mdp, spec, solver, which, epsilon)
    run = solve_route if refine else (mpec or solve_route)    # the MINLP needs IPOPT's settled ends
    res = run(mdp, formulation, alpha, which, starts, seed, time_limit, pal_reduction, log,
              ipopt_mode, epsilon)
    if refine:
        say(f"{formulation}: IPOPT's interval ({res.certificate if res.ok else res.reason}); "
            "the binary-follower MINLP from its ends")
        return refined_by_minlp(mdp, alpha, res, time_limit, log)
    if solver in ("auto", "enumerate") and res.solver == "scip" and not res.ok:
        say(f"{formulation}: SCIP did not certify ({res.reason}); IPOPT")
        local = run(mdp, formulation, alpha, "ipopt", starts, seed, time_limit, pal_reduction,
                    log, ipopt_mode, epsilon)
        scip = {"reason": res.reason, "seconds": res.seconds}
        if isinstance(local, EquilibriumInterval):
            return with_scip_failure(local, scip)
        return local.after_scip(**scip)          # a split solve: said when its ends settle
    return res


def with_scip_failure(local: EquilibriumInterval, scip: dict) -> EquilibriumInterval:
    """IPOPT's interval after SCIP did not certify: SCIP's reason in its details, SCIP's
    seconds added to its own."""
    return EquilibriumInterval(**{**local.__dict__, "details": dict(local.details, scip=scip["reason"]),
                                  "seconds": local.seconds + scip["seconds"]})
