"""A formulation of model-based RL as a bilevel game: who leads, what the leader minimizes, how
the follower best-responds, and what the equilibrium routes may do with it.

Every leader objective (to minimize) has one form, on arrays:
    leader(pi, Phat) = w_l l(Phat, nu) - w_J J(pi, X),   X = Phat, or M when `return_in` = "true",
    l(Phat, nu) = sum_{s,a} nu(s,a) KL(P(.|s,a) || Phat(.|s,a)),   J(pi, Phat) = rho0 . V^pi_Phat,
with weights (w_l, w_J) = `objective_weights(alpha)` and the leader's data occupancy
    nu = a mu + c mu_rand,   (a, c) = `data_mixture(alpha)`,
mu the true occupancy of pi in M and mu_rand that of the uniform policy. A subclass states its
weights and mixture, its follower (best response and gap on arrays) and its Pyomo MPEC.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from bilevel.game.build import BilevelModel, base_model, random_data
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import policy_return
from bilevel.tabular.fits import model_loss

CLASS_KKT = "class_kkt"      # the model follower's reduction under a restricted model class


class Formulation(ABC):
    """One bilevel formulation. Attributes:
        name           registry key, e.g. "MAL_agent_reward"
        label          for tables, e.g. "MAL + agent reward"
        leader         the leading player: "policy" | "model"
        follower       the following player: "model" | "policy"
        default_alpha  None when the formulation takes no alpha
        return_in      where the leader's return term is evaluated: "model" (J(pi, Phat)) or
                       "true" (J(pi, M))
        reductions     the follower reductions `build` accepts (the first is the default)
    Capabilities the equilibrium routes read instead of names:
        exact_route         "closed_form" | "hiding" | "true_return" | None (bilevel.equilibria.exact)
        epsilon_closed_form the interval over epsilon-leader-optimal equilibria is in closed form
        exact_minlp         solver "exact" runs the binary-follower MINLP
        enumerate_on_auto   solver "auto" enumerates the follower's policies on tiny MDPs
        polish_only         IPOPT: active-set polish from follower-optimal starts, no homotopy
        closed_form_follower the follower's best-response set is known in closed form, so a
                            point is snapped to it (`best_response`) when its certificate fails
        fits_leader_data    the model fits the leader's data at an equilibrium (eps_M ~ 0)
        trainable           the RL trainers (bilevel.rl) can train it
    """

    name: str
    label: str
    leader: str
    follower: str
    default_alpha: float | None = None
    return_in: str = "model"
    reductions: tuple[str, ...]
    exact_route: str | None = None
    epsilon_closed_form: bool = False
    exact_minlp: bool = False
    enumerate_on_auto: bool = False
    polish_only: bool = False
    closed_form_follower: bool = False
    fits_leader_data: bool = True
    trainable: bool = True

    def __repr__(self) -> str:
        return f"<formulation {self.name}>"

    # ------------------------------------------------------------------ alpha

    @property
    def takes_alpha(self) -> bool:
        return self.default_alpha is not None

    @property
    def enumerable(self) -> bool:
        """The follower is a policy: its deterministic policies can be enumerated."""
        return self.follower == "policy"

    def resolve_alpha(self, alpha: float | None = None) -> float | None:
        """The alpha this formulation uses: None when it takes none, else `alpha` or its
        default; ValueError outside [0, 1]."""
        if not self.takes_alpha:
            return None
        alpha = self.default_alpha if alpha is None else float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        return alpha

    # ------------------------------------------------------------------ leader

    @abstractmethod
    def objective_weights(self, alpha: float | None) -> tuple[float, float]:
        """(w_l, w_J) of leader = w_l l(Phat, nu) - w_J J(pi, Phat)."""

    def data_mixture(self, alpha: float | None) -> tuple[float, float]:
        """(a, c) of the leader's data nu = a mu + c mu_rand: (1, 0) unless noise is mixed in."""
        return 1.0, 0.0

    def nu(self, mdp: TabularMDP, pi: np.ndarray, alpha: float | None = None) -> np.ndarray:
        """The leader's data occupancy nu = a mu + c mu_rand (`data_mixture`), shape (S,A)."""
        a, c = self.data_mixture(self.resolve_alpha(alpha))
        mu = mdp.data_occupancy(pi)
        if c == 0.0:
            return mu if a == 1.0 else a * mu
        return a * mu + c * random_data(mdp)

    def forced_pairs(self, mdp: TabularMDP, alpha: float | None) -> np.ndarray:
        """Live pairs whose weight in nu does not depend on the follower (c mu_rand(s,a) > 0):
        the model is fitted there whatever pi does. (S,A) bool."""
        _, c = self.data_mixture(self.resolve_alpha(alpha))
        if c <= 0.0:
            return np.zeros((mdp.n_states, mdp.n_actions), dtype=bool)
        return (random_data(mdp) > 0) & ~mdp.terminal[:, None]

    def leader_value(self, mdp: TabularMDP, pi: np.ndarray, Phat: np.ndarray,
                     alpha: float | None = None) -> float:
        """leader(pi, Phat) = w_l l(Phat, nu) - w_J J(pi, X), X = Phat or M (`return_in`), from
        arrays (a term with weight 0 is not evaluated). J(pi, Phat) is the agent's own value in
        the model (discounted: what the follower optimizes); J(pi, M) the reported return
        (`TabularMDP.true_return`: the T-step return under `occupancy: average`)."""
        alpha = self.resolve_alpha(alpha)
        w_l, w_J = self.objective_weights(alpha)
        value = 0.0
        if w_l:
            value += w_l * model_loss(mdp.P, Phat, self.nu(mdp, pi, alpha))
        if w_J and self.return_in == "true":
            value -= w_J * mdp.true_return(pi)
        elif w_J:
            value -= w_J * policy_return(Phat, mdp.model_reward(Phat), mdp.rho0, mdp.gamma, pi)
        return float(value)

    def excess_loss(self, mdp: TabularMDP, pi: np.ndarray, Phat: np.ndarray,
                    alpha: float | None = None) -> float:
        """eps_M = l(Phat, nu) - min_{Q in class} l(Q, nu) >= 0: for the tabular class the
        minimizer is P_eta = kl_fit(P, K, eta), the floored fit; for a restricted class its fit
        to nu (`TabularMDP.class_fit`). Clamped at 0."""
        nu = self.nu(mdp, pi, alpha)
        return max(0.0, model_loss(mdp.P, Phat, nu) - mdp.loss_minimum(nu))

    def band_allowance(self, mdp: TabularMDP) -> float:
        """What the model floor may cost the leader on top of the band's relative tolerance:
        0 here; loss-based leaders override."""
        return 0.0

    # ------------------------------------------------------------------ follower

    @abstractmethod
    def best_response(self, mdp: TabularMDP, pi: np.ndarray, Phat: np.ndarray | None) -> np.ndarray:
        """A best response of the follower to the leader's part of (pi, Phat): a model (S,A,S)
        for a model follower, a policy (S,A) for a policy follower."""

    @abstractmethod
    def follower_gap(self, mdp: TabularMDP, pi: np.ndarray, Phat: np.ndarray) -> float:
        """How far the follower's part of (pi, Phat) is from a best response (>= 0; 0 at one)."""

    # ------------------------------------------------------------------ MPEC

    def build(self, mdp: TabularMDP, alpha: float | None = None,
              reduction: str | None = None) -> BilevelModel:
        """The single-level MPEC of this formulation on `mdp` (no objective set: see
        bilevel.equilibria). `reduction`: one of `reductions` (default the first)."""
        alpha = self.resolve_alpha(alpha)
        reduction = self.reductions[0] if reduction is None else reduction
        reduction = self.class_reduction(mdp, reduction)
        if reduction not in self.reductions + (CLASS_KKT,):
            raise ValueError(f"unknown {self.name} reduction {reduction!r} "
                             f"(choose from {', '.join(self.reductions)})")
        m = base_model(mdp)
        self.add_game(m, mdp, alpha, reduction)
        return BilevelModel(self.name, mdp, m, alpha, reduction)

    def class_reduction(self, mdp: TabularMDP, reduction: str) -> str:
        """The reduction used on `mdp`: a model follower of a restricted class has only the KKT
        system of its class fit (CLASS_KKT); otherwise `reduction`."""
        if self.follower == "model" and mdp.restricted:
            return CLASS_KKT
        return reduction

    @abstractmethod
    def add_game(self, m, mdp: TabularMDP, alpha: float | None, reduction: str) -> None:
        """Add the follower's reduction and the leader objective `m.leader` to the base model."""
