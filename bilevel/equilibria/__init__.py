"""Stage 4, equilibria: certified equilibrium intervals of each formulation.

    routing.py       which route computes an interval (exact, enumeration, MPEC on SCIP or IPOPT)
    exact/           the exact routes from the structure of the followers' best responses
    enumeration.py   MAL + agent reward on tiny MDPs: every deterministic follower policy
    mpec_route.py    the MPEC route's settings and pieces (IPOPT's best start, end repairs)
    mpec_interval.py the MPEC route in steps: leader optimum and band, each end, settle
    parallel_ends.py the two ends of an MPEC interval as sweep tasks (a continuation)
    certificates.py  independent checks of a point from arrays
    interval.py      the result types
    document.py      the JSON solution document
"""
from bilevel.equilibria.certificates import (FEASIBILITY_SLACK, FOLLOWER_GAP_TOL, certify,  # noqa: F401
                                             certify_point, equilibrium_tolerance, follower_gap,
                                             leader_value, model_reward, snap_to_best_response)
from bilevel.equilibria.interval import Equilibrium, EquilibriumInterval  # noqa: F401
from bilevel.equilibria.routing import SOLVER_ALIASES, SOLVERS, choose_solver, solve_formulation  # noqa: F401
from bilevel.equilibria.starts import random_starts, starting_point, structured_starts  # noqa: F401
