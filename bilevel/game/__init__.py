"""Stage 2, the game: the bilevel formulations of model-based RL, in a registry.

    base.py          Formulation: leader objective, data occupancy, follower, capabilities
    pal.py           PAL (policy leader, model follower)
    mal.py           the MAL family (model leader, policy follower): MAL, + agent reward, + random noise
    build.py         the Pyomo pieces the formulations' MPECs share
    formulations.py  the registry FORMULATIONS and the name-keyed entry points
"""
from bilevel.game.base import Formulation  # noqa: F401
from bilevel.game.formulations import (FORMULATIONS, DEFAULT_ALPHA, PAL_REDUCTIONS, resolve_alpha,  # noqa: F401
                                       formulation, BilevelModel, build, model_prob, value_bounds,
                                       extract)
