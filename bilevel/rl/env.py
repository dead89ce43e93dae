"""Environments for tabular MDPs: a Gymnasium env, a batched numpy stepper, and model envs.

Arrays follow the project convention: P[s, a, s'] (S,A,S), R[s, a, s'] (S,A,S), pi[s, a] (S,A).

- `TabularEnv`: one episode at a time, the Gymnasium contract (`check_env` passes). Registered as
  `gymnasium.make("bilevel/Tabular-v0", path="mdps/hidden_goal.yaml")`.
- `BatchStepper`: many episodes at once; sampling by inverse CDF on cumulative tables
  `cdf[s, a, k] = sum_{s' <= k} P[s, a, s']`, `s' = #{k : u >= cdf[s, a, k]}` for `u ~ U[0, 1)`.
  It counts every transition it samples (`steps`): the learners see the true MDP only through it.
- `model_mdp(mdp, Phat)`: the same MDP with transitions replaced by a learned model (rewards R kept,
  so the model's reward is rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s')).

Episodes end (`terminated`) on entering a terminal state and are `truncated` at `horizon`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import TabularMDP

ENV_ID = "bilevel/Tabular-v0"
DEFAULT_HORIZON = 200  # episode length for MDP files that give no horizon


def _as_mdp(mdp_or_path) -> TabularMDP:
    return mdp_or_path if isinstance(mdp_or_path, TabularMDP) else load_mdp(Path(mdp_or_path))


def episode_horizon(mdp: TabularMDP) -> int:
    """T = mdp.horizon, or DEFAULT_HORIZON when the file gives none."""
    return int(mdp.horizon) if mdp.horizon is not None else DEFAULT_HORIZON


def model_mdp(mdp: TabularMDP, Phat: np.ndarray) -> TabularMDP:
    """The MDP with P replaced by the model Phat (S,A,S); rewards R, rho0, horizon kept."""
    Phat = np.asarray(Phat, dtype=float)
    if Phat.shape != mdp.P.shape:
        raise ValueError(f"model shape {Phat.shape} != MDP shape {mdp.P.shape}")
    return mdp.with_(P=Phat / Phat.sum(axis=-1, keepdims=True), name=f"{mdp.name}[model]")


def _cdf(p: np.ndarray) -> np.ndarray:
    """Cumulative table along the last axis, last entry forced to 1 (no round-off gaps)."""
    c = np.cumsum(p, axis=-1)
    c[..., -1] = 1.0
    return c


class TabularEnv(gym.Env):
    """Gymnasium env of a TabularMDP (or an MDP file `path`). Observation: state index
    (Discrete(S)); action: Discrete(A); reward R(s, a, s'). `model` (S,A,S), if given, replaces
    the transitions (an env built from a learned model, same rewards)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, path: str | None = None, mdp: TabularMDP | None = None,
                 model: np.ndarray | None = None, render_mode: str | None = None):
        if (path is None) == (mdp is None):
            raise ValueError("give exactly one of path= or mdp=")
        mdp = _as_mdp(path if mdp is None else mdp)
        self.mdp = mdp if model is None else model_mdp(mdp, model)
        S, A = self.mdp.n_states, self.mdp.n_actions
        self.observation_space = spaces.Discrete(S)
        self.action_space = spaces.Discrete(A)
        self.render_mode = render_mode
        self.horizon = episode_horizon(self.mdp)
        self._cdf = _cdf(self.mdp.P)
        self._rho_cdf = _cdf(self.mdp.rho0)
        self._s, self._t = 0, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._s = int(np.searchsorted(self._rho_cdf, self.np_random.random(), side="right"))
        self._t = 0
        return self._s, {}

    def step(self, action):
        a = int(action)
        if not self.action_space.contains(a):
            raise ValueError(f"invalid action {action!r}")
        s = self._s
        s2 = int(np.searchsorted(self._cdf[s, a], self.np_random.random(), side="right"))
        reward = float(self.mdp.R[s, a, s2])
        self._s, self._t = s2, self._t + 1
        terminated = bool(self.mdp.terminal[s2])
        truncated = (not terminated) and self._t >= self.horizon
        return s2, reward, terminated, truncated, {}

    def render(self):
        if self.render_mode == "ansi":
            return f"t={self._t} state={self.mdp.states[self._s]}\n"
        return None


