"""The result types: one certified equilibrium (an interval end) and the interval of a formulation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Equilibrium:
    """One end of an interval, every number recomputed from (policy, model) arrays."""

    policy: np.ndarray
    model: np.ndarray
    J: float                     # J(pi, M), discounted true return
    episode_reward: float | None
    model_loss: float            # l(Phat, mu_M^pi)
    J_model: float               # J(pi, Phat)
    leader_objective: float      # the formulation's leader objective at this point
    follower_gap: float
    complementarity_violation: float | None

    def to_json(self) -> dict:
        return {"policy": self.policy.tolist(), "model": self.model.tolist(),
                "J": self.J, "episode_reward": self.episode_reward,
                "model_loss": self.model_loss, "J_model": self.J_model,
                "leader_objective": self.leader_objective, "follower_gap": self.follower_gap,
                "complementarity_violation": self.complementarity_violation}

    @classmethod
    def from_json(cls, d: dict) -> "Equilibrium":
        """The inverse of to_json (exact: JSON keeps every float)."""
        return cls(**{**d, "policy": np.array(d["policy"], dtype=float),
                      "model": np.array(d["model"], dtype=float)})


@dataclass(frozen=True)
class EquilibriumInterval:
    """The certified equilibrium interval of one formulation (or a failure with its reason)."""

    formulation: str
    status: str                                  # "solved" | "failed"
    reason: str = ""
    alpha: float | None = None
    certificate: str = "none"                    # "global" | "local" | "none"
    solver: str = ""
    starts: int = 0
    leader_objective: float | None = None
    tolerance: float | None = None
    low: Equilibrium | None = None               # equilibrium with the smallest J(pi, M)
    high: Equilibrium | None = None              # ... the largest
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "solved"

    def to_json(self) -> dict:
        d = {"status": self.status, "alpha": self.alpha, "seconds": round(self.seconds, 3)}
        if not self.ok:
            d["reason"] = self.reason
            return d
        ep = None if self.low.episode_reward is None else \
            {"min": self.low.episode_reward, "max": self.high.episode_reward}
        d.update({"certificate": self.certificate, "solver": self.solver, "starts": self.starts,
                  "leader_objective": self.leader_objective, "tolerance": self.tolerance,
                  "solver_gap": self.details.get("solver_gap"),
                  **{k: self.details[k] for k in ("ipopt_mode", "ends_at_leader_optimum",
                                                  "snapped_to_best_response", "enumeration",
                                                  "route", "limit", "proved_gap", "how", "epsilon",
                                                  "at_floor", "milp")
                     if k in self.details},
                  "J": {"min": self.low.J, "max": self.high.J},
                  "episode_reward": ep,
                  "equilibria": {"min": self.low.to_json(), "max": self.high.to_json()}})
        return d
