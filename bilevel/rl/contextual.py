"""Contextualized follower (Gerstgrasser & Parkes): pretrain a follower conditioned on the leader's
description over randomly drawn leaders, train the leader against the frozen follower, then
fine-tune the follower on the final leader and report whether it still best-responds.

MAL family (leader = model Phat, description = Phat flattened (S*A*S)):
    follower  stable-baselines3 PPO on observations [onehot(s), Phat], pretrained in model rollouts
              of random models of the MDP's model class, logits sigma z, z ~ N(0, 1)
              (`bilevel.rl.model_param`; no true-env samples);
    leader    the inner-outer model leader (Adam steps on its objective, data of the follower's
              policy table pi(.|s, Phat) collected in the true env);
    fine-tune PPO on the final model alone; eps_pi (suboptimality in the model, by value iteration)
              before and after go to the record's notes.
PAL (leader = policy pi, description = pi flattened (S*A)):
    follower  a torch MLP f(pi, s, a) -> logits over K(s,a) (a restricted class: f(pi, block) ->
              logits over the block's atoms, lifted to Phat), pretrained by NLL on true-env data of
              random policies pi (rows ~ Dirichlet(1)); the samples count as env samples;
    leader    Adam ascent on J(pi, f(pi)) through the frozen follower (torch autograd: the
              Stackelberg gradient, including the follower's reaction), J by a linear solve;
    fine-tune NLL steps on data of the final policy; the fine-tuned model's eps_M and the policy's
              eps_pi in it go to the notes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import bilevel.game as game
from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import return_gap
from bilevel.rl import learners as L
from bilevel.rl.env import BatchStepper, episode_horizon
from bilevel.rl.inner_outer import _record_point, final_figures, leader_data, model_leader_update
from bilevel.rl.model_param import model_param
from bilevel.rl.record import RunRecord


@dataclass(frozen=True)
class ContextConfig:
    """Budgets of the contextualized follower scheme."""

    pretrain_steps: int = 20_000      # MAL: PPO timesteps over random models (model rollouts)
    pretrain_policies: int = 64       # PAL: random policies whose true-env data pretrain f
    pretrain_episodes: int = 8        # PAL: true-env episodes per random policy
    pretrain_epochs: int = 300        # PAL: NLL epochs of f
    model_sigma: float = 2.0          # MAL: logit scale of random models
    leader_iters: int = 30            # leader updates against the frozen follower
    episodes: int = 16                # MAL: true-env episodes per leader update
    model_lr: float = 0.3             # MAL leader (Adam)
    model_steps: int = 5
    policy_lr: float = 0.1            # PAL leader (Adam on policy logits, 10 steps per iteration)
    finetune_steps: int = 5_000       # MAL: PPO timesteps on the final model
    finetune_epochs: int = 100        # PAL: NLL epochs on the final policy's data
    tau: float = 0.05
    budget: int | None = None
    eval_episodes: int = 200
    hidden: int = 64


def _eps_pi(mdp, Phat, pi) -> float:
    """eps_pi = J*(Phat) - J(pi, Phat), rewards rhat (`return_gap`)."""
    return return_gap(Phat, mdp.model_reward(Phat), mdp.rho0, mdp.gamma, pi)


# --------------------------------------------------------------------------- MAL: PPO follower

class ContextModelEnv(gym.Env):
    """Episodes in a model Phat drawn per reset by `sample_model(rng)` (or fixed); observation
    [onehot(s), Phat.ravel()] (Box), action Discrete(A), rewards R, terminal/horizon as the MDP."""

    metadata = {"render_modes": []}

    def __init__(self, mdp: TabularMDP, sample_model=None, model: np.ndarray | None = None):
        self.mdp, self.sample_model, self.model = mdp, sample_model, model
        S, A = mdp.n_states, mdp.n_actions
        self.observation_space = spaces.Box(0.0, 1.0, (S + S * A * S,), dtype=np.float32)
        self.action_space = spaces.Discrete(A)
        self.T = episode_horizon(mdp)

    def obs(self, s: int) -> np.ndarray:
        o = np.zeros(self.observation_space.shape, dtype=np.float32)
        o[s] = 1.0
        o[self.mdp.n_states:] = self.Phat.ravel()
        return o

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.Phat = self.model if self.sample_model is None else self.sample_model(self.np_random)
        self.s = int(self.np_random.choice(self.mdp.n_states, p=self.mdp.rho0))
        self.t = 0
        return self.obs(self.s), {}

    def step(self, a):
        a = int(a)
        s2 = int(self.np_random.choice(self.mdp.n_states, p=self.Phat[self.s, a]))
        r = float(self.mdp.R[self.s, a, s2])
        self.s, self.t = s2, self.t + 1
        term = bool(self.mdp.terminal[s2])
        return self.obs(s2), r, term, (not term) and self.t >= self.T, {}


def ppo_policy_table(model, env: ContextModelEnv, Phat: np.ndarray) -> np.ndarray:
    """pi(a|s) of the contextual PPO follower for the leader description Phat, shape (S,A)."""
    import torch
    env.Phat = Phat
    obs = np.stack([env.obs(s) for s in range(env.mdp.n_states)])
    with torch.no_grad():
        dist = model.policy.get_distribution(torch.as_tensor(obs))
        return dist.distribution.probs.numpy().astype(float)


def _train_mal(mdp, formulation, seed, cfg, alpha, env, mrng):
    from stable_baselines3 import PPO
    param = model_param(mdp)

    def sample_model(rng):
        return param.model(cfg.model_sigma * rng.standard_normal(param.shape))

    cenv = ContextModelEnv(mdp, sample_model)
    ppo = PPO("MlpPolicy", cenv, gamma=mdp.gamma, seed=seed, verbose=0, n_steps=1024, batch_size=128,
              policy_kwargs={"net_arch": [cfg.hidden, cfg.hidden]}, device="cpu")
    ppo.learn(cfg.pretrain_steps)
    T = episode_horizon(mdp)
    model_theta, opt = param.init(), L.Adam(cfg.model_lr)
    tau = cfg.tau * max(mdp.r_max, 1e-12)
    curve = []
    for _ in range(cfg.leader_iters):
        if cfg.budget is not None and env.steps >= cfg.budget:
            break
        Phat = param.model(model_theta)
        pi = ppo_policy_table(ppo, cenv, Phat)                  # frozen follower's response
        ro, W = leader_data(env, mdp, formulation, pi, cfg.episodes, alpha)
        curve.append(_record_point(mdp, pi, T, env, ro))
        model_theta = model_leader_update(mdp, formulation, model_theta, opt, W, alpha, tau,
                                          cfg.model_steps, param)
    Phat = param.model(model_theta)
    pi_frozen = ppo_policy_table(ppo, cenv, Phat)
    fenv = ContextModelEnv(mdp, model=Phat)
    ppo.set_env(fenv)
    ppo.learn(cfg.finetune_steps, reset_num_timesteps=False)
    pi = ppo_policy_table(ppo, fenv, Phat)
    notes = {"eps_pi_frozen_follower": _eps_pi(mdp, Phat, pi_frozen),
             "eps_pi_after_finetune": _eps_pi(mdp, Phat, pi),
             "policy_changed_by_finetune": float(np.abs(pi - pi_frozen).max())}
    return pi, Phat, curve, notes


# --------------------------------------------------------------------------- PAL: model follower

def _train_pal(mdp, spec, seed, cfg, env, mrng):
    import torch
    torch.manual_seed(seed)
    S, A = mdp.n_states, mdp.n_actions
    K = torch.as_tensor(np.array(mdp.K))
    g = mdp.gamma
    param = model_param(mdp)
    feats = torch.as_tensor(param.row_features())          # one row of logits per pair / block
    net = torch.nn.Sequential(torch.nn.Linear(S * A + feats.shape[1], cfg.hidden), torch.nn.Tanh(),
                              torch.nn.Linear(cfg.hidden, cfg.hidden), torch.nn.Tanh(),
                              torch.nn.Linear(cfg.hidden, param.shape[-1])).double()

    def model_of(pi):           # pi: (S,A) tensor -> Phat (S,A,S), a model of the class
        x = torch.cat([pi.reshape(1, -1).expand(feats.shape[0], -1), feats], dim=1)
        return param.torch_model(net(x).reshape(param.shape))

    def fit(data, epochs):
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(epochs):
            opt.zero_grad()
            loss = sum(-(N * torch.log(torch.where(K, model_of(p), 1.0))).sum() / N.sum()
                       for p, N in data) / len(data)
            loss.backward()
            opt.step()

    def collect(pi):
        ro = env.rollout(pi, cfg.pretrain_episodes)
        return ro, (torch.as_tensor(pi), torch.as_tensor(L.transition_counts(ro, S, A)))

    data = [collect(mrng.dirichlet(np.ones(A), size=S))[1] for _ in range(cfg.pretrain_policies)]
    fit(data, cfg.pretrain_epochs)
    for p in net.parameters():
        p.requires_grad_(False)

    R, rho0 = torch.tensor(mdp.R), torch.tensor(mdp.rho0)
    theta = torch.zeros(S, A, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=cfg.policy_lr)
    T, curve = episode_horizon(mdp), []   # the leader uses no env samples: one curve point at the end
    for it in range(cfg.leader_iters * 10):
        pi = torch.softmax(theta, dim=-1)
        Phat = model_of(pi)                                      # frozen follower's reaction
        Ppi = torch.einsum("sa,sat->st", pi, Phat)
        rpi = (pi * (Phat * R).sum(-1)).sum(-1)
        J = rho0 @ torch.linalg.solve(torch.eye(S, dtype=torch.float64) - g * Ppi, rpi)
        opt.zero_grad()
        (-J).backward()
        opt.step()
    pi = torch.softmax(theta, -1).detach().numpy()
    Phat_frozen = model_of(torch.as_tensor(pi)).numpy()
    for p in net.parameters():
        p.requires_grad_(True)
    ro, d = collect(pi)
    curve.append(_record_point(mdp, pi, T, env, ro))
    fit([d], cfg.finetune_epochs)
    Phat = model_of(torch.as_tensor(pi)).detach().numpy()
    # the model follower's gap is its excess loss eps_M = l(Phat, mu) - l(P_eta, mu)
    notes = {"eps_M_frozen_follower": spec.follower_gap(mdp, pi, Phat_frozen),
             "eps_M_after_finetune": spec.follower_gap(mdp, pi, Phat),
             "eps_pi_after_finetune": _eps_pi(mdp, Phat, pi)}
    return pi, Phat, curve, notes


def train_contextualized(mdp: TabularMDP, formulation: str, seed: int, cfg: ContextConfig = ContextConfig(),
                         alpha: float | None = None, mdp_path: str = "") -> RunRecord:
    """One contextualized-follower run; returns its RunRecord (notes: fine-tune report)."""
    import torch
    torch.set_num_threads(1)   # small networks; the machine is shared
    t0 = time.perf_counter()
    spec = game.formulation(formulation)
    alpha = spec.resolve_alpha(alpha)
    rng = np.random.default_rng(seed)
    env = BatchStepper.of(mdp, rng=np.random.default_rng(rng.integers(2**63)))
    mrng = np.random.default_rng(rng.integers(2**63))
    if spec.leader == "policy":
        pi, Phat, curve, notes = _train_pal(mdp, spec, seed, cfg, env, mrng)
    else:
        pi, Phat, curve, notes = _train_mal(mdp, formulation, seed, cfg, alpha, env, mrng)
    final = final_figures(mdp, pi, episode_horizon(mdp), mrng, cfg.eval_episodes)
    return RunRecord(mdp=mdp.name, mdp_path=mdp_path or mdp.source, formulation=formulation,
                     algorithm="contextualized", alpha=alpha, seed=int(seed), config=asdict(cfg),
                     policy=pi, model=Phat, curve=tuple(curve), env_samples=int(env.steps),
                     seconds=time.perf_counter() - t0, final=final, notes=notes,
                     occupancy=mdp.occupancy, model_class=mdp.model_class.kind)
