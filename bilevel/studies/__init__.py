"""Studies of the reference study's theory with the exact engine, one module per study:
theorem (the PAL theorem; mal_terms: Rajeswaran's terms at MAL's worst equilibria),
counterexample (MAL on the scaled hidden goal), fixes (MAL's fixes against alpha),
misspecified (intervals and maximum likelihood under state aggregations); common
(shared quantities and output), tasks (each study as independent tasks on the sweep engine,
bilevel.sweep), cli (`python -m bilevel.studies`)."""
from bilevel.studies.fixes import BAD_GAP

__all__ = ["BAD_GAP"]
