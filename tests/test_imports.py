"""Importers from other toolkits: the imported arrays are the source's dynamics, checked against
the environment itself (its table read here, and its step() sampled), a value iteration written
here on the environment's table, and the array layouts against each other."""
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from scipy.sparse import csr_matrix

from bilevel.cache import mdp_fingerprint
from bilevel.convert import main as convert_main
from bilevel.mdp import MDPError, from_arrays, from_gymnasium, from_npz, from_pymdptoolbox, load_mdp
from bilevel.tabular.evaluation import value_iteration
from conftest import ROOT

GAMMA = 0.95


@pytest.fixture(scope="module")
def lake():
    env = gym.make("FrozenLake-v1", is_slippery=True)
    return env, from_gymnasium(env, gamma=GAMMA)


def table_arrays(table, S, A):
    """Dense P, expected reward r(s,a) and the terminated-on-entry states, read from the
    environment's own list `P[s][a] = [(p, s', r, terminated), ...]`."""
    P, r, done = np.zeros((S, A, S)), np.zeros((S, A)), np.zeros(S, dtype=bool)
    for s in range(S):
        for a in range(A):
            for p, s2, rew, t in table[s][a]:
                P[s, a, s2] += p
                r[s, a] += p * rew
                done[s2] |= bool(t)
    return P, r, done


def test_frozenlake_equals_its_table(lake):
    env, mdp = lake
    u = env.unwrapped
    P, r, done = table_arrays(u.P, 16, 4)
    holes_goal = np.array([c in b"HG" for c in u.desc.flatten()])
    np.testing.assert_array_equal(mdp.terminal, holes_goal)
    np.testing.assert_array_equal(done, holes_goal)
    live = ~mdp.terminal
    np.testing.assert_allclose(mdp.P[live], P[live], atol=1e-15)
    np.testing.assert_allclose(mdp.r[live], r[live], atol=1e-15)
    for t in np.flatnonzero(mdp.terminal):           # absorbing, zero reward
        assert (mdp.P[t, :, t] == 1).all() and (mdp.R[t] == 0).all()
    np.testing.assert_array_equal(mdp.rho0, np.array([c == b"S" for c in u.desc.flatten()]))
    assert mdp.horizon == 100 and mdp.actions == ("left", "down", "right", "up")
    goal = int(np.flatnonzero(u.desc.flatten() == b"G")[0])
    into_goal = (mdp.P[:, :, goal] > 0) & live[:, None]
    assert into_goal.sum() == 3 and (mdp.R[:, :, goal][into_goal] == 1.0).all()  # 1 on reaching G


def test_frozenlake_equals_its_sampled_dynamics(lake):
    """Step the environment from every live (s, a), N times: the frequencies match P within
    5 binomial standard deviations, each step's reward is R(s,a,s') and terminated = terminal."""
    env, mdp = lake
    u = env.unwrapped
    env.reset(seed=12345)
    N = 600
    for s in np.flatnonzero(~mdp.terminal):
        for a in range(4):
            counts = np.zeros(16)
            for _ in range(N):
                u.s = int(s)
                s2, rew, terminated, _, _ = u.step(a)
                counts[s2] += 1
                assert rew == mdp.R[s, a, s2] and terminated == mdp.terminal[s2]
            p = mdp.P[s, a]
            tol = 5 * np.sqrt(p * (1 - p) / N) + 1e-12
            assert (np.abs(counts / N - p) <= tol).all(), (s, a, counts / N, p)


def test_optimal_value_equals_value_iteration_on_the_table(lake):
    """J* of the imported MDP = rho0 . V, V the fixed point, computed here on env.P, of
    V(s) = max_a sum_i p_i (r_i + gamma (1 - terminated_i) V(s'_i))."""
    env, mdp = lake
    u = env.unwrapped
    V = np.zeros(16)
    for _ in range(5000):
        V_new = np.array([max(sum(p * (rew + GAMMA * (not t) * V[s2])
                                  for p, s2, rew, t in u.P[s][a]) for a in range(4))
                          for s in range(16)])
        if np.abs(V_new - V).max() < 1e-13:
            break
        V = V_new
    J_table = float(u.initial_state_distrib @ V)
    V_mdp, _ = value_iteration(mdp.P, mdp.r, mdp.gamma)
    assert J_table > 0.1
    assert float(mdp.rho0 @ V_mdp) == pytest.approx(J_table, abs=1e-10)


@pytest.mark.parametrize("env_id", ["FrozenLake8x8-v1", "CliffWalking-v1",
                                    "CliffWalkingSlippery-v1", "Taxi-v4"])
def test_every_toy_text_table_imports(env_id):
    """Merged duplicate outcomes keep r(s,a) = sum_i p_i r_i (CliffWalkingSlippery lists the
    start state twice, once at -1 and once at -100 from the cliff)."""
    mdp = from_gymnasium(env_id, gamma=0.9)
    u = gym.make(env_id).unwrapped
    P, r, done = table_arrays(u.P, mdp.n_states, mdp.n_actions)
    np.testing.assert_array_equal(mdp.terminal, done)
    live = ~mdp.terminal
    np.testing.assert_allclose(mdp.P[live], P[live], atol=1e-15)
    np.testing.assert_allclose(mdp.r[live], r[live], atol=1e-12)


def test_a_wrong_environment_is_one_line():
    for env_id, field in (("Blackjack-v1", ": P: "), ("NoSuchEnv-v0", "cannot make")):
        with pytest.raises(MDPError) as e:
            from_gymnasium(env_id, gamma=0.9)
        assert "\n" not in str(e.value) and str(e.value).startswith(f"gymnasium:{env_id}")
        assert field in str(e.value)


