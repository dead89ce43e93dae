"""The registry of the bilevel formulations of model-based RL (docs/DESIGN.md sections 2, 3).

Leader objectives, all to MINIMIZE (bilevel.game.base: w_l l(Phat, nu) - w_J J(pi, Phat)):
    PAL               -J(pi, Phat)                                    (bilevel.game.pal)
    MAL               l(Phat, mu) = sum mu(s,a) KL(P(.|s,a) || Phat(.|s,a))   (bilevel.game.mal)
    MAL_agent_reward  alpha l(Phat, mu) - (1-alpha) J(pi, Phat)
    MAL_random_noise  l(Phat, alpha mu + (1-alpha) mu_rand),  mu_rand = occupancy of uniform pi in M
    MAL_agent_true_reward  alpha l(Phat, mu) - (1-alpha) J(pi, M)   (the return in the true MDP)

FORMULATIONS maps each name to its `Formulation`, in the canonical order; iterating it gives the
names. `formulation(name)` looks one up; the functions below are the name-keyed entry points.
"""
from __future__ import annotations

from bilevel.game.base import Formulation
from bilevel.game.build import BilevelModel, extract, model_prob, value_bounds  # noqa: F401
from bilevel.game.mal import MAL, MALAgentReward, MALAgentTrueReward, MALRandomNoise
from bilevel.game.pal import PAL, PAL_REDUCTIONS  # noqa: F401 (PAL_REDUCTIONS re-exported)
from bilevel.mdp.model import TabularMDP

FORMULATIONS: dict[str, Formulation] = {
    f.name: f for f in (PAL(), MAL(), MALAgentReward(), MALRandomNoise(), MALAgentTrueReward())}
DEFAULT_ALPHA = {name: f.default_alpha for name, f in FORMULATIONS.items() if f.takes_alpha}


def formulation(name: str) -> Formulation:
    """The registered formulation called `name`; ValueError naming the choices otherwise."""
    try:
        return FORMULATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown formulation {name!r} (choose from {', '.join(FORMULATIONS)})") from None


def resolve_alpha(name: str, alpha: float | None = None) -> float | None:
    """The alpha formulation `name` uses: None for PAL and MAL, else `alpha` or its default."""
    return formulation(name).resolve_alpha(alpha)


def build(mdp: TabularMDP, name: str, alpha: float | None = None,
          pal_reduction: str = "closed_form") -> BilevelModel:
    """The single-level model of formulation `name` on `mdp` (no objective set: see
    bilevel.equilibria); `pal_reduction` is PAL's follower reduction (the others have one)."""
    f = formulation(name)
    return f.build(mdp, alpha, pal_reduction if f.follower == "model" else None)
