"""The Gymnasium env and the batched stepper against the MDP they sample: transition frequencies
against P within a binomial tolerance, every reward against R, start states against rho0,
episode ends at the terminal state or exactly at the horizon, and a learner driven by the
stepper reaching the optimum found by value iteration. P and R of hidden_goal are read from the
YAML text here, not through the loader.
"""
import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env
from scipy.stats import chisquare

from bilevel.mdp import mdp_from_dict
from bilevel.mdp.garnet import garnet
from bilevel.rl.env import BatchStepper, TabularEnv
from conftest import MDPS, TWO_STATES

Z = 5.0      # binomial tolerance in standard deviations (about 5e-7 two-sided per count)


def tables_from_yaml(path):
    """P (S,A,S), R (S,A,S) of an explicit-form MDP file, terminal states absorbing with 0."""
    doc = yaml.safe_load(path.read_text())
    S, A = doc["states"], doc["actions"]
    P, R = np.zeros((len(S), len(A), len(S))), np.zeros((len(S), len(A), len(S)))
    for s, row in doc["transitions"].items():
        for a, nxt in row.items():
            for t, p in nxt.items():
                P[S.index(s), A.index(a), S.index(t)] = p
    for s, row in doc["rewards"].items():
        for a, rew in row.items():
            for t in range(len(S)):
                R[S.index(s), A.index(a), t] = rew.get(S[t], 0.0) if isinstance(rew, dict) else rew
    for t in doc.get("terminal", []):
        P[S.index(t), :, S.index(t)] = 1.0
    return P, R


def within_binomial(counts, P, z=Z):
    """Every count N(s,a,s') within z sd of n(s,a) P(s'|s,a), and none off supp P."""
    n = counts.sum(-1, keepdims=True)
    sd = np.sqrt(n * P * (1 - P))
    return bool(np.all(np.abs(counts - n * P) <= z * sd + 1e-9))


def run_env(env, n_steps, seed, policy=None):
    """n_steps of env with actions from policy(s, rng) (uniform by default), resetting when an
    episode ends. Returns transitions (s, a, s', r, terminated, truncated, t) and start states."""
    rng = np.random.default_rng(seed)
    s, _ = env.reset(seed=seed)
    starts, steps, t = [s], [], 0
    for _ in range(n_steps):
        a = int(rng.integers(env.action_space.n)) if policy is None else policy(s, rng)
        s2, r, term, trunc, _ = env.step(a)
        t += 1
        steps.append((s, a, s2, r, term, trunc, t))
        s = s2
        if term or trunc:
            s, _ = env.reset()
            starts.append(s)
            t = 0
    return steps, starts


def counts_of(steps, S, A):
    N = np.zeros((S, A, S))
    for s, a, s2, *_ in steps:
        N[s, a, s2] += 1
    return N


@pytest.fixture(scope="module")
def hidden_goal_run():
    """60000 steps taking Y with probability 0.8 (so that some episodes reach the horizon)."""
    env = gym.make("bilevel/Tabular-v0", path=str(MDPS / "hidden_goal.yaml")).unwrapped
    return run_env(env, 60_000, seed=7, policy=lambda s, rng: int(rng.random() < 0.8))


def test_env_transitions_match_P_of_the_file(hidden_goal_run):
    P, _ = tables_from_yaml(MDPS / "hidden_goal.yaml")
    steps, _ = hidden_goal_run
    N = counts_of(steps, 3, 2)
    assert N[:2].sum(-1).min() > 2_000                  # every live pair sampled often
    assert within_binomial(N, P)
    # the same counts reject a table off by 0.05 in one row (the tolerance has power)
    Q = P.copy()
    Q[1, 0] = [0.0, 0.25, 0.75]
    assert not within_binomial(N, Q)


