"""mdps/reference/ holds the reference study's own MDPs: each file's arrays equal the authors'
arrays, typed in below from their code, and the files' claims (ergodic, deterministic) hold."""
import itertools

import networkx as nx
import numpy as np
import pytest

from bilevel.mdp import ergodicity_report, load_mdp
from conftest import MDPS

# The authors' arrays, from GitHub nilscrm/stackelberg-ml, stackelberg_mbrl/envs/simple_mdp.py
# (commit 6410417), indexed [s][a][s'] (A, B, C = 0, 1, 2; X, Y = 0, 1; s0..s3 = 0..3).
rewards_1 = np.array([
    [[1.00, -0.05, 1.00], [0.75, 0.00, 0.00]],
    [[0.00, -0.05, 1.00], [-0.01, -0.05, 0.00]],
    [[0.00, 0.00, 0.00], [0.00, 0.00, 0.00]],
])
rewards_2 = np.array([
    [[1.00, -0.05, 1.00], [0.75, 0.00, 0.00]],
    [[0.00, -0.05, 1.00], [0.5, -0.05, 0.00]],
    [[0.00, 0.00, 0.00], [0.00, 0.00, 0.00]],
])
transitions = np.array([
    [[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]],
    [[0.0, 0.2, 0.8], [0.5, 0.5, 0.0]],
    [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
])
transitions_variant_1 = np.array([
    [[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]],
    [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]],
    [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
])
transitions_variant_2 = np.array([
    [[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]],
    [[0.0, 0.2, 0.8], [0.8, 0.2, 0.0]],
    [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
])
transitions_ergodic_1 = np.array([
    [[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]],
    [[0.0, 0.2, 0.8], [0.5, 0.5, 0.0]],
    [[0.0, 0.1, 0.9], [0.1, 0.0, 0.9]],
])
rewards_4states_1 = np.array([
    [[0.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 0.0, 9.9], [0.0, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.9, 0.0]],
])
transitions_ergodic_2 = np.array([
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
    [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 0.1, 0.9], [0.0, 1.0, 0.0, 0.0]],
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 0.1]],
])
transitions_deterministic_1 = np.array([
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
    [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]],
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
])

# their registrations: name -> (transitions, rewards, initial_state, final_state; -1 = none)
REGISTERED = {
    "simple_mdp_1": (transitions, rewards_1, 1, 2),
    "simple_mdp_1_variant_1": (transitions_variant_1, rewards_1, 1, 2),
    "simple_mdp_2": (transitions, rewards_2, 1, 2),
    "simple_mdp_2_variant_1": (transitions_variant_1, rewards_2, 1, 2),
    "simple_mdp_2_variant_2": (transitions_variant_2, rewards_2, 1, 2),
    "ergodic_mdp_1": (transitions_ergodic_1, rewards_2, 1, -1),
    "ergodic_mdp_2": (transitions_ergodic_2, rewards_4states_1, 0, -1),
    "deterministic_mdp_1": (transitions_deterministic_1, rewards_4states_1, 0, -1),
}
ERGODIC = {"ergodic_mdp_1", "ergodic_mdp_2", "deterministic_mdp_1"}
DETERMINISTIC = {"deterministic_mdp_1"}
REF = MDPS / "reference"


def test_every_file_is_one_of_theirs():
    assert sorted(f.stem for f in REF.glob("*.yaml")) == sorted(REGISTERED)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_the_arrays_are_theirs(name):
    T, Rw, start, final = REGISTERED[name]
    mdp = load_mdp(REF / f"{name}.yaml")
    assert mdp.name == name and mdp.gamma == 0.99 and mdp.horizon == 50
    np.testing.assert_array_equal(mdp.P, T)
    np.testing.assert_array_equal(mdp.R, Rw)
    np.testing.assert_array_equal(mdp.rho0, np.eye(len(T))[start])
    np.testing.assert_array_equal(np.flatnonzero(mdp.terminal), [final] if final >= 0 else [])
    assert mdp.support == "all"


