"""Tabular MDPs: load and validate the YAML format, the state graph, the model support.

Arrays (plain numpy, one convention everywhere):
    P[s, a, s']  transition probabilities, shape (S, A, S)
    R[s, a, s']  reward of a transition,    shape (S, A, S)
    r[s, a]      expected reward  r = sum_s' P R, shape (S, A)
    rho0[s]      initial distribution, shape (S,)
    K[s, a, s']  model support mask (bool), the next states a model may predict
Terminal states are absorbing with zero reward: P[t, a, t] = 1, R[t] = 0, K[t, a] = {t}.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from bilevel.mdp.model_class import TABULAR, ClassBlocks, ModelClass, compile_class
from bilevel.tabular.evaluation import episode_reward, expected_reward, policy_return
from bilevel.tabular.fits import kl_fit, model_loss
from bilevel.tabular.occupancy import averaged_occupancy, occupancy
from bilevel.tabular.policies import uniform_policy


SUM_TOL = 1e-9
DEFAULT_FLOOR = 1e-6
SUPPORT_KINDS = ("true", "neighbors", "all")
OCCUPANCIES = ("discounted", "average")


class MDPError(ValueError):
    """Invalid MDP input. `str(err)` is one line: `FILE: FIELD: problem`."""

    def __init__(self, source: str, field_: str, problem: str):
        self.source, self.field, self.problem = source, field_, problem
        where = f"{source}: {field_}: " if field_ else f"{source}: "
        super().__init__(where + problem)


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite discounted MDP with arrays P (S,A,S), R (S,A,S), r (S,A), rho0 (S,), K (S,A,S)."""

    name: str
    states: tuple[str, ...]
    actions: tuple[str, ...]
    P: np.ndarray
    R: np.ndarray
    rho0: np.ndarray
    gamma: float
    terminal: np.ndarray                 # bool (S,)
    K: np.ndarray                        # bool (S,A,S)
    support: str = "all"                 # true | neighbors | all | explicit
    horizon: int | None = None
    floor: float = DEFAULT_FLOOR         # eta: Phat >= eta on K (keeps KL finite)
    source: str = "<memory>"
    grid: dict | None = field(default=None)  # gridworld layout, for drawing
    occupancy: str = "discounted"        # the data's occupancy: discounted | average (T = horizon)
    model_class: ModelClass = TABULAR    # the models the model player may choose (K is its support)

    def __post_init__(self):
        for a in (self.P, self.R, self.rho0, self.terminal, self.K):
            a.setflags(write=False)
        if self.occupancy not in OCCUPANCIES:
            raise MDPError(self.source, "occupancy", f"must be one of {', '.join(OCCUPANCIES)}, "
                           f"got {self.occupancy!r}")
        if self.occupancy == "average" and self.horizon is None:
            raise MDPError(self.source, "occupancy", "average needs a horizon (the episode length T)")

    @cached_property
    def model_blocks(self) -> ClassBlocks:
        """The model class compiled on K (bilevel.mdp.model_class)."""
        return compile_class(self.model_class, self.K, self.terminal, self.floor)

    @property
    def restricted(self) -> bool:
        """Whether the model class is narrower than every floored model on K."""
        return not self.model_class.tabular

    def class_fit(self, weights: np.ndarray) -> np.ndarray:
        """The model's best fit within its class to data weighted by `weights` (S,A):
        argmin_{Phat in class} l(Phat, weights); blocks without weight get the fit to equal
        weights. Tabular: the floored fit P_eta (`kl_fit`), whatever the weights."""
        if self.model_class.tabular:
            return kl_fit(self.P, self.K, self.floor)
        return self.model_blocks.fit(self.P, weights)[0]

    def reference_fit(self) -> np.ndarray:
        """A fitted model of the class: its fit to the uniform policy's data (tabular: P_eta,
        the floored fit, which does not depend on the data)."""
        if self.model_class.tabular:
            return kl_fit(self.P, self.K, self.floor)
        return self.class_fit(self.data_occupancy(uniform_policy(self.n_states, self.n_actions)))

    def loss_minimum(self, weights: np.ndarray) -> float:
        """min over the class of l(Phat, weights) (the loss of `class_fit`)."""
        return model_loss(self.P, self.class_fit(weights), weights)

    @property
    def averaged(self) -> bool:
        """Whether the data is T-step episodes (`occupancy: average`)."""
        return self.occupancy == "average"

    def data_occupancy(self, pi: np.ndarray, P: np.ndarray | None = None) -> np.ndarray:
        """The occupancy that weights the model's loss: mu(s,a) = (1-g) sum_t g^t Pr(s_t=s,
        a_t=a) (discounted), or mu_T(s,a) = (1/T) sum_{t<T} Pr(s_t=s, a_t=a) (average), of pi
        in P (default: the true MDP)."""
        P = self.P if P is None else P
        if self.averaged:
            return averaged_occupancy(P, self.rho0, pi, self.horizon)
        return occupancy(P, self.rho0, self.gamma, pi)

    def true_return(self, pi: np.ndarray, P: np.ndarray | None = None) -> float:
        """The return whose equilibrium interval is reported: J(pi) = rho0 . V^pi (discounted),
        or the T-step return E[sum_{t<T} r(s_t, a_t)] (average), of pi in P (default: M) with
        the rewards known (r = sum_s' P R)."""
        P = self.P if P is None else P
        r = expected_reward(P, self.R)
        if self.averaged:
            return episode_reward(P, r, self.rho0, pi, self.horizon)
        return policy_return(P, r, self.rho0, self.gamma, pi)

    @property
    def r(self) -> np.ndarray:
        """Expected reward r[s,a] = sum_s' P[s,a,s'] R[s,a,s']."""
        return expected_reward(self.P, self.R)

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def n_actions(self) -> int:
        return len(self.actions)

    @property
    def r_max(self) -> float:
        """R_max = max |R(s,a,s')| over the model support K (which contains supp P): it bounds
        the true reward r and every model's reward rhat = sum_s' Phat R alike, so the PAL
        theorem's bound, verify and the studies all use this one number."""
        return float(np.max(np.abs(np.where(self.K, self.R, 0.0)), initial=0.0))

    def model_reward(self, Phat: np.ndarray) -> np.ndarray:
        """rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s'): rewards are known, transitions learned."""
        return expected_reward(Phat, self.R)

    def with_(self, **changes) -> "TabularMDP":
        """A copy with some fields replaced (arrays are copied)."""
        kw = {f: getattr(self, f) for f in self.__dataclass_fields__}
        kw.update(changes)
        for k in ("P", "R", "rho0", "terminal", "K"):
            kw[k] = np.array(kw[k])
        return TabularMDP(**kw)


def with_model_class(mdp: TabularMDP, model_class: ModelClass) -> TabularMDP:
    """`mdp` with another model class: K becomes that class's support, computed from the
    declared support (the file's `model_support`, which the class remembers)."""
    declared = mdp.model_class.declared_K if mdp.model_class.declared_K is not None else mdp.K
    if model_class.tabular:
        return mdp.with_(K=declared, model_class=TABULAR)
    model_class = replace(model_class, declared_K=np.array(declared, dtype=bool))
    return mdp.with_(K=model_class.support(declared, mdp.terminal), model_class=model_class)