def test_env_rewards_are_R_of_the_file(hidden_goal_run):
    _, R = tables_from_yaml(MDPS / "hidden_goal.yaml")
    steps, _ = hidden_goal_run
    assert all(r == R[s, a, s2] for s, a, s2, r, *_ in steps)
    assert {r for *_, r, _, _, _ in steps} >= {1.0, -0.05, 0.75, 0.5}


def test_env_episodes_end_at_the_terminal_state_or_at_the_horizon(hidden_goal_run):
    """terminated iff the step enters C; truncated iff it is step T = 50 and C is not entered;
    every episode starts in B (rho0)."""
    steps, starts = hidden_goal_run
    for s, a, s2, r, term, trunc, t in steps:
        assert term == (s2 == 2)
        assert trunc == (t == 50 and s2 != 2)
        assert t <= 50
    assert set(starts) == {1} and sum(term or trunc for *_, term, trunc, _ in steps) == len(starts) - 1
    assert any(trunc for *_, trunc, _ in steps) and any(term for *_, term, _, _ in steps)


def test_episode_length_of_the_decoy_is_geometric(hidden_goal):
    """X in B ends the episode with probability 0.8 a step: E[length] = sum_{k<T} 0.2^k."""
    env = TabularEnv(mdp=hidden_goal)
    env.reset(seed=0)
    lengths = []
    for i in range(20_000):
        env.reset(seed=None if i else 0)
        t, done = 0, False
        while not done:
            _, _, term, trunc, _ = env.step(0)
            t, done = t + 1, term or trunc
        lengths.append(t)
    p = 0.2 ** np.arange(50)
    mean = p.sum()
    var = np.sum((2 * np.arange(50) + 1) * p) - mean ** 2     # E[L^2] = sum (2k+1) P(L > k)
    assert abs(np.mean(lengths) - mean) < Z * np.sqrt(var / len(lengths))


def test_truncated_at_horizon(hidden_goal):
    env = TabularEnv(mdp=hidden_goal)
    env.reset(seed=0)
    # A-Y loops forever with probability 1: B-Y until A, then Y: never terminates.
    for t in range(1, hidden_goal.horizon + 1):
        s, r, term, trunc, _ = env.step(1)
        assert not term
        assert trunc == (t == hidden_goal.horizon)


def test_start_states_follow_rho0():
    """A Garnet with rho0 uniform on 4 states: reset frequencies within the binomial tolerance."""
    mdp = garnet(4, 2, 2, seed=3, gamma=0.9, horizon=5)
    env = TabularEnv(mdp=mdp)
    env.reset(seed=11)
    starts = np.bincount([env.reset()[0] for _ in range(20_000)], minlength=4)
    assert np.all(np.abs(starts - 5_000) <= Z * np.sqrt(20_000 * 0.25 * 0.75))


def test_model_env_samples_the_model_and_keeps_R(hidden_goal):
    """TabularEnv(model=Q): transitions follow Q (a random model on K), not P; rewards R(s,a,s')."""
    rng = np.random.default_rng(5)
    Q = np.where(hidden_goal.K, rng.dirichlet(np.ones(3), size=(3, 2)), 0.0)
    Q /= Q.sum(-1, keepdims=True)
    env = TabularEnv(mdp=hidden_goal, model=Q)
    steps, _ = run_env(env, 40_000, seed=3)
    N = counts_of(steps, 3, 2)
    assert within_binomial(N, Q) and not within_binomial(N, hidden_goal.P)
    assert all(r == hidden_goal.R[s, a, s2] for s, a, s2, r, *_ in steps)


def test_seeded_episodes_repeat_and_differ_across_seeds(hidden_goal):
    env = TabularEnv(mdp=hidden_goal)

    def trajectories(seed):
        steps, _ = run_env(env, 300, seed=seed)
        return [(s, a, s2) for s, a, s2, *_ in steps]
    assert trajectories(3) == trajectories(3)
    assert trajectories(3) != trajectories(4)


