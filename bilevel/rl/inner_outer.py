"""Inner-outer loop (Gerstgrasser & Parkes): per leader iteration, train the follower toward its
best response, then update the leader once. Tabular, sample-based: the true MDP is touched only
through a counting BatchStepper; policies learn from rollouts in the model.

PAL (leader = policy pi, follower = model):
    collect episodes of pi in M; follower: refit Phat to this batch (count model: the Dirichlet
    posterior mean, i.e. the sample best response of the KL fit; or `model_steps` Adam steps of a
    softmax model); leader: one NPG step on Q estimated by rollouts of pi in Phat.
MAL family (leader = model Phat, softmax-parametrized; follower = policy):
    follower: `follower_steps` NPG steps in Phat (warm-started); collect episodes of pi in M;
    leader: `model_steps` Adam steps on its objective with the data of this iteration:
      MAL               l(Phat, mu_hat)                    (weighted NLL of the follower's data)
      MAL_agent_reward  alpha l(Phat, mu_hat) - (1-alpha) J(pi_tau, Phat), pi_tau the follower's
                        entropy-smoothed best response in Phat (temperature tau), held fixed
      MAL_random_noise  l(Phat, alpha mu_hat + (1-alpha) mu_hat_rand), mu_hat_rand from as many
                        uniform-random episodes (counted as env samples)
      MAL_agent_true_reward  alpha l(Phat, mu_hat) - (1-alpha) J(pi_tau(Phat), M), differentiated
                        through pi_tau (the return in M depends on the model only through it;
                        the trainer uses M's arrays for this term: an exact-gradient reference
                        trainer, not a sample-based one)
Models are those of the MDP's model class (`bilevel.rl.model_param`: per-pair softmax logits for the
tabular class, per-block logits over the atoms for an aggregated or linear one; the count model is
the class's fit of the counts). The model starts at zero logits: uniform on K, the maximum-entropy
prior (a class: the equal mixture of each block's atoms). The last step makes the
pair consistent: PAL refits the model to the final policy's data; MAL trains the follower on the
final model.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import episode_reward
from bilevel.tabular.policies import uniform_policy
from bilevel.rl import learners as L
from bilevel.rl.env import BatchStepper, episode_horizon
from bilevel.rl.model_param import model_param
import bilevel.game as game
from bilevel.rl.record import CurvePoint, RunRecord


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the tabular trainers (budgets in true-env transitions)."""

    leader_iters: int = 40          # outer iterations
    episodes: int = 16              # true-env episodes collected per leader iteration
    budget: int | None = None       # stop when this many true-env transitions were used
    follower_steps: int = 10        # inner NPG steps (MAL family) / Adam steps (softmax PAL model)
    q_rollouts: int = 128           # exploring-start model rollouts per (s,a) for Q
    q_horizon: int | None = None    # model rollout length (default: the episode horizon)
    follower_lr: float = 4.0        # NPG step of the policy follower (MAL family)
    policy_lr: float = 0.5          # NPG step of the policy leader (PAL)
    model_lr: float = 0.3           # Adam step of the softmax model
    model_steps: int = 5            # Adam steps per leader update (MAL family)
    prior: float = 1.0              # Dirichlet pseudo-count of the count model (spread over K)
    pal_model: str = "count"        # PAL follower: count | softmax
    tau: float = 0.05               # smoothing temperature of MAL_agent_reward's J term (x R_max)
    eval_episodes: int = 200        # sampled evaluation of the final policy (not counted)


def _record_point(mdp, pi, T, env: BatchStepper, ro) -> CurvePoint:
    return CurvePoint(env.steps, episode_reward(mdp.P, mdp.r, mdp.rho0, pi, T),
                      float(ro.returns.mean()))


def _q(mdp, Phat, pi, cfg, rng, T) -> np.ndarray:
    model = BatchStepper.of(mdp, rng=rng, model=Phat)
    return L.mc_q_values(model, pi, cfg.q_rollouts, cfg.q_horizon or T, mdp.gamma)


