"""The Gymnasium env and the batched stepper against the MDP's P and R."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.stats import chisquare

from bilevel.rl.env import BatchStepper, TabularEnv, model_mdp
from conftest import MDPS


@pytest.mark.parametrize("name", ["hidden_goal.yaml", "grid_hidden_goal.yaml"])
def test_registered_env_passes_check_env(name):
    env = gym.make("bilevel/Tabular-v0", path=str(MDPS / name))
    check_env(env.unwrapped)
    assert env.observation_space.n == env.unwrapped.mdp.n_states


def test_seeded_reset_and_episode_end(hidden_goal):
    env = TabularEnv(mdp=hidden_goal)

    def episode(seed):
        s, _ = env.reset(seed=seed)
        traj, done, t = [s], False, 0
        while not done:
            s, r, term, trunc, _ = env.step(1 if s == 1 else 0)
            traj.append(s)
            t += 1
            done = term or trunc
        return traj, term, trunc, t
    a, b = episode(3), episode(3)
    assert a == b
    traj, term, trunc, t = a
    assert term == bool(hidden_goal.terminal[traj[-1]]) and (trunc == (not term))
    assert t <= hidden_goal.horizon


def test_truncated_at_horizon(hidden_goal):
    env = TabularEnv(mdp=hidden_goal)
    env.reset(seed=0)
    # A-Y loops forever with probability 1: B-Y until A, then Y: never terminates.
    for t in range(1, hidden_goal.horizon + 1):
        s, r, term, trunc, _ = env.step(1)
        assert not term
        assert trunc == (t == hidden_goal.horizon)


def _chi2_pvalues(stepper, P, n):
    S, A, _ = P.shape
    pv = []
    for s in range(S):
        for a in range(A):
            s2, _ = stepper.step(np.full(n, s), np.full(n, a))
            obs = np.bincount(s2, minlength=S)
            k = P[s, a] > 0
            assert obs[~k].sum() == 0, "sampled a next state outside supp P"
            if k.sum() > 1:
                pv.append(chisquare(obs[k], n * P[s, a, k]).pvalue)
    return np.array(pv)


def test_batched_stepper_matches_P(hidden_goal):
    st = BatchStepper.of(hidden_goal, rng=1)
    pv = _chi2_pvalues(st, hidden_goal.P, 20_000)
    assert pv.min() > 1e-4
    assert st.steps == 20_000 * hidden_goal.n_states * hidden_goal.n_actions


def test_chi2_test_has_power(hidden_goal):
    """The same test rejects a stepper whose table is off by 0.02 in one row."""
    Q = np.array(hidden_goal.P)
    Q[1, 0] = [0.0, 0.22, 0.78]
    pv = _chi2_pvalues(BatchStepper.of(hidden_goal, rng=1, model=Q), hidden_goal.P, 20_000)
    assert pv.min() < 1e-4


def test_rollout_returns_match_exact_episode_reward(hidden_goal):
    from bilevel.tabular import episode_reward, uniform_policy
    pi = uniform_policy(3, 2)
    st = BatchStepper.of(hidden_goal, rng=2)
    ro = st.rollout(pi, 20_000)
    exact = episode_reward(hidden_goal.P, hidden_goal.r, hidden_goal.rho0, pi, hidden_goal.horizon)
    se = ro.returns.std() / np.sqrt(20_000)
    assert abs(ro.returns.mean() - exact) < 4 * se
    assert st.steps == ro.n_steps


def test_model_env_uses_model_and_same_rewards(hidden_goal):
    Phat = np.array(hidden_goal.P)
    Phat[1, 1] = [0.0, 1.0, 0.0]            # the hiding model: B-Y stays in B
    env = TabularEnv(mdp=hidden_goal, model=Phat)
    env.reset(seed=0)
    for _ in range(20):
        s, r, *_ = env.step(1)
        assert s == 1 and r == hidden_goal.R[1, 1, 1]
    assert model_mdp(hidden_goal, Phat).R is not None


def test_module_prefixed_make_registers_the_env():
    env = gym.make("bilevel.rl:bilevel/Tabular-v0", path=str(MDPS / "hidden_goal.yaml"))
    assert env.reset(seed=0)[0] == 1   # hidden_goal starts in B
