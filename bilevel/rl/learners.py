"""Sample-based learners on plain arrays: models Phat (S,A,S), policies pi (S,A), data as Rollouts.

Model learners (the data are true-env transitions, the only access to P):
    transition_weights  w(s,a,s') = (1-g) E[sum_t g^t 1{s_t=s, a_t=a, s_{t+1}=s'}], an estimate of
                        mu(s,a) P(s'|s,a) (so sum_{s'} w = mu_hat(s,a), the occupancy)
    count_model         Dirichlet posterior mean with pseudo-count c spread uniformly over K(s,a):
                        Phat = eta + (1 - eta|K|) (N + c/|K|) / (n + c)  on K, 0 off K
    softmax_model       Phat = eta + (1 - eta|K|) softmax_K(theta), trained by Adam steps on the
                        weighted negative log-likelihood  -sum w log Phat  (= l(Phat, mu_hat) + const)
Policy learners (rollouts in the model, never in the true MDP):
    mc_q_values         Q(s,a) from exploring-start rollouts of pi in the model (discounted, truncated)
    npg_step            softmax NPG: theta(s,a) += lr * (Q(s,a) - V(s)),  V = sum_a pi Q  (clipped)
Leader gradients:
    return_gradient     dJ(pi, Phat)/dPhat(s'|s,a) = d(s) pi(a|s) [R(s,a,s') + g V^pi(s')],
                        d = (I - g P_pi^T)^{-1} rho0, pi held fixed
    soft_best_response  entropy-smoothed best response pi_tau = softmax(Q_tau / tau) in Phat
"""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

from bilevel.mdp.model import TabularMDP
from bilevel.tabular.evaluation import expected_reward, policy_evaluation, transition_matrix
from bilevel.tabular.occupancy import state_visits
from bilevel.rl.env import BatchStepper, Rollouts

LOGIT_CLIP = 20.0


# --------------------------------------------------------------------------- data -> weights

def transition_counts(ro: Rollouts, S: int, A: int) -> np.ndarray:
    """N[s,a,s'] = number of sampled transitions (s,a,s')."""
    N = np.zeros((S, A, S))
    m = ro.alive
    np.add.at(N, (ro.s[m], ro.a[m], ro.s2[m]), 1.0)
    return N


def transition_weights(ro: Rollouts, S: int, A: int, gamma: float,
                       horizon: int | None = None) -> np.ndarray:
    """Estimate of mu(s,a) P(s'|s,a): per episode the discounted visitation (1-g) g^t of each
    transition; a terminated episode leaves its remaining mass g^T on the terminal state (zero
    loss there, so it is dropped); a truncated episode is renormalized to total mass 1 (its
    unobserved tail is assumed to look like its observed part). Averaged over episodes.
    With `horizon` T (`occupancy: average`): the estimate of mu_T(s,a) P(s'|s,a), weight 1/T for
    each of the episode's first T steps (an episode that ends earlier leaves the rest on the
    terminal state, dropped; none is renormalized: T-step episodes are the data)."""
    n, T = ro.alive.shape
    if horizon is not None:
        w_t = (np.arange(T)[None, :] < horizon) * ro.alive / float(horizon)
        scale = np.ones(n)
    else:
        w_t = (1.0 - gamma) * gamma ** np.arange(T)[None, :] * ro.alive
        observed = w_t.sum(axis=1)
        scale = np.where(ro.terminated | (observed <= 0), 1.0, 1.0 / np.maximum(observed, 1e-300))
    w_t = w_t * scale[:, None] / n
    W = np.zeros((S, A, S))
    m = ro.alive
    np.add.at(W, (ro.s[m], ro.a[m], ro.s2[m]), w_t[m])
    return W


def occupancy_estimate(ro: Rollouts, S: int, A: int, gamma: float,
                       horizon: int | None = None) -> np.ndarray:
    """mu_hat(s,a) = sum_{s'} transition_weights (non-terminal states only)."""
    return transition_weights(ro, S, A, gamma, horizon).sum(axis=-1)


# --------------------------------------------------------------------------- model learners

def _floored(q: np.ndarray, K: np.ndarray, floor: float) -> np.ndarray:
    """eta + (1 - eta |K|) q on K, 0 off K (q a distribution on K)."""
    nK = K.sum(axis=-1, keepdims=True)
    return np.where(K, floor + (1.0 - floor * nK) * q, 0.0)