def final_figures(mdp: TabularMDP, pi: np.ndarray, T: int, rng, n: int) -> dict:
    """Exact J and T-step episode reward of pi in M, and the mean of n sampled episodes."""
    ev = BatchStepper.of(mdp, rng=rng, horizon=T)
    ret = ev.rollout(pi, n).returns
    return {"J": mdp.true_return(pi),
            "episode_reward": episode_reward(mdp.P, mdp.r, mdp.rho0, pi, T),
            "sampled_episode_reward": float(ret.mean()),
            "sampled_episode_reward_se": float(ret.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0}


def leader_data(env: BatchStepper, mdp: TabularMDP, formulation: str, pi: np.ndarray, episodes: int,
                alpha: float | None):
    """Collect the leader's data with pi: (rollouts of pi, transition weights W (S,A,S)), the
    sample version of nu = a mu + c mu_rand (`Formulation.data_mixture`): with c > 0
    (MAL_random_noise, alpha < 1) W mixes in as many uniform-random episodes, a W_pi + c W_rand."""
    S, A = pi.shape
    ro = env.rollout(pi, episodes)
    T = mdp.horizon if mdp.averaged else None
    W = L.transition_weights(ro, S, A, mdp.gamma, T)
    spec = game.formulation(formulation)
    a, c = spec.data_mixture(spec.resolve_alpha(alpha))
    if c > 0.0:
        ro_rand = env.rollout(uniform_policy(S, A), episodes)
        W = a * W + c * L.transition_weights(ro_rand, S, A, mdp.gamma, T)
    return ro, W


def model_leader_update(mdp: TabularMDP, formulation: str, model_theta: np.ndarray, opt: L.Adam,
                        W: np.ndarray, alpha: float | None, tau: float, steps: int,
                        param=None) -> np.ndarray:
    """`steps` Adam steps of the model leader's logits (`param`, default `model_param(mdp)`: the
    MDP's model class) on its objective with data weights W:
    w_l NLL - w_J J(pi_tau, Phat) (`Formulation.objective_weights`: NLL for MAL and
    MAL_random_noise, alpha NLL - (1-alpha) J(pi_tau, Phat) for MAL_agent_reward), or, for a
    return in the true MDP (MAL_agent_true_reward), alpha NLL - (1-alpha) J(pi_tau(Phat), M),
    differentiated through the follower's soft best response (`true_return_gradient`)."""
    g = mdp.gamma
    param = param or model_param(mdp)
    spec = game.formulation(formulation)
    w_l, w_J = spec.objective_weights(spec.resolve_alpha(alpha))
    for _ in range(steps):
        Phat = param.model(model_theta)
        grad = L.nll_gradient_model(W, Phat)
        if w_J and spec.return_in == "true":      # J(pi_tau(Phat), M): through the follower
            grad = w_l * grad - w_J * L.true_return_gradient(mdp, Phat, tau)
        elif w_J:
            pi_tau = L.soft_best_response(Phat, mdp.R, g, tau)
            grad = w_l * grad - w_J * L.return_gradient(Phat, mdp.R, mdp.rho0, g, pi_tau)
        elif w_l != 1.0:
            grad = w_l * grad
        model_theta = opt.step(model_theta, param.pullback(grad, model_theta))
    return model_theta


def train_inner_outer(mdp: TabularMDP, formulation: str, seed: int, cfg: TrainConfig = TrainConfig(),
                      alpha: float | None = None, mdp_path: str = "", progress=None) -> RunRecord:
    """One inner-outer run; returns its RunRecord. `progress(i)` is called per leader iteration."""
    t0 = time.perf_counter()
    spec = game.formulation(formulation)
    alpha = spec.resolve_alpha(alpha)
    rng = np.random.default_rng(seed)
    T = episode_horizon(mdp)
    env = BatchStepper.of(mdp, rng=np.random.default_rng(rng.integers(2**63)))
    mrng = np.random.default_rng(rng.integers(2**63))
    S, A = mdp.n_states, mdp.n_actions
    g = mdp.gamma
    param = model_param(mdp)
    curve = []

    def budget_left():
        return cfg.budget is None or env.steps < cfg.budget

    if spec.leader == "policy":
        theta = np.zeros((S, A))
        model_theta = param.init()

        def fit(ro):
            nonlocal model_theta
            if cfg.pal_model == "count":
                return param.count_fit(L.transition_counts(ro, S, A), cfg.prior)
            W = L.transition_weights(ro, S, A, g, mdp.horizon if mdp.averaged else None)
            opt = L.Adam(cfg.model_lr)
            for _ in range(cfg.follower_steps):
                Phat = param.model(model_theta)
                model_theta = opt.step(model_theta, param.pullback(L.nll_gradient_model(W, Phat),
                                                                   model_theta))
            return param.model(model_theta)

        for it in range(cfg.leader_iters):
            if not budget_left():
                break
            pi = L.softmax_policy(theta)
            ro = env.rollout(pi, cfg.episodes)
            curve.append(_record_point(mdp, pi, T, env, ro))
            Phat = fit(ro)                                         # follower: best response
            theta = L.npg_step(theta, _q(mdp, Phat, pi, cfg, mrng, T), cfg.policy_lr)  # leader
            if progress:
                progress(it)
        pi = L.softmax_policy(theta)
        ro = env.rollout(pi, cfg.episodes)
        curve.append(_record_point(mdp, pi, T, env, ro))
        Phat = fit(ro)
    else:
        theta = np.zeros((S, A))                   # follower logits
        model_theta = param.init()                 # leader logits: the class's centre
        opt = L.Adam(cfg.model_lr)
        tau = cfg.tau * max(mdp.r_max, 1e-12)

        def follow(Phat, theta):
            for _ in range(cfg.follower_steps):
                theta = L.npg_step(theta, _q(mdp, Phat, L.softmax_policy(theta), cfg, mrng, T),
                                   cfg.follower_lr)
            return theta

        for it in range(cfg.leader_iters):
            if not budget_left():
                break
            Phat = param.model(model_theta)
            theta = follow(Phat, theta)                               # follower
            pi = L.softmax_policy(theta)
            ro, W = leader_data(env, mdp, formulation, pi, cfg.episodes, alpha)
            curve.append(_record_point(mdp, pi, T, env, ro))
            model_theta = model_leader_update(mdp, formulation, model_theta, opt, W, alpha, tau,
                                              cfg.model_steps, param)         # leader
            if progress:
                progress(it)
        Phat = param.model(model_theta)
        theta = follow(Phat, theta)
        pi = L.softmax_policy(theta)

    final = final_figures(mdp, pi, T, mrng, cfg.eval_episodes)
    return RunRecord(mdp=mdp.name, mdp_path=mdp_path or mdp.source, formulation=formulation,
                     algorithm="inner-outer", alpha=alpha, seed=int(seed), config=asdict(cfg),
                     policy=pi, model=Phat, curve=tuple(curve), env_samples=int(env.steps),
                     seconds=time.perf_counter() - t0, final=final, occupancy=mdp.occupancy,
                     model_class=mdp.model_class.kind)
