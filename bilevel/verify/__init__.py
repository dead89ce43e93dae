"""Stage 6, verification: RL runs (policy, model) checked against the exact intervals."""
from bilevel.verify.check import (TOL_J_REL, TOL_M, TOL_PI_FRACTION, RunCheck,  # noqa: F401
                                  VerifyInputError, check_run, interval_tolerance, require_alpha)
from bilevel.verify.cli import format_checks, main  # noqa: F401
from bilevel.verify.runs import equilibrium_entry, load_equilibria, load_runs, verify_runs  # noqa: F401