def test_hidden_goal_is_simple_mdp_2():
    T, Rw, start, final = REGISTERED["simple_mdp_2"]
    ours = load_mdp(MDPS / "hidden_goal.yaml")
    np.testing.assert_array_equal(ours.P, T)
    np.testing.assert_array_equal(ours.R, Rw)
    np.testing.assert_array_equal(ours.rho0, np.eye(3)[start])
    np.testing.assert_array_equal(np.flatnonzero(ours.terminal), [final])
    assert (ours.gamma, ours.horizon, ours.support) == (0.99, 50, "all")


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_ergodic_and_deterministic_as_claimed(name):
    mdp = load_mdp(REF / f"{name}.yaml")
    assert ergodicity_report(mdp)["strongly_connected"] == (name in ERGODIC)
    assert bool(np.isin(mdp.P, [0.0, 1.0]).all()) == (name in DETERMINISTIC)


@pytest.mark.parametrize("name", sorted(ERGODIC))
def test_some_policy_splits_the_ergodic_ones(name):
    """Strongly connected is not ergodic under every policy: each of these has a deterministic
    policy whose Markov chain has two closed classes (the file's header names it)."""
    mdp = load_mdp(REF / f"{name}.yaml")
    S, A = mdp.n_states, mdp.n_actions
    split = []
    for actions in itertools.product(range(A), repeat=S):
        g = nx.DiGraph()
        g.add_nodes_from(range(S))
        g.add_edges_from((s, t) for s in range(S) for t in np.flatnonzero(mdp.P[s, actions[s]]))
        cond = nx.condensation(g)
        if sum(cond.out_degree(n) == 0 for n in cond.nodes) >= 2:
            split.append(actions)
    assert split
    if name != "ergodic_mdp_1":                 # s2 <-> s3 (goal) and s0 <-> s1 (decoy) loops
        assert (0, 1, 0, 1) in split
    else:                                       # Y in A; X in B and C
        assert (1, 0, 0) in split


def test_exact_mal_route_converges_at_large_values():
    """ergodic_mdp_2's values are near 900, where an absolute stopping tolerance of ~5e-15 is
    below what doubles resolve: the hostile-check iteration must stop relative to the values.
    Scaling R by 0.01 changes no best response, so the interval scales by 0.01 exactly."""
    from bilevel.equilibria import solve_formulation
    mdp = load_mdp(REF / "ergodic_mdp_2.yaml")
    small = mdp.with_(R=mdp.R * 0.01)
    a, b = solve_formulation(mdp, "MAL"), solve_formulation(small, "MAL")
    assert a.ok and b.ok and a.certificate == b.certificate == "global"
    assert (a.low.J, a.high.J) == pytest.approx((100 * b.low.J, 100 * b.high.J), rel=1e-9, abs=1e-9)
    assert a.low.J == pytest.approx(0.0, abs=1e-9) and a.high.J > 800


SLOW_AGENT_REWARD = {"ergodic_mdp_1", "ergodic_mdp_2"}   # 13-17 s each on the enumeration


@pytest.mark.parametrize("name", [n if n not in SLOW_AGENT_REWARD else
                                  pytest.param(n, marks=pytest.mark.slow) for n in sorted(REGISTERED)])
def test_every_fix_is_at_the_optimum_on_their_mdps(name):
    """The README table's fix columns: MAL + random noise, MAL + true reward (exact routes) and
    MAL + agent reward (the enumeration) are [J*, J*], J* from HiGHS's occupancy LP."""
    from bilevel.equilibria import solve_formulation
    from bilevel.tabular.occupancy import occupancy_lp
    mdp = load_mdp(REF / f"{name}.yaml")
    J_star = occupancy_lp(mdp.P, mdp.r, mdp.rho0, mdp.gamma).J
    for f in ("MAL_random_noise", "MAL_agent_true_reward", "MAL_agent_reward"):
        iv = solve_formulation(mdp, f)
        assert iv.ok, (f, iv.reason)
        assert iv.low.J == pytest.approx(J_star, rel=1e-6) and iv.high.J == pytest.approx(J_star, rel=1e-6), f
        if f != "MAL_agent_reward" or name not in SLOW_AGENT_REWARD:
            assert iv.certificate == "global", f
