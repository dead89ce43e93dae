"""Stage 3, the MPEC: complementarity pairs, their reductions (modes), KKT, the solver driver."""
from bilevel.mpec.pairs import (Pair, complementarity_pairs, complementarity_violation)  # noqa: F401
from bilevel.mpec.bounds import ReductionError, side_bounds  # noqa: F401
from bilevel.mpec.modes import (Acceptance, InverseData, Scholtes, ExactProduct, BigM)  # noqa: F401
from bilevel.mpec.driver import (MPECResult, random_start, HOMOTOPY_STEP, POLISH, polish, solve_mpec)  # noqa: F401
