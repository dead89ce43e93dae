"""Learners and trainers: gradients against autograd / finite differences, trainers on hidden_goal."""
import numpy as np
import pytest

from bilevel.tabular import kl_fit, uniform_policy
from bilevel.rl import learners as L
from bilevel.rl.env import BatchStepper
from bilevel.rl.inner_outer import TrainConfig, train_inner_outer
from bilevel.rl.record import RunRecord


def _random_model(rng, S, A):
    P = rng.random((S, A, S)) + 0.05
    return P / P.sum(-1, keepdims=True)


def test_return_gradient_matches_torch_autograd(hidden_goal):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    S, A = 4, 3
    Phat, R = _random_model(rng, S, A), rng.normal(size=(S, A, S))
    pi, rho0, g = _random_model(rng, S, A)[:, 0, :A], np.full(S, 1 / S), 0.9
    pi = pi / pi.sum(1, keepdims=True)
    Pt = torch.tensor(Phat, requires_grad=True)
    Ppi = torch.einsum("sa,sat->st", torch.tensor(pi), Pt)
    rpi = (torch.tensor(pi) * (Pt * torch.tensor(R)).sum(-1)).sum(-1)
    V = torch.linalg.solve(torch.eye(S, dtype=torch.float64) - g * Ppi, rpi)
    (torch.tensor(rho0) @ V).backward()
    np.testing.assert_allclose(L.return_gradient(Phat, R, rho0, g, pi), Pt.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_logit_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    S, A = 3, 2
    K = rng.random((S, A, S)) < 0.8
    K[..., 0] = True
    theta, W, eta = rng.normal(size=(S, A, S)), rng.random((S, A, S)) * K, 1e-3

    def f(th):
        return float(-(W * np.log(np.where(K, L.softmax_model(th, K, eta), 1.0))).sum())
    g = L.logit_gradient(L.nll_gradient_model(W, L.softmax_model(theta, K, eta)), theta, K, eta)
    h, fd = 1e-6, np.zeros_like(theta)
    for i in np.ndindex(theta.shape):
        e = np.zeros_like(theta)
        e[i] = h
        fd[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    np.testing.assert_allclose(np.where(K, g, 0), np.where(K, fd, 0), atol=1e-6)


def test_count_model_converges_to_the_kl_fit(hidden_goal):
    m = hidden_goal
    ro = BatchStepper.of(m, rng=3).rollout(uniform_policy(3, 2), 4000)
    Phat = L.count_model(L.transition_counts(ro, 3, 2), m.K, m.floor, prior=1.0)
    np.testing.assert_allclose(Phat.sum(-1), 1.0)
    assert np.all(Phat[m.K] >= m.floor) and np.all(Phat[~m.K] == 0)
    np.testing.assert_allclose(Phat, kl_fit(m.P, m.K, m.floor), atol=0.03)
    unvisited = L.count_model(np.zeros((3, 2, 3)), m.K, m.floor)
    np.testing.assert_allclose(unvisited[0, 0], 1 / 3, atol=1e-5)


def test_transition_weights_estimate_the_occupancy(hidden_goal):
    from bilevel.tabular import occupancy
    m = hidden_goal
    pi = np.array([[0.5, 0.5], [0.7, 0.3], [0.5, 0.5]])
    ro = BatchStepper.of(m, rng=4).rollout(pi, 20_000)
    mu_hat = L.occupancy_estimate(ro, 3, 2, m.gamma)
    mu = occupancy(m.P, m.rho0, m.gamma, pi)
    np.testing.assert_allclose(mu_hat[:2], mu[:2], atol=0.01)


def test_npg_follower_finds_the_best_response_in_a_model(hidden_goal):
    m = hidden_goal
    model = BatchStepper.of(m, rng=5)
    theta = np.zeros((3, 2))
    for _ in range(20):
        theta = L.npg_step(theta, L.mc_q_values(model, L.softmax_policy(theta), 64, 50, m.gamma), 0.5)
    pi = L.softmax_policy(theta)
    assert pi[0, 1] > 0.99 and pi[1, 1] > 0.99


def test_pal_reaches_the_goal(hidden_goal):
    rec = train_inner_outer(hidden_goal, "PAL", seed=0, cfg=TrainConfig(leader_iters=10, eval_episodes=50))
    assert rec.final["episode_reward"] >= 30.0
    assert rec.env_samples == rec.curve[-1].env_samples


def test_mal_lands_on_the_decoy_and_record_round_trips(hidden_goal):
    rec = train_inner_outer(hidden_goal, "MAL", seed=1, cfg=TrainConfig(leader_iters=8, eval_episodes=50))
    assert abs(rec.final["episode_reward"] - 0.9875) < 0.05
    back = RunRecord.from_json(rec.to_json())
    np.testing.assert_array_equal(back.policy, rec.policy)
    np.testing.assert_array_equal(back.model, rec.model)
    assert back.curve == rec.curve and back.final == rec.final


def test_random_noise_reveals_the_goal(hidden_goal):
    rec = train_inner_outer(hidden_goal, "MAL_random_noise", seed=0,
                            cfg=TrainConfig(leader_iters=15, eval_episodes=50))
    assert rec.final["episode_reward"] >= 30.0


def test_budget_is_respected(hidden_goal):
    rec = train_inner_outer(hidden_goal, "PAL", seed=0, cfg=TrainConfig(budget=500, eval_episodes=10))
    # stops at the first iteration past the budget; one more batch makes the final model
    assert rec.env_samples <= 500 + 2 * 16 * hidden_goal.horizon


@pytest.mark.parametrize("averaged", [False, True])
def test_true_return_gradient_matches_finite_differences(averaged):
    """d/dPhat J(pi_tau(Phat), M) through the follower's soft best response, against central
    differences of the composed function along random directions."""
    from bilevel.mdp.garnet import garnet
    for seed in range(3):
        mdp = garnet(4, 2, 2, seed=seed, gamma=0.9)
        if averaged:
            mdp = mdp.with_(horizon=6, occupancy="average")
        rng = np.random.default_rng(seed)
        Phat = rng.dirichlet(np.ones(4), size=(4, 2))
        G = L.true_return_gradient(mdp, Phat, 0.3)
        D = rng.normal(size=Phat.shape)

        def J(X):
            return mdp.true_return(L.soft_best_response(X, mdp.R, mdp.gamma, 0.3, iters=500))

        fd = (J(Phat + 1e-6 * D) - J(Phat - 1e-6 * D)) / 2e-6
        assert (G * D).sum() == pytest.approx(fd, rel=1e-7)


def test_mal_true_reward_trainer_reaches_the_exact_interval(hidden_goal):
    """At alpha 0.9 the code's agent-reward variant's exact interval is [J*, J*]; three seeds of
    the inner-outer trainer end there and are verified."""
    from bilevel.rl.inner_outer import TrainConfig, train_inner_outer
    from bilevel.verify.runs import verify_runs
    runs = [(f"seed{s}", train_inner_outer(hidden_goal, "MAL_agent_true_reward", s, TrainConfig(),
                                           alpha=0.9, mdp_path=str(hidden_goal.source)))
            for s in range(3)]
    checks = verify_runs(runs)
    assert all(c.ok for c in checks)
    assert all(c.J == pytest.approx(73.9603960396, abs=1e-4) for c in checks)