@pytest.mark.parametrize("name", ["hidden_goal.yaml", "grid_hidden_goal.yaml"])
def test_registered_env_passes_check_env(name):
    env = gym.make("bilevel/Tabular-v0", path=str(MDPS / name))
    check_env(env.unwrapped)


def test_module_prefixed_make_registers_the_env():
    env = gym.make("bilevel.rl:bilevel/Tabular-v0", path=str(MDPS / "hidden_goal.yaml"))
    assert env.reset(seed=0)[0] == 1   # hidden_goal starts in B


# ------------------------------------------------------------------ the batched stepper

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
    P, R = tables_from_yaml(MDPS / "hidden_goal.yaml")
    pv = _chi2_pvalues(st, P, 20_000)
    assert pv.min() > 1e-4
    assert st.steps == 20_000 * hidden_goal.n_states * hidden_goal.n_actions
    s = np.repeat(np.arange(3), 2 * 1000)
    a = np.tile(np.repeat(np.arange(2), 1000), 3)
    s2, r = st.step(s, a)
    assert np.array_equal(r, R[s, a, s2])


def test_chi2_test_has_power(hidden_goal):
    """The same test rejects a stepper whose table is off by 0.02 in one row."""
    Q = np.array(hidden_goal.P)
    Q[1, 0] = [0.0, 0.22, 0.78]
    pv = _chi2_pvalues(BatchStepper.of(hidden_goal, rng=1, model=Q), hidden_goal.P, 20_000)
    assert pv.min() < 1e-4


def test_rollout_returns_match_exact_episode_reward(hidden_goal):
    """Mean sampled episode reward of the uniform policy against sum_{t<T} d_t . r_pi."""
    P, R = tables_from_yaml(MDPS / "hidden_goal.yaml")
    pi = np.full((3, 2), 0.5)
    st = BatchStepper.of(hidden_goal, rng=2)
    ro = st.rollout(pi, 20_000)
    P_pi, r_pi = np.einsum("sa,sat->st", pi, P), np.einsum("sa,sat,sat->s", pi, P, R)
    d, exact = np.array([0.0, 1.0, 0.0]), 0.0
    for _ in range(hidden_goal.horizon):
        exact, d = exact + d @ r_pi, d @ P_pi
    se = ro.returns.std() / np.sqrt(20_000)
    assert abs(ro.returns.mean() - exact) < 4 * se
    assert st.steps == ro.n_steps


# ------------------------------------------------------------------ a learner on 2 states



def test_inner_outer_pal_reaches_the_value_iteration_optimum():
    """Sampling only through the stepper, PAL's inner-outer learner ends at the optimal policy
    of value iteration (written here): greedy actions equal and taken with probability >= 0.95,
    J within 1% of J*."""
    from bilevel.rl.inner_outer import TrainConfig, train_inner_outer
    mdp = mdp_from_dict(TWO_STATES)
    g, r = mdp.gamma, np.array([[0.5, 0.0], [1.0, 0.0]])
    V = np.zeros(2)
    for _ in range(2_000):
        V = (r + g * mdp.P @ V).max(1)
    pi_star = (r + g * mdp.P @ V).argmax(1)
    assert list(pi_star) == [1, 0]                       # move in L, stay in R
    J_star = V[0]

    def J(pi):
        P_pi = np.einsum("sa,sat->st", pi, mdp.P)
        return np.linalg.solve(np.eye(2) - g * P_pi, (pi * r).sum(1))[0]
    assert J(np.full((2, 2), 0.5)) < 0.8 * J_star        # the start is far from the optimum
    rec = train_inner_outer(mdp, "PAL", seed=0, cfg=TrainConfig(leader_iters=40, eval_episodes=10))
    assert list(rec.policy.argmax(1)) == list(pi_star)
    assert rec.policy[[0, 1], pi_star].min() >= 0.95
    assert J(rec.policy) >= 0.99 * J_star
    assert rec.env_samples > 0
