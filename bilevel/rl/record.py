"""RunRecord: the result of one training run, as data (JSON round trip)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from bilevel.game.formulations import DEFAULT_ALPHA, FORMULATIONS  # noqa: F401 (re-exported)

ALGORITHMS = ("inner-outer", "contextualized")
# the formulations the RL trainers train (Formulation.trainable)
TRAINABLE = tuple(name for name, f in FORMULATIONS.items() if f.trainable)


def default_alpha() -> dict:
    """The exact solver's default alphas (bilevel.game.DEFAULT_ALPHA)."""
    return dict(DEFAULT_ALPHA)


@dataclass(frozen=True)
class CurvePoint:
    """One learning-curve point: true-env samples used so far, the exact finite-horizon episode
    reward of the current policy in the true MDP, and the sampled mean of the batch just collected."""

    env_samples: int
    episode_reward: float
    sampled_episode_reward: float


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One run. policy (S,A), model (S,A,S); `final` holds exact and sampled figures of the final
    policy in the true MDP: J (discounted), episode_reward (exact, T-step), sampled_episode_reward
    (mean over `eval_episodes` evaluation rollouts, not counted in env_samples)."""

    mdp: str                      # MDP name
    mdp_path: str                 # file the run was trained on
    formulation: str
    algorithm: str
    alpha: float | None
    seed: int
    config: dict
    policy: np.ndarray
    model: np.ndarray
    curve: tuple[CurvePoint, ...]
    env_samples: int
    seconds: float
    final: dict
    notes: dict = field(default_factory=dict)
    occupancy: str = "discounted"  # the data's occupancy the run trained with (TabularMDP.occupancy)
    model_class: str = "tabular"   # the kind of the model class its models were drawn from

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["policy"] = np.asarray(self.policy).tolist()
        d["model"] = np.asarray(self.model).tolist()
        d["curve"] = [asdict(p) for p in self.curve]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        names = {f.name for f in fields(cls)}
        missing = names - set(d) - {"notes", "occupancy", "model_class"}   # older records: discounted, tabular
        if missing:
            raise ValueError(f"run record lacks field(s): {', '.join(sorted(missing))}")
        kw = {k: d[k] for k in names if k in d}
        kw["policy"] = np.asarray(d["policy"], dtype=float)
        kw["model"] = np.asarray(d["model"], dtype=float)
        kw["curve"] = tuple(CurvePoint(**p) for p in d["curve"])
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        return cls.from_dict(json.loads(text))

    @property
    def filename(self) -> str:
        return f"{self.formulation}_{self.algorithm}_seed{self.seed}.json"
