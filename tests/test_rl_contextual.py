"""Contextualized follower: the context env's contract, and (slow) end-to-end runs."""
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from bilevel.rl import learners as L
from bilevel.rl.contextual import ContextConfig, ContextModelEnv, train_contextualized


def test_context_env_passes_check_env_and_shows_the_model(hidden_goal):
    m = hidden_goal
    env = ContextModelEnv(m, lambda rng: L.softmax_model(rng.standard_normal((3, 2, 3)), m.K, m.floor))
    check_env(env)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[3:].reshape(3, 2, 3), env.Phat, atol=1e-6)
    assert obs[:3].sum() == 1.0


@pytest.mark.slow
def test_contextualized_pal_reaches_the_goal(hidden_goal):
    rec = train_contextualized(hidden_goal, "PAL", seed=0, cfg=ContextConfig(eval_episodes=20))
    assert rec.final["episode_reward"] >= 30.0
    assert {"eps_M_frozen_follower", "eps_M_after_finetune"} <= set(rec.notes)


@pytest.mark.slow
def test_contextualized_mal_runs_and_reports_finetune(hidden_goal):
    rec = train_contextualized(hidden_goal, "MAL", seed=0,
                               cfg=ContextConfig(pretrain_steps=4096, leader_iters=5, finetune_steps=1024,
                                                 eval_episodes=20))
    assert rec.policy.shape == (3, 2) and np.allclose(rec.policy.sum(1), 1.0)
    assert "eps_pi_after_finetune" in rec.notes
