"""Stage 2, the game: the four bilevel formulations of model-based RL."""
from bilevel.game.formulations import (FORMULATIONS, DEFAULT_ALPHA, PAL_REDUCTIONS, resolve_alpha,  # noqa: F401
                                       BilevelModel, build, model_prob, value_bounds, extract)
