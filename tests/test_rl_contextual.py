"""Contextualized follower: the context env against its docstring (observation [onehot(s),
Phat.ravel()], episodes in the model Phat drawn per reset, rewards R, terminal / horizon as the
MDP), its dynamics against the model it is given, a PPO follower reaching the optimal policy of
that model (value iteration written here), and (slow) end-to-end runs."""
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from conftest import TWO_STATES
from bilevel.mdp import mdp_from_dict
from bilevel.rl import learners as L
from bilevel.rl.contextual import ContextConfig, ContextModelEnv, ppo_policy_table, train_contextualized

Z = 5.0      # binomial tolerance in standard deviations


def random_model(m, rng):
    """A random model on the support K (Dirichlet rows), terminal rows the self-loop."""
    Q = np.where(m.K, rng.dirichlet(np.ones(m.n_states), size=(m.n_states, m.n_actions)), 0.0)
    return Q / Q.sum(-1, keepdims=True)


def decode(obs, S):
    """The state of an observation whose first S entries are one-hot."""
    head = obs[:S]
    assert set(np.unique(head)) <= {0.0, 1.0} and head.sum() == 1.0
    return int(head.argmax())


def run(env, n_steps, seed, on_reset=None):
    """n_steps with seeded uniform actions; transitions (s, a, s', r, term, trunc, t, model)
    with s, s' decoded from the observations and `model` the observation's model part."""
    S = env.mdp.n_states
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out, t = [], 0
    for _ in range(n_steps):
        a = int(rng.integers(env.action_space.n))
        obs2, r, term, trunc, _ = env.step(a)
        t += 1
        out.append((decode(obs, S), a, decode(obs2, S), r, term, trunc, t, obs2[S:].copy()))
        obs = obs2
        if term or trunc:
            obs, _ = env.reset()
            t = 0
    return out


def test_observation_and_dynamics_follow_the_given_model(hidden_goal):
    """Fixed model Q: every observation is [onehot(s), Q.ravel()]; the decoded transitions have
    the frequencies of Q (not of P) within the binomial tolerance; rewards are R(s,a,s');
    episodes start in B, end on entering C or at step T = 50."""
    m = hidden_goal
    Q = random_model(m, np.random.default_rng(1))
    env = ContextModelEnv(m, model=Q)
    steps = run(env, 25_000, seed=2)
    N = np.zeros((3, 2, 3))
    for s, a, s2, r, term, trunc, t, model in steps:
        N[s, a, s2] += 1
        assert r == m.R[s, a, s2]
        assert term == bool(m.terminal[s2]) and trunc == (t == 50 and not term)
        np.testing.assert_allclose(model, Q.ravel(), rtol=1e-6)
    n = N.sum(-1, keepdims=True)
    assert n[:2].min() > 3_000

    def fits(table):
        return bool(np.all(np.abs(N - n * table) <= Z * np.sqrt(n * table * (1 - table)) + 1e-9))
    assert fits(Q) and not fits(m.P)
    starts = [steps[0][0]] + [s for (*_, term, trunc, _, _), (s, *_) in zip(steps, steps[1:])
                               if term or trunc]
    assert set(starts) == {1}


def test_each_episode_runs_in_the_model_drawn_at_its_reset(hidden_goal):
    """sample_model(rng) is called once per reset with the env's seeded generator: the
    observation carries that episode's model, and with deterministic rows every step goes to
    the one next state that model allows."""
    m = hidden_goal
    drawn = []

    def sample_model(rng):
        target = rng.integers(3, size=(3, 2))          # one next state per pair
        Q = np.eye(3)[target]
        Q[2] = np.eye(3)[2]                            # C stays terminal
        drawn.append(Q)
        return Q

    env = ContextModelEnv(m, sample_model)
    steps = run(env, 3_000, seed=4)
    episode = 0
    for s, a, s2, r, term, trunc, t, model in steps:
        Q = drawn[episode]
        np.testing.assert_array_equal(model, Q.ravel())
        assert Q[s, a, s2] == 1.0
        if term or trunc:
            episode += 1
    assert episode > 50 and len(drawn) == episode + 1
    assert len({Q.tobytes() for Q in drawn}) > 20               # the models do change
    first = [Q.copy() for Q in drawn]
    drawn.clear()
    run(ContextModelEnv(m, sample_model), 3_000, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, drawn))   # seeded: the same models


def test_context_env_passes_check_env(hidden_goal):
    m = hidden_goal
    env = ContextModelEnv(m, lambda rng: L.softmax_model(rng.standard_normal((3, 2, 3)), m.K, m.floor))
    check_env(env)




def test_ppo_follower_learns_the_optimal_policy_of_its_model():
    """PPO in the context env of a model Q where moving from L rarely reaches R: it learns Q's
    optimal policy by value iteration (stay in L), not M's (move in L); ppo_policy_table reads
    that policy back. Tolerance: the optimal action with probability >= 0.9."""
    import torch
    from stable_baselines3 import PPO
    torch.set_num_threads(1)
    mdp = mdp_from_dict(TWO_STATES)
    r = np.array([[0.5, 0.0], [1.0, 0.0]])
    Q = np.array([[[1.0, 0.0], [0.9, 0.1]], [[0.5, 0.5], [1.0, 0.0]]])

    def optimal_actions(model):
        V = np.zeros(2)
        for _ in range(2_000):
            V = (r + mdp.gamma * model @ V).max(1)
        return list((r + mdp.gamma * model @ V).argmax(1))
    assert optimal_actions(Q) == [0, 0] and optimal_actions(mdp.P) == [1, 0]
    env = ContextModelEnv(mdp, model=Q)
    ppo = PPO("MlpPolicy", env, gamma=mdp.gamma, seed=0, verbose=0, n_steps=512, batch_size=64,
              policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    ppo.learn(4096)
    pi = ppo_policy_table(ppo, env, Q)
    assert pi.shape == (2, 2) and np.allclose(pi.sum(1), 1.0)
    assert pi[0, 0] >= 0.9 and pi[1, 0] >= 0.9


@pytest.mark.slow
def test_contextualized_pal_reaches_the_goal(hidden_goal):
    rec = train_contextualized(hidden_goal, "PAL", seed=0, cfg=ContextConfig(eval_episodes=20))
    assert rec.final["episode_reward"] >= 30.0
    assert {"eps_M_frozen_follower", "eps_M_after_finetune"} <= set(rec.notes)


@pytest.mark.slow
def test_contextualized_mal_runs_and_reports_finetune(hidden_goal):
    """The fine-tune notes against value iteration in the final model (written here)."""
    rec = train_contextualized(hidden_goal, "MAL", seed=0,
                               cfg=ContextConfig(pretrain_steps=4096, leader_iters=5, finetune_steps=1024,
                                                 eval_episodes=20))
    m, Phat, pi = hidden_goal, rec.model, rec.policy
    rhat = (Phat * m.R).sum(-1)
    V = np.zeros(3)
    for _ in range(20_000):
        V = (rhat + m.gamma * Phat @ V).max(1)
    P_pi = np.einsum("sa,sat->st", pi, Phat)
    V_pi = np.linalg.solve(np.eye(3) - m.gamma * P_pi, (pi * rhat).sum(1))
    assert rec.notes["eps_pi_after_finetune"] == pytest.approx(m.rho0 @ (V - V_pi), abs=1e-6)