def register_env() -> None:
    """Register `bilevel/Tabular-v0` (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="bilevel.rl.env:TabularEnv")


register_env()


# --------------------------------------------------------------------------- batched stepper

@dataclass(frozen=True, eq=False)
class Rollouts:
    """A batch of episodes, time-major padded arrays of shape (n, T):
    s[i, t], a[i, t], r[i, t], s2[i, t], and alive[i, t] (the step happened)."""

    s: np.ndarray
    a: np.ndarray
    r: np.ndarray
    s2: np.ndarray
    alive: np.ndarray
    terminated: np.ndarray      # (n,) the episode entered a terminal state

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted episode rewards sum_t r_t, shape (n,)."""
        return (self.r * self.alive).sum(axis=1)

    @property
    def n_steps(self) -> int:
        return int(self.alive.sum())


class BatchStepper:
    """Vectorized sampler for P (S,A,S), R (S,A,S). Counts sampled transitions in `steps`."""

    def __init__(self, P: np.ndarray, R: np.ndarray, rho0: np.ndarray, terminal: np.ndarray,
                 horizon: int, rng: np.random.Generator | int | None = None):
        self.P, self.R = np.asarray(P, float), np.asarray(R, float)
        self.S, self.A = self.P.shape[:2]
        self.cdf = _cdf(self.P).reshape(self.S * self.A, self.S)
        self.rho_cdf = _cdf(np.asarray(rho0, float))
        self.terminal = np.asarray(terminal, bool)
        self.horizon = int(horizon)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.steps = 0

    @classmethod
    def of(cls, mdp: TabularMDP, rng=None, model: np.ndarray | None = None,
           horizon: int | None = None) -> "BatchStepper":
        """Stepper of `mdp` (or of its model `model`, same rewards)."""
        P = mdp.P if model is None else model
        return cls(P, mdp.R, mdp.rho0, mdp.terminal, horizon or episode_horizon(mdp), rng)

    def reset(self, n: int) -> np.ndarray:
        """n initial states s ~ rho0."""
        return np.searchsorted(self.rho_cdf, self.rng.random(n), side="right")

    def step(self, s: np.ndarray, a: np.ndarray):
        """s' ~ P(.|s,a) for each pair; returns (s', R(s,a,s')). Counts len(s) steps."""
        rows = self.cdf[s * self.A + a]
        u = self.rng.random(len(s))
        s2 = (u[:, None] >= rows).sum(axis=1)
        self.steps += len(s)
        return s2, self.R[s, a, s2]

    def sample_actions(self, pi: np.ndarray, s: np.ndarray) -> np.ndarray:
        """a ~ pi(.|s) for each state."""
        c = _cdf(pi)[s]
        return (self.rng.random(len(s))[:, None] >= c).sum(axis=1).clip(max=pi.shape[1] - 1)

    def rollout(self, pi: np.ndarray, n: int, s0: np.ndarray | None = None,
                a0: np.ndarray | None = None, horizon: int | None = None) -> Rollouts:
        """n episodes of pi (S,A) from s ~ rho0 (or from given s0, with first actions a0: exploring
        starts), for at most `horizon` steps; only live episodes are stepped (and counted)."""
        T = self.horizon if horizon is None else int(horizon)
        s = self.reset(n) if s0 is None else np.asarray(s0, int).copy()
        n = len(s)
        out = {k: np.zeros((n, T), dtype=int) for k in ("s", "a", "s2")}
        out["r"] = np.zeros((n, T))
        alive = np.zeros((n, T), dtype=bool)
        live = ~self.terminal[s]
        idx = np.arange(n)
        for t in range(T):
            if not live.any():
                break
            i = idx[live]
            si = s[i]
            ai = np.asarray(a0, int)[i] if (t == 0 and a0 is not None) else self.sample_actions(pi, si)
            s2, r = self.step(si, ai)
            out["s"][i, t], out["a"][i, t], out["s2"][i, t], out["r"][i, t] = si, ai, s2, r
            alive[i, t] = True
            s[i] = s2
            live[i] = ~self.terminal[s2]
        terminated = self.terminal[s]
        return Rollouts(out["s"], out["a"], out["r"], out["s2"], alive, terminated)
