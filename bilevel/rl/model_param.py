"""The trainers' model parametrization: logits z -> a model Phat of the MDP's model class.

    tabular   z (S,A,S):  Phat(.|s,a) = eta + (1 - eta |K|) softmax_K(z(s,a,.))   (`softmax_model`)
    a class   z (B,n):    theta_b = eta + (1 - n_b eta) softmax(z_b) over the n_b atoms of block b,
                          Phat(.|s,a) = sum_k theta_b(k) Phi_k(.|s,a), b = block(s,a)
                          (`ClassBlocks.lift`; terminal rows keep their self-loop)

`model_param(mdp)` picks the one of the MDP's class. Both map every z to a floored model of the
class, and z = 0 to its centre (uniform on K; the equal mixture of a block's atoms). A gradient
G = dF/dPhat comes back to the logits by the chain rule (`pullback`):

    dF/dtheta_b(k) = sum_{(s,a) in b} sum_t G(s,a,t) Phi_k(t|s,a)          (Lift^T G)
    dF/dz_b(k)     = c_b q_b(k) (dF/dtheta_b(k) - q_b . dF/dtheta_b),  q_b = softmax(z_b), c_b = 1 - n_b eta.

`count_fit(N, prior)` is the sample best response of the model follower to transition counts N,
with `prior` pseudo-counts spread uniformly over each pair's support (the Dirichlet prior):
tabular and unit atoms (an aggregation's blocks) take the floored posterior mean of the block's
pooled counts, theta_b = eta + (1 - n_b eta) (sum_{(s,a) in b} N(s,a,.) + prior/n_b) / (n + prior);
general atoms (a linear class) take the class's KL fit (`em_fit`) of the pseudo-counts, to a
Frank-Wolfe gap of COUNT_FIT_TOL or COUNT_FIT_ITER EM steps (a sample estimate needs no more;
the exact fit would take EM up to 2e5 steps where an atom's weight tends to its floor).
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.special import softmax

from bilevel.mdp.model import TabularMDP
from bilevel.mdp.model_class import ClassBlocks, em_fit
from bilevel.rl import learners as L

COUNT_FIT_TOL = 1e-10
COUNT_FIT_ITER = 2_000


class TabularLogits:
    """Per-pair logits over K (the trainers' model before model classes)."""

    def __init__(self, K: np.ndarray, floor: float):
        self.K, self.floor = np.asarray(K, bool), float(floor)
        self.shape = self.K.shape

    def init(self) -> np.ndarray:
        return np.zeros(self.shape)

    def model(self, z: np.ndarray) -> np.ndarray:
        return L.softmax_model(z, self.K, self.floor)

    def pullback(self, G: np.ndarray, z: np.ndarray) -> np.ndarray:
        return L.logit_gradient(G, z, self.K, self.floor)

    def count_fit(self, N: np.ndarray, prior: float) -> np.ndarray:
        return L.count_model(N, self.K, self.floor, prior)

    def row_features(self) -> np.ndarray:
        """One row of z per pair, described by [onehot(s), onehot(a)]."""
        S, A = self.shape[:2]
        return np.concatenate([np.repeat(np.eye(S), A, axis=0), np.tile(np.eye(A), (S, 1))], axis=1)

    def torch_model(self, z):
        """`model` on a torch tensor of logits (S,A,S), differentiable."""
        import torch
        K = torch.as_tensor(self.K)
        q = torch.softmax(z.masked_fill(~K, -torch.inf), dim=-1)
        nK = K.sum(-1, keepdim=True)
        return torch.where(K, self.floor + (1 - self.floor * nK) * q, torch.zeros_like(q))


class ClassLogits:
    """Per-block logits over the block's atoms, padded to (B, n_max) with `mask`."""

    def __init__(self, blocks: ClassBlocks):
        self.blocks, self.floor = blocks, blocks.floor
        S, A = blocks.K.shape[:2]
        n = np.array([b.n_atoms for b in blocks.blocks])
        self.shape = (len(n), int(n.max(initial=1)))
        self.mask = np.arange(self.shape[1])[None, :] < n[:, None]
        self.scale = 1.0 - n * self.floor                        # c_b
        rows, cols, vals = [], [], []
        for i, b in enumerate(blocks.blocks):
            Phi = b.rows(S)                                      # (n_b, m, S)
            k, j, t = np.nonzero(Phi)
            s, a = np.array(b.pairs)[j].T
            rows.append((s * A + a) * S + t)
            cols.append(i * self.shape[1] + k)
            vals.append(Phi[k, j, t])
        self.lift = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                      shape=(S * A * S, self.shape[0] * self.shape[1]))
        self.base = blocks.lift([np.zeros(b.n_atoms) for b in blocks.blocks])   # terminal self-loops
        self.S, self.A = S, A
        self._torch_lift = None

    def init(self) -> np.ndarray:
        return np.zeros(self.shape)

    def theta(self, z: np.ndarray) -> np.ndarray:
        """theta_b = eta + c_b softmax(z_b) on the block's atoms, 0 on the padding."""
        q = softmax(np.where(self.mask, z, -np.inf), axis=-1)
        return np.where(self.mask, self.floor + self.scale[:, None] * q, 0.0)

    def model(self, z: np.ndarray) -> np.ndarray:
        return self.base + (self.lift @ self.theta(z).ravel()).reshape(self.S, self.A, self.S)

    def pullback(self, G: np.ndarray, z: np.ndarray) -> np.ndarray:
        g = (self.lift.T @ np.asarray(G).ravel()).reshape(self.shape)
        q = softmax(np.where(self.mask, z, -np.inf), axis=-1)
        return np.where(self.mask, self.scale[:, None] * q * (g - (q * g).sum(axis=-1, keepdims=True)), 0.0)

    def count_fit(self, N: np.ndarray, prior: float) -> np.ndarray:
        thetas = []
        for b in self.blocks.blocks:
            counts = np.array([N[s, a] for (s, a) in b.pairs])                  # (m, S)
            if b.targets is not None:
                pooled = counts.sum(axis=0)[b.targets] + prior / len(b.targets)
                thetas.append(self.floor + (1.0 - len(b.targets) * self.floor) * pooled / pooled.sum())
            else:
                K = np.array([self.blocks.K[s, a] for (s, a) in b.pairs])
                pseudo = np.where(K, counts + prior / K.sum(axis=-1, keepdims=True), 0.0)
                w = pseudo.sum(axis=-1)
                thetas.append(em_fit(b.rows(self.S), pseudo / w[:, None], w, self.floor,
                                     tol=COUNT_FIT_TOL, max_iter=COUNT_FIT_ITER))
        return self.blocks.lift(thetas)

    def row_features(self) -> np.ndarray:
        """One row of z per block, described by onehot(block)."""
        return np.eye(self.shape[0])

    def torch_model(self, z):
        """`model` on a torch tensor of logits (B, n_max), differentiable."""
        import torch
        mask = torch.as_tensor(self.mask)
        q = torch.softmax(z.masked_fill(~mask, -torch.inf), dim=-1)
        theta = torch.where(mask, self.floor + torch.as_tensor(self.scale)[:, None] * q, torch.zeros_like(q))
        if self._torch_lift is None:
            coo = self.lift.tocoo()
            self._torch_lift = (torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, coo.shape,
                                                        check_invariants=True), torch.as_tensor(self.base))
        lift, base = self._torch_lift
        return base + torch.sparse.mm(lift, theta.reshape(-1, 1)).reshape(self.S, self.A, self.S)


def model_param(mdp: TabularMDP):
    """The parametrization of the MDP's model class (tabular: `TabularLogits` on K)."""
    if mdp.restricted:
        return ClassLogits(mdp.model_blocks)
    return TabularLogits(mdp.K, mdp.floor)
