"""Steps per second: the batched numpy stepper (the trainers' hot path) against Gymnasium's
FrozenLake-v1 stepped one transition at a time, measured in one run; prints the ratio.

    python benchmarks/env_speed.py [--mdp mdps/grid_10x10.yaml] [--envs 1024] [--seconds 2]
"""
from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

from bilevel.mdp import load_mdp
from bilevel.tabular import uniform_policy
from bilevel.rl.env import BatchStepper


def batched_rate(mdp, n_envs: int, seconds: float) -> float:
    """Transitions/s of BatchStepper.rollout with n_envs parallel episodes of the uniform policy."""
    st = BatchStepper.of(mdp, rng=0)
    pi = uniform_policy(mdp.n_states, mdp.n_actions)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        st.rollout(pi, n_envs)
    return st.steps / (time.perf_counter() - t0)


def frozenlake_rate(seconds: float) -> float:
    """Transitions/s of FrozenLake-v1 (is_slippery) stepped one by one with random actions."""
    env = gym.make("FrozenLake-v1")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in rng.integers(4, size=1000):
            _, _, term, trunc, _ = env.step(int(a))
            if term or trunc:
                env.reset()
        n += 1000
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mdp", default="mdps/grid_10x10.yaml")
    ap.add_argument("--envs", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    mdp = load_mdp(a.mdp)
    fl = frozenlake_rate(a.seconds)
    b = batched_rate(mdp, a.envs, a.seconds)
    print(f"FrozenLake-v1, one step at a time:        {fl:14,.0f} steps/s")
    print(f"BatchStepper ({mdp.name}, {a.envs} envs): {b:14,.0f} steps/s")
    print(f"ratio batched / FrozenLake: {b / fl:.1f}x")


if __name__ == "__main__":
    main()
