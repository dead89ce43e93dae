"""Starting points for the MPEC route: follower-optimal (structured) and random starts."""
from __future__ import annotations

import numpy as np
from pyomo.common.collections import ComponentMap

import bilevel.game as game
from bilevel.game.formulations import BilevelModel
from bilevel.tabular.evaluation import policy_evaluation, value_iteration
from bilevel.tabular.fits import kl_fit, kl_rows, random_model
from bilevel.tabular.occupancy import occupancy, state_visits
from bilevel.tabular.policies import uniform_policy


def starting_point(bm: BilevelModel, pi: np.ndarray, Phat: np.ndarray | None = None) -> ComponentMap:
    """A consistent start: policy pi, model Phat (default: the floored fit P_eta), the true
    (data) occupancy mu (and its state visits under `occupancy: average`), and (MAL family) V, w
    of pi in Phat, or (PAL) the model occupancy d."""
    mdp, m = bm.mdp, bm.model
    if Phat is None:
        Phat = mdp.reference_fit()
    mu = mdp.data_occupancy(pi)
    x = ComponentMap()
    for (s, a) in m.SA:
        x[m.pi[s, a]] = float(pi[s, a])
    for (s, a, t) in m.KSET:
        x[m.Phat[s, a, t]] = float(Phat[s, a, t])
    if hasattr(m, "theta"):
        for b, theta in enumerate(mdp.model_blocks.theta_of(Phat)):
            for k, v in enumerate(theta):
                x[m.theta[b, k]] = float(v)
    for s in range(mdp.n_states):
        for a in range(mdp.n_actions):
            if not m.mu[s, a].fixed:
                x[m.mu[s, a]] = float(mu[s, a] if not mdp.terminal[s] else mu[s].sum())
    if hasattr(m, "visits"):
        d = state_visits(mdp.P, mdp.rho0, pi, mdp.horizon)
        for (t, s) in m.visits:
            x[m.visits[t, s]] = float(d[t, s])
    if hasattr(m, "fit_up"):
        diff = Phat - kl_fit(mdp.P, mdp.K, mdp.floor)
        for (s, a, t) in m.KSET:
            x[m.fit_up[s, a, t]] = float(max(diff[s, a, t], 0.0))
            x[m.fit_down[s, a, t]] = float(max(-diff[s, a, t], 0.0))
    if hasattr(m, "kl"):
        kl = kl_rows(mdp.P, Phat)
        for (s, a) in m.SA:
            x[m.kl[s, a]] = float(kl[s, a])
    rhat = mdp.model_reward(Phat)
    if hasattr(m, "V"):
        V = policy_evaluation(Phat, rhat, mdp.gamma, pi)
        Q = rhat + mdp.gamma * Phat @ V
        for s in range(mdp.n_states):
            if not m.V[s].fixed:
                x[m.V[s]] = float(V[s])
        for (s, a) in m.SA:
            x[m.w[s, a]] = float(max(0.0, V[s] - Q[s, a]))
    if hasattr(m, "d"):
        d = occupancy(Phat, mdp.rho0, mdp.gamma, pi)
        for s in range(mdp.n_states):
            for a in range(mdp.n_actions):
                if not m.d[s, a].fixed:
                    x[m.d[s, a]] = float(d[s, a] if not mdp.terminal[s] else d[s].sum())
    return x


def structured_starts(bm: BilevelModel, follower_optimal: bool = False) -> list[ComponentMap]:
    """IPOPT starts that make the known equilibria reachable: the optimal policy of M with the
    fitted model, the uniform policy, and (policy follower) the optimal policy of the fitted model.
    `follower_optimal` (the polish-only mode, which starts from follower optima only): a policy
    follower does not get the uniform policy, which is not optimal in its model unless every
    action ties. Its polish fixes the wrong sides and stops at the iteration cap: 3 of the 6
    failed polishes of MAL + agent reward on grid_10x10 (19 s of 56 s), all 3 on grid_hidden_goal."""
    mdp = bm.mdp
    policy_follower = game.formulation(bm.formulation).follower == "policy"
    _, pi_star = value_iteration(mdp.P, mdp.r, mdp.gamma)
    starts = [starting_point(bm, pi_star)]
    if not (follower_optimal and policy_follower):
        starts.append(starting_point(bm, uniform_policy(mdp.n_states, mdp.n_actions)))
    if policy_follower:
        Peta = mdp.reference_fit()
        _, pi_eta = value_iteration(Peta, mdp.model_reward(Peta), mdp.gamma)
        starts.insert(0, starting_point(bm, pi_eta, Peta))
    return starts


def class_random_model(mdp, rng: np.random.Generator) -> np.ndarray:
    """A random model of a restricted class: floored Dirichlet(1) weights per block."""
    cb = mdp.model_blocks
    thetas = []
    for blk in cb.blocks:
        x = rng.gamma(1.0, size=blk.n_atoms)
        thetas.append(mdp.floor + (1.0 - blk.n_atoms * mdp.floor) * x / x.sum())
    return cb.lift(thetas)


def random_starts(bm: BilevelModel, n: int, seed: int = 0) -> list[ComponentMap]:
    """`n` seeded random starts that satisfy every constraint but the leader's, completed by
    `starting_point` (so IPOPT starts on the flows, never from a box-random point, whose
    log(Phat) and bilinear terms stall it for thousands of iterations on gridworlds):
    policy follower (MAL family): Phat(.|s,a) = (1-l) P_eta + l D, D = `random_model` (floored
                Dirichlet(1) on K(s,a)), l = 0 or U(0,1) with probability 1/2 each, and pi
                greedy in Phat (an exact follower optimum);
    model follower (PAL): pi(.|s) one-hot or Dirichlet(1) with probability 1/2 each, Phat = P_eta where
                mu_pi > 0 (the exact model best response) and D elsewhere."""
    mdp = bm.mdp
    S, A = mdp.n_states, mdp.n_actions
    rng = np.random.default_rng(seed)
    Peta = mdp.reference_fit()
    model_follower = game.formulation(bm.formulation).follower == "model"
    out = []
    for _ in range(n):
        D = random_model(mdp.K, mdp.floor, rng) if not mdp.restricted else class_random_model(mdp, rng)
        if model_follower:
            pi = rng.dirichlet(np.ones(A), size=S)
            onehot = rng.random(S) < 0.5
            pi[onehot] = np.eye(A)[rng.integers(A, size=int(onehot.sum()))]
            Phat = game.formulation(bm.formulation).best_response(mdp, pi, D)
        else:
            lam = np.where(rng.random((S, A)) < 0.5, 0.0, rng.random((S, A)))
            if mdp.restricted:      # one mixing weight per block keeps the mixture in the class
                cb = mdp.model_blocks
                lam = np.array([[lam[cb.blocks[b].pairs[0]] if b >= 0 else 0.0 for b in row]
                                for row in cb.block_of])
            lam = lam[:, :, None]
            Phat = (1.0 - lam) * Peta + lam * D     # both floored in the class: so is the mixture
            _, pi = value_iteration(Phat, mdp.model_reward(Phat), mdp.gamma, tol=1e-10)
        out.append(starting_point(bm, pi, Phat))
    return out
