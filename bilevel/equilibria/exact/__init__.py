"""Exact equilibrium intervals from the structure of the followers' best responses."""
from bilevel.equilibria.exact.routes import EXACT_FORMULATIONS, exact_interval, has_exact_route

__all__ = ["EXACT_FORMULATIONS", "exact_interval", "has_exact_route"]
