"""bilevel.equilibria.exact.policy_tree and its rows: the linear lie bounds lie above the
per-policy lie bound on every policy, the completion box holds the values of every completion
(brute force), and the tree proves the listing's ends."""

import itertools

import numpy as np
import pytest

from bilevel.equilibria.exact import agent_reward
from bilevel.equilibria.exact.completion_box import completion_box, outer_box, variance_bounds
from bilevel.equilibria.exact.lie_bound import (floor_coefficients, lie_bound, linear_lie_bounds,
                                                policy_occupancy_values)
from bilevel.mdp.garnet import garnet
from bilevel.tabular.occupancy import occupancy
from bilevel.tabular.policies import deterministic_policy

ALPHA = 0.9999


def _policies(allowed):
    return (np.array(p) for p in itertools.product(*[np.flatnonzero(row) for row in allowed]))


def test_the_linear_lie_bounds_lie_above_the_lie_bound_on_every_policy():
    """Every deterministic policy of a 4-state Garnet: the best tangent kappa Sigma + C at the
    policy's own Sigma is at least the lie `lie_bound` proves (golden section on the exact G)
    and at most three times it, and the row's left side, sum mu f - kappa Sigma - C, is the
    per-policy bound's leader_lo or below."""
    mdp = garnet(4, 3, 2, seed=1, support="neighbors", initial="first")
    tangents = linear_lie_bounds(mdp, ALPHA)
    f = floor_coefficients(mdp, ALPHA)
    for actions in _policies(np.ones((4, 3), dtype=bool)):
        lb = lie_bound(mdp, ALPHA, actions)
        credit = min(k * lb["sigma"] + C for k, C in tangents)
        assert lb["lie"] <= credit <= 3 * lb["lie"]
        mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, deterministic_policy(actions, mdp.n_actions))
        assert float(np.sum(mu * f)) - credit <= lb["leader_lo"] + 1e-15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_completion_box_holds_every_completion(seed):
    """Random partial policies of a 5-state Garnet: the values of every completion lie in the
    box, its ends are attained (the min- and max-VI are exact), and the variance bound is at
    least the variance at each completion's own values."""
    mdp = garnet(5, 3, 2, seed=seed, support="neighbors", initial="first")
    rng = np.random.default_rng(seed)
    for _ in range(4):
        allowed = rng.random((5, 3)) < 0.6
        allowed[np.arange(5), rng.integers(0, 3, 5)] = True
        lo, hi = completion_box(mdp, allowed, *outer_box(mdp))
        w = variance_bounds(mdp, allowed, lo, hi)
        values = []
        for actions in _policies(allowed):
            _, V = policy_occupancy_values(mdp, actions)
            values.append(V)
            assert np.all(lo <= V + 1e-9) and np.all(V <= hi + 1e-9)
            for s in np.flatnonzero(~mdp.terminal):
                p, fs = mdp.P[s, actions[s]], mdp.R[s, actions[s]] + mdp.gamma * V
                assert float(p @ (fs - p @ fs) ** 2) <= w[s, actions[s]] + 1e-9
        assert np.min(values, axis=0) == pytest.approx(lo, abs=1e-8)
        assert np.max(values, axis=0) == pytest.approx(hi, abs=1e-8)


@pytest.mark.parametrize("spec", [(8, 0, "neighbors")])
def test_the_tree_proves_the_listings_ends(spec, monkeypatch):
    """garnet(8, 3, 2): the tree of partial policies and the listing (forced) prove the same
    interval, both global (the 3-state Garnets of tests/test_listing.py check both against the
    enumeration)."""
    S, seed, support = spec
    mdp = garnet(S, 3, 2, seed=seed, support=support, initial="first")
    tree = agent_reward.agent_reward_interval(mdp, ALPHA, time_limit=60.0)
    monkeypatch.setattr(agent_reward, "tree_available", lambda *args: False)
    listing = agent_reward.agent_reward_interval(mdp, ALPHA, time_limit=60.0)
    assert tree.details["steps"]["min"]["search"] == "policy tree"
    assert listing.details["steps"]["min"]["search"] == "listing"
    assert tree.certificate == listing.certificate == "global"
    assert tree.low.J == pytest.approx(listing.low.J, abs=1e-9)
    assert tree.high.J == pytest.approx(listing.high.J, abs=1e-9)


def test_a_second_look_moves_the_end_and_its_bound():
    """A complete search's min end 7.2 with undecided policies at J 7.0, 7.1, 7.15 and 7.3: the
    second look puts 7.0 out and 7.1 in, which makes 7.1 the end, proved (7.15 and 7.3 lie
    beyond it and are not looked at). With no time left nothing changes, and a search stopped
    by its clock is left as it is (policies beyond its end were never listed)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from bilevel.equilibria.exact.listing import ListedEnd, second_look
    Js = [7.0, 7.1, 7.15, 7.3]
    verdicts = {7.0: ("out", None), 7.1: ("in", SimpleNamespace(J=7.1))}
    res = ListedEnd(SimpleNamespace(J=7.2), "optimal", 7.0, undecided=Js,
                    undecided_actions=[np.array([i]) for i in range(4)])
    seen = []

    def decide(actions):
        seen.append(Js[int(actions[0])])
        return verdicts[Js[int(actions[0])]]

    new = second_look(res, "min", decide, 60.0)
    assert seen == [7.0, 7.1] and new.end.J == 7.1 and new.bound == 7.1 and new.gap == 0.0
    assert second_look(res, "min", decide, -1.0).bound == 7.0
    stopped = replace(res, status="time limit")
    assert second_look(stopped, "min", decide, 60.0) is stopped


def test_a_copied_milp_is_independent():
    """solvers.milp.MILP.copy, which every node of the tree starts from: a row added to the copy
    changes the copy's optimum and not the original's."""
    from solvers.milp import MILP
    p = MILP()
    x = p.var(2, ub=1.0, integer=True)
    p.set_cost(x, [-1.0, -1.0])
    q = p.copy()
    q.row(x, [1.0, 1.0], hi=1.0)
    assert p.solve().objective == pytest.approx(-2.0) and q.solve().objective == pytest.approx(-1.0)
    assert p.n_rows == 0 and q.n_rows == 1