def random_arrays(S=5, A=3, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S)) * (rng.random((S, A, S)) < 0.6)
    P[:, :, 0] += 0.1                                # every row has mass
    P /= P.sum(axis=2, keepdims=True)
    R = rng.normal(size=(S, A, S))                   # off the support of P too
    return P, R, rng.dirichlet(np.ones(S))


def test_layouts_ass_and_sas_give_the_same_mdp():
    P, R, rho0 = random_arrays()
    sas = from_arrays(P, R, rho0, gamma=0.9, layout="SAS", support="all")
    ass = from_arrays(P.transpose(1, 0, 2), R.transpose(1, 0, 2), rho0, gamma=0.9, layout="ASS",
                      support="all")
    np.testing.assert_array_equal(sas.P, P)
    np.testing.assert_array_equal(sas.R, R)
    np.testing.assert_array_equal(sas.rho0, rho0)
    assert mdp_fingerprint(sas) == mdp_fingerprint(ass)
    sparse = [csr_matrix(m) for m in P.transpose(1, 0, 2)]           # pymdptoolbox's sparse form
    tool = from_pymdptoolbox(sparse, R.transpose(1, 0, 2), 0.9, rho0=rho0, support="all")
    assert mdp_fingerprint(tool) == mdp_fingerprint(sas)


def test_reward_forms_and_defaults():
    P, _, _ = random_arrays(S=4, A=2, seed=1)
    r_sa = np.arange(8.0).reshape(4, 2) - 3
    m = from_pymdptoolbox(P.transpose(1, 0, 2), r_sa, 0.9)          # pymdptoolbox R (S, A)
    np.testing.assert_allclose(m.r, r_sa, atol=1e-14)
    np.testing.assert_array_equal(m.rho0, np.full(4, 0.25))            # uniform start
    r_s = np.array([1.0, 0.0, -2.0, 5.0])
    m = from_arrays(P, r_s, gamma=0.9, terminal=[3])                    # reward per state (S,)
    np.testing.assert_allclose(m.r[:3], np.repeat(r_s[:3, None], 2, axis=1), atol=1e-14)
    assert m.terminal.tolist() == [False, False, False, True] and (m.R[3] == 0).all()
    assert (m.P[3, :, 3] == 1).all()


@pytest.mark.parametrize("damage, field", [
    (lambda P: P.__setitem__((2, 1, 0), P[2, 1, 0] - 0.1), "transitions.s2.a1: probabilities of "
                                                            "state s2, action a1 sum to 0.9"),
    (lambda P: P.__setitem__((1, 0), np.array([1.5, -0.5, 0, 0, 0])), "transitions.s1.a0.s1: "
                                                                      "negative probability"),
])
def test_a_bad_row_is_one_line(damage, field):
    P, R, rho0 = random_arrays()
    P[2, 1] = [1.0, 0, 0, 0, 0]
    damage(P)
    with pytest.raises(MDPError) as e:
        from_arrays(P, R, rho0, gamma=0.9, name="m")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("m: " + field), str(e.value)


def test_a_bad_shape_is_one_line():
    P, R, _ = random_arrays()
    with pytest.raises(MDPError, match=r"^m: R: must have shape \(A, S, S\)"):
        from_arrays(P.transpose(1, 0, 2), R[:, :, :2], gamma=0.9, layout="ASS", name="m")
    with pytest.raises(MDPError, match=r"^m: P: must have shape \(S, A, S\)"):
        from_arrays(P[:, :, :3], R, gamma=0.9, name="m")


def test_the_command_writes_yaml_that_loads_back(tmp_path):
    out = tmp_path / "lake.yaml"
    assert convert_main(["gymnasium:FrozenLake-v1", "--gamma", str(GAMMA), "--out", str(out),
                         "-q"]) == 0
    back = load_mdp(out)
    assert mdp_fingerprint(back) == mdp_fingerprint(from_gymnasium("FrozenLake-v1", gamma=GAMMA))
    assert back.n_states == 16 and back.terminal.sum() == 5 and back.horizon == 100


def test_the_command_keeps_npz_arrays_exactly(tmp_path):
    """An (A,S,S) .npz with rewards off the support of P and a terminal state: the YAML loads back
    to the very arrays (R off the support included)."""
    P, R, rho0 = random_arrays()
    f = tmp_path / "m.npz"
    np.savez(f, P=P.transpose(1, 0, 2), R=R.transpose(1, 0, 2), rho0=rho0, terminal=np.array([4]))
    out = tmp_path / "m.yaml"
    assert convert_main([str(f), "--gamma", "0.9", "--layout", "ASS", "--support", "all",
                         "--out", str(out), "-q"]) == 0
    back, direct = load_mdp(out), from_npz(f, gamma=0.9, layout="ASS", support="all")
    assert mdp_fingerprint(back) == mdp_fingerprint(direct)
    np.testing.assert_array_equal(back.R[:4], R[:4])
    np.testing.assert_array_equal(back.P[:4], P[:4])


def test_the_command_fails_in_one_line(tmp_path):
    P, R, rho0 = random_arrays()
    P[3, 2, 0] += 0.25
    f = tmp_path / "bad.npz"
    np.savez(f, P=P, R=R)
    out = subprocess.run([sys.executable, "-m", "bilevel.convert", str(f), "--gamma", "0.9"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {f}: transitions.s3.a2: "), lines