def count_model(N: np.ndarray, K: np.ndarray, floor: float, prior: float = 1.0) -> np.ndarray:
    """Dirichlet posterior mean with `prior` pseudo-counts spread uniformly over K(s,a), floored:
    Phat = eta + (1 - eta|K|) (N + prior/|K|) / (n + prior). Unvisited pairs get uniform on K."""
    K = np.asarray(K, bool)
    nK = K.sum(axis=-1, keepdims=True)
    post = np.where(K, N + prior / nK, 0.0)
    return _floored(post / post.sum(axis=-1, keepdims=True), K, floor)


def softmax_model(theta: np.ndarray, K: np.ndarray, floor: float) -> np.ndarray:
    """Phat = eta + (1 - eta|K|) softmax_K(theta) (logits off K are ignored)."""
    return _floored(softmax(np.where(K, theta, -np.inf), axis=-1), K, floor)


def nll_gradient_model(W: np.ndarray, Phat: np.ndarray) -> np.ndarray:
    """d/dPhat of the weighted NLL  -sum_{s,a,s'} W log Phat  =  -W / Phat (0 where W = 0)."""
    return -np.where(W > 0, W / np.where(Phat > 0, Phat, 1.0), 0.0)


def logit_gradient(g: np.ndarray, theta: np.ndarray, K: np.ndarray, floor: float) -> np.ndarray:
    """Chain rule through Phat = eta + c softmax_K(theta), c = 1 - eta|K|:
    dL/dtheta = c q (g - sum_{s'} q g)."""
    q = softmax(np.where(K, theta, -np.inf), axis=-1)
    c = 1.0 - floor * K.sum(axis=-1, keepdims=True)
    return np.where(K, c * q * (g - (q * g).sum(axis=-1, keepdims=True)), 0.0)


