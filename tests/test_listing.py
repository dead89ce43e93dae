"""bilevel.equilibria.exact.lie_bound, .listing and .policy_tree: the proved per-policy bound
lies below every equilibrium IPOPT certifies for that policy, and the ends of the listing and
of the tree agree with the enumeration of deterministic policies (an independent route: SCIP on
the MPEC per policy)."""

import itertools

import numpy as np
import pytest

from conftest import ipopt_best_lie

from bilevel.equilibria.enumeration import enumerate_interval
from bilevel.equilibria.exact import agent_reward
from bilevel.equilibria.exact.agent_reward import _certifier, agent_reward_interval
from bilevel.equilibria.exact.lie_bound import concave_max, lie_bound, linear_coefficients
from bilevel.equilibria.exact.minlp import FixedPolicyNLP, build_minlp
from bilevel.mdp.garnet import garnet
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import deterministic_policy

ALPHA = 0.9999


@pytest.mark.parametrize("seed,support", [(1, "neighbors")])
def test_the_lie_bound_lies_below_every_certified_equilibrium(seed, support):
    """Every deterministic policy of a 4-state Garnet: the proved lower bound on its leader is at
    most the leader of the equilibrium IPOPT finds and the certificate accepts (hostile witness
    and floored fit, each polished), and so is the static relaxation's linear bound, which the
    proved one beats on every policy."""
    mdp = garnet(4, 3, 2, seed=seed, support=support, initial="first")
    bm = build_minlp(mdp, ALPHA)
    certify = _certifier(bm, FixedPolicyNLP(bm))
    a = linear_coefficients(mdp, ALPHA)
    checked = 0
    for actions in itertools.product(range(mdp.n_actions), repeat=mdp.n_states):
        actions = np.array(actions)
        lb = lie_bound(mdp, ALPHA, actions)
        assert lb is not None and lb["lie"] >= 0.0
        mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, deterministic_policy(actions, mdp.n_actions))
        assert float(np.sum(mu * a)) <= lb["leader_lo"]
        eq = certify(actions)
        if eq is not None:
            assert lb["leader_lo"] <= eq.leader_objective + 1e-12
            checked += 1
    assert checked >= 20


def test_the_lie_bound_is_within_three_times_ipopts_best_lie():
    """On the floored fit's greedy policy of two Garnets, what the bound lets a lie buy is at
    least and at most three times what IPOPT's best lie with the policy fixed gains (from the
    floored fit, both leader values recomputed from arrays): the bound is valid there and
    tight enough to separate policies 5e-6 outside the band (docs/DESIGN.md 5.6)."""
    for mdp in (garnet(6, 3, 3, seed=1, support="all", initial="first"),
                garnet(8, 3, 3, seed=0, support="neighbors", initial="first")):
        actions, F_eta, F_opt = ipopt_best_lie(mdp, ALPHA)
        gain = F_eta - F_opt
        lie = lie_bound(mdp, ALPHA, actions)["lie"]
        assert gain > 0 and gain <= lie <= 3 * gain


def test_concave_max_bounds_the_maximum_from_above():
    """On concave functions with known maxima: never below, and within its tolerance."""
    for c, x_star in ((1.0, 0.25), (3e-4, 2.25e-8), (10.0, 25.0)):
        h = lambda x, c=c: c * np.sqrt(x) - x          # max c^2 / 4 at x = c^2 / 4
        top = concave_max(h, 1e-3)
        assert c ** 2 / 4 <= top <= c ** 2 / 4 * (1 + 1e-8)
        assert x_star == pytest.approx(c ** 2 / 4)


@pytest.mark.parametrize("seed,support,search", [
    (0, "neighbors", "policy tree"), (1, "all", "policy tree"), (2, "true", "policy tree"),
    (3, "neighbors", "policy tree"), (4, "all", "policy tree"), (0, "neighbors", "listing"),
    (3, "neighbors", "listing")])
def test_the_ends_match_the_enumeration(seed, support, search, monkeypatch):
    """Where both prove their interval, the ends of the tree of partial policies, and of the
    listing (forced), are the enumeration's (SCIP on the MPEC per deterministic policy, no
    listing and no lie bound)."""
    mdp = garnet(3, 2, 2, seed=seed, support=support, initial="first")
    if search == "listing":
        monkeypatch.setattr(agent_reward, "tree_available", lambda *args: False)
    res = agent_reward_interval(mdp, ALPHA, time_limit=20.0)
    assert res.details["steps"]["min"]["search"] == search
    enum = enumerate_interval(mdp, "MAL_agent_reward", ALPHA, time_limit=10.0)   # 2 s left policies undecided on a loaded machine
    assert res.ok and enum.ok
    assert res.certificate == "global" and enum.certificate == "global"
    assert res.low.J == pytest.approx(enum.low.J, abs=1e-9)
    assert res.high.J == pytest.approx(enum.high.J, abs=1e-9)
    assert res.details["steps"]["min"]["undecided"] == 0


def test_an_end_stopped_short_keeps_bounds_below_the_proved_one():
    """garnet(16, 3, 2): with 1 s per step the tree of partial policies stops short of the min
    end, and SCIP's bound on the whole MINLP joins it. Both bounds, and the end reported less its
    proved gap, lie at or below 7.228758838, the min end the listing and the tree prove with
    120 s per step (benchmarks/RESULTS.md 13, 14), and the end is a certified equilibrium at or
    above it."""
    mdp = garnet(16, 3, 2, seed=0, support="neighbors", initial="first")
    res = agent_reward_interval(mdp, ALPHA, time_limit=1.0)
    proved_min = 7.228758837983973
    step = res.details["steps"]["min"]
    assert res.ok and res.certificate == "local" and step["minlp_bound"] is not None
    assert step["bound"] <= proved_min + 1e-9 and step["minlp_bound"] <= proved_min + 1e-9
    assert res.low.J >= proved_min - 1e-9
    assert res.low.J - res.details["proved_gap"]["min"] <= proved_min + 1e-9
