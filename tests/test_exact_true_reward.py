"""MAL + true reward (leader alpha l(Phat, mu) - (1-alpha) J(pi, M)): its closed-form exact route
says every equilibrium returns J* for alpha < 1 (docs/DESIGN.md 5.7). Checked against value
iteration, against SCIP on the MPEC (global), and against plain MAL at alpha = 1."""
import numpy as np
import pytest

from bilevel.equilibria import solve_formulation
from bilevel.mdp.garnet import garnet

F = "MAL_agent_true_reward"


def J_star(mdp):
    """max_pi rho0 . V^pi by value iteration written here."""
    V = np.zeros(mdp.n_states)
    for _ in range(20000):
        V_new = (mdp.r + mdp.gamma * mdp.P @ V).max(axis=1)
        if np.abs(V_new - V).max() < 1e-13:
            break
        V = V_new
    return float(mdp.rho0 @ V_new)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 0.99])
def test_every_equilibrium_returns_the_optimum_on_hidden_goal(hidden_goal, alpha):
    """Where MAL + agent reward (the return in the model) still has the decoy at alpha 0.9 and
    0.99, the true-return version is at J* for every alpha < 1."""
    res = solve_formulation(hidden_goal, F, alpha=alpha)
    J = J_star(hidden_goal)
    assert res.ok and res.certificate == "global"
    assert res.low.J == pytest.approx(J, rel=1e-9) and res.high.J == pytest.approx(J, rel=1e-9)
    assert res.low.follower_gap <= 1e-6
    assert res.leader_objective == pytest.approx(-(1 - alpha) * J, rel=1e-9)
    lo, hi = res.details["at_floor"]["J_bounds"]
    assert lo <= J <= hi and hi == pytest.approx(J)
    if alpha >= 0.9:      # the model-return version keeps the decoy here
        poster = solve_formulation(hidden_goal, "MAL_agent_reward", alpha=alpha)
        assert poster.low.J < 1.0


@pytest.mark.parametrize("mdp_of", [lambda hg: hg,
                                    lambda hg: garnet(3, 2, 2, seed=4, gamma=0.9, initial="first")])
def test_scip_on_the_mpec_proves_the_same_interval(hidden_goal, mdp_of):
    mdp = mdp_of(hidden_goal)
    exact = solve_formulation(mdp, F, alpha=0.7)
    mpec = solve_formulation(mdp, F, alpha=0.7, solver="mpec-scip", time_limit=60)
    assert mpec.ok and mpec.certificate == "global", mpec.reason
    # the MPEC's ends (at the file's floor, in its own band L* + tol, tol including SCIP's proved
    # gap) lie in the exact route's floor bracket for that band:
    #   (1 - alpha)(J* - J) <= alpha l(witness) + tol
    J = J_star(mdp)
    lo = J - (0.7 * exact.low.model_loss + mpec.tolerance) / 0.3
    for end in (mpec.low, mpec.high):
        assert lo - 1e-9 <= end.J <= J + 1e-9
    assert exact.details["at_floor"]["J_bounds"][0] <= J
    assert exact.low.J == exact.high.J == pytest.approx(J_star(mdp), rel=1e-9)


def test_alpha_one_is_plain_mal(hidden_goal):
    a = solve_formulation(hidden_goal, F, alpha=1.0)
    b = solve_formulation(hidden_goal, "MAL")
    assert (a.low.J, a.high.J) == pytest.approx((b.low.J, b.high.J))
    assert a.low.J < 1.0          # the hiding equilibrium is back


def test_witness_policy_is_the_checked_policy_off_its_reach():
    """Regression: the witness model is built for the hiding check's actions, which re-choose the
    policy where pi* does not reach; certifying pi* itself there failed the follower certificate
    (gap 2.72) on this Garnet. The witness policy must be optimal in the witness model (value
    iteration in that model, independently of the route) and return J* (value iteration in M)."""
    import numpy as np
    from bilevel.equilibria.routing import solve_formulation
    from bilevel.mdp.garnet import garnet
    from bilevel.tabular.evaluation import policy_evaluation, value_iteration
    mdp = garnet(4, 2, 2, seed=1434751103, gamma=0.9, initial="first", support="all")
    iv = solve_formulation(mdp, "MAL_agent_true_reward")
    assert iv.status == "solved" and iv.certificate == "global", iv.reason
    eq = iv.low
    rhat = mdp.model_reward(eq.model)
    V_opt, _ = value_iteration(eq.model, rhat, mdp.gamma, tol=1e-12)
    V_pi = policy_evaluation(eq.model, rhat, mdp.gamma, eq.policy)
    assert np.max(V_opt - V_pi) <= 1e-8
    V_star, _ = value_iteration(mdp.P, mdp.r, mdp.gamma, tol=1e-12)
    assert eq.J == pytest.approx(float(mdp.rho0 @ V_star), abs=1e-9)