class Adam:
    """Adam on one array (Kingma & Ba): m, v moment estimates, bias-corrected step."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """x - lr mhat / (sqrt(vhat) + eps) (a descent step)."""
        if self.m is None:
            self.m, self.v = np.zeros_like(grad), np.zeros_like(grad)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad ** 2
        mhat = self.m / (1 - self.b1 ** self.t)
        vhat = self.v / (1 - self.b2 ** self.t)
        return np.clip(x - self.lr * mhat / (np.sqrt(vhat) + self.eps), -LOGIT_CLIP, LOGIT_CLIP)


# --------------------------------------------------------------------------- policy learners

def softmax_policy(theta: np.ndarray) -> np.ndarray:
    """pi(a|s) = exp(theta(s,a)) / sum_b exp(theta(s,b))."""
    return softmax(theta, axis=-1)


def mc_q_values(model: BatchStepper, pi: np.ndarray, n: int, horizon: int, gamma: float) -> np.ndarray:
    """Q(s,a) ~ mean over n exploring-start rollouts (s_0=s, a_0=a, then pi) in the model of
    sum_{t<horizon} g^t r_t. Terminal rows are 0."""
    S, A = pi.shape
    live = np.flatnonzero(~model.terminal)
    s0 = np.repeat(live, A * n)
    a0 = np.tile(np.repeat(np.arange(A), n), live.size)
    ro = model.rollout(pi, len(s0), s0=s0, a0=a0, horizon=horizon)
    G = (ro.r * ro.alive * gamma ** np.arange(ro.r.shape[1])[None, :]).sum(axis=1)
    Q = np.zeros((S, A))
    Q[live] = G.reshape(live.size, A, n).mean(axis=-1)
    return Q


def npg_step(theta: np.ndarray, Q: np.ndarray, lr: float, max_step: float = 5.0) -> np.ndarray:
    """Softmax natural policy gradient (Kakade; Agarwal et al. 2021):
    theta(s,a) += lr * A(s,a), A = Q - sum_a pi Q, each change clipped to +-max_step, logits
    re-centred per state and clipped to +-LOGIT_CLIP (min probability ~ e^-40)."""
    pi = softmax_policy(theta)
    adv = Q - (pi * Q).sum(axis=1, keepdims=True)
    th = theta + np.clip(lr * adv, -max_step, max_step)
    th -= th.max(axis=1, keepdims=True)
    return np.clip(th, -LOGIT_CLIP, 0.0)


# --------------------------------------------------------------------------- leader gradients

def return_gradient(Phat: np.ndarray, R: np.ndarray, rho0: np.ndarray, gamma: float,
                    pi: np.ndarray) -> np.ndarray:
    """dJ(pi, Phat)/dPhat(s'|s,a) = d(s) pi(a|s) [R(s,a,s') + g V(s')], with pi fixed,
    V = V^pi in Phat (rewards rhat = sum Phat R) and d = (I - g P_pi^T)^{-1} rho0."""
    r_hat = expected_reward(Phat, R)
    V = policy_evaluation(Phat, r_hat, gamma, pi)
    S = Phat.shape[0]
    d = np.linalg.solve(np.eye(S) - gamma * transition_matrix(Phat, pi).T, rho0)
    return d[:, None, None] * pi[:, :, None] * (R + gamma * V[None, None, :])


def policy_gradient(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    """c(s,a) = dJ(pi, M)/dpi(a|s), pi's rows taken as free: d(s) Q^pi(s,a) with d = (I - g
    P_pi^T)^{-1} rho0 (the policy gradient theorem); under `occupancy: average`, J the T-step
    return: sum_{t<T} d_t(s) Q_{T-t}(s,a), d_t = Pr(s_t = .), Q_k = r + P V_{k-1}, V_k = sum_a pi
    Q_k, V_0 = 0."""
    P, r, g = mdp.P, mdp.r, mdp.gamma
    if not mdp.averaged:
        V = policy_evaluation(P, r, g, pi)
        d = np.linalg.solve(np.eye(P.shape[0]) - g * transition_matrix(P, pi).T, mdp.rho0)
        return d[:, None] * (r + g * P @ V)
    T = mdp.horizon
    visits = state_visits(P, mdp.rho0, pi, T)
    c, V = np.zeros_like(r), np.zeros(P.shape[0])
    for k in range(1, T + 1):            # k steps to go: the visits at t = T - k
        Q = r + P @ V
        c += visits[T - k][:, None] * Q
        V = (pi * Q).sum(axis=1)
    return c


def true_return_gradient(mdp: TabularMDP, Phat: np.ndarray, tau: float) -> np.ndarray:
    """d/dPhat of J(pi_tau(Phat), M), pi_tau = soft_best_response(Phat) (the model reaches the
    true return only through the follower). At the soft fixed point Q = rhat + g Phat V,
    V(s) = tau logsumexp(Q(s,.)/tau), pi = softmax(Q/tau): dpi(s,a)/dQ(s,b) = pi(s,a)(1{a=b} -
    pi(s,b))/tau, dV(s)/dQ(s,b) = pi(s,b), so with u = dJ/dQ (from `policy_gradient`) and the
    adjoint lam = (I - g M^T)^{-1} u, M[(s,a),(s',b)] = Phat(s'|s,a) pi(s',b):
        dJ/dPhat(s'|s,a) = lam(s,a) (R(s,a,s') + g V(s'))."""
    S, A, _ = Phat.shape
    g = mdp.gamma
    pi = soft_best_response(Phat, mdp.R, g, tau, iters=500)
    V = soft_evaluation(Phat, expected_reward(Phat, mdp.R), g, tau, pi)
    c = policy_gradient(mdp, pi)
    u = pi * (c - (pi * c).sum(axis=1, keepdims=True)) / tau
    M = (Phat[:, :, :, None] * pi[None, None, :, :]).reshape(S * A, S * A)
    lam = np.linalg.solve(np.eye(S * A) - g * M.T, u.ravel()).reshape(S, A)
    return lam[:, :, None] * (mdp.R + g * V[None, None, :])


def soft_evaluation(Phat: np.ndarray, r_hat: np.ndarray, gamma: float, tau: float,
                    pi: np.ndarray) -> np.ndarray:
    """V_tau^pi = (I - g Phat_pi)^{-1} (sum_a pi r_hat + tau H(pi(.|s))): pi's value with its
    entropy bonus (at the soft fixed point, V_tau(s) = tau logsumexp(Q(s,.)/tau))."""
    ent = -(pi * np.log(np.maximum(pi, 1e-300))).sum(axis=1)
    return np.linalg.solve(np.eye(Phat.shape[0]) - gamma * transition_matrix(Phat, pi),
                           (pi * r_hat).sum(axis=1) + tau * ent)


def soft_best_response(Phat: np.ndarray, R: np.ndarray, gamma: float, tau: float,
                       iters: int = 50) -> np.ndarray:
    """Entropy-regularized best response in Phat by soft policy iteration:
    Q = rhat + g Phat V_tau,  V_tau(s) = tau logsumexp(Q(s,.)/tau),  pi = softmax(Q/tau)."""
    S, A, _ = Phat.shape
    r_hat = expected_reward(Phat, R)
    pi = np.full((S, A), 1.0 / A)
    for _ in range(iters):
        V = soft_evaluation(Phat, r_hat, gamma, tau, pi)
        Q = r_hat + gamma * Phat @ V
        new = softmax(Q / tau, axis=1)
        if np.max(np.abs(new - pi)) < 1e-10:
            return new
        pi = new
    return pi
