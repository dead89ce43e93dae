"""Model classes: the convex sets of transition models the model player may choose from.

Every class is a set of tied linear mixtures. The live pairs are split into blocks b; the pairs of
a block share one weight vector theta_b on the floored simplex, and each pair has its own atoms:

    Phat(.|s,a) = sum_k theta_b(k) Phi_k(.|s,a),   b = block(s,a),
    theta_b in Theta_b = {theta : sum_k theta(k) = 1, theta(k) >= eta}.

    tabular     one block per pair; atoms the unit rows e_t, t in K(s,a): every floored model on K
    aggregated  one block per (group, action) of a partition of the states; atoms e_t, t in the
                union of K(s,a) over the group: states of a group share their next-state
                distribution per action (over next STATES, see `Aggregated`)
    linear      one block per pair; atoms a user-given basis of distributions Phi_k(.|s,a):
                the linear mixture models  Phat = sum_k theta_k(s,a) Phi_k(.|s,a)

The class is convex (Phat is linear in theta, Theta_b a polytope) and the model's loss
l(Phat, nu) = sum nu(s,a) KL(P(.|s,a) || Phat(.|s,a)) is convex in theta, so the KL fit of a
class (`ClassBlocks.fit`) is a convex problem, and its KKT conditions are sufficient.
A class is a description that does not depend on the model support; `compile_class` turns it into
`ClassBlocks` for a given support K (the union of the atoms' supports is the class's support).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bilevel.tabular.fits import floored_fit

MODEL_CLASSES = ("tabular", "aggregated", "linear")
EM_TOL = 1e-13           # stop the EM fit when its Frank-Wolfe gap (a bound on the excess) is below
EM_MAX_ITER = 200_000


@dataclass(frozen=True, eq=False)
class ModelClass:
    """A model class as the user gave it (independent of the support K).

    kind       tabular | aggregated | linear
    partition  aggregated: groups of state indices (every state in exactly one group)
    basis      linear: (n, S, A, S), basis[k, s, a] = Phi_k(.|s,a), a distribution, or all zero
               where kernel k is not an atom of (s,a)
    names      linear: the basis kernels' names; aggregated: the groups' names
    declared_K the file's model support (S,A,S), which the tabular class of the same file uses
    """

    kind: str = "tabular"
    partition: tuple = ()
    basis: np.ndarray | None = None
    names: tuple = ()
    declared_K: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in MODEL_CLASSES:
            raise ValueError(f"unknown model class {self.kind!r} (choose from {', '.join(MODEL_CLASSES)})")

    @property
    def tabular(self) -> bool:
        return self.kind == "tabular"

    def as_defined(self) -> str:
        """What a file with this class defines, for errors: "no model class" or "a <kind> class"."""
        if self.tabular:
            return "no model class"
        return f"{'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind} class"

    def describe(self) -> str:
        """One line: the kind and its size."""
        if self.kind == "aggregated":
            return f"aggregated ({len(self.partition)} groups of states)"
        if self.kind == "linear":
            return f"linear ({len(self.names)} basis kernels)"
        return "tabular"

    def support(self, K: np.ndarray, terminal: np.ndarray) -> np.ndarray:
        """The class's support: the next states some model of the class may predict,
        K_c(s,a) = union of the atoms' supports (terminal rows keep their self-loop)."""
        if self.kind == "tabular":
            return np.array(K, dtype=bool)
        if self.kind == "aggregated":
            Kc = np.array(K, dtype=bool)
            for group in self.partition:
                live = [s for s in group if not terminal[s]]
                if live:
                    Kc[live] = np.any(np.asarray(K)[live], axis=0)
        else:
            Kc = np.any(self.basis > 0, axis=0)
        for t in np.flatnonzero(terminal):
            Kc[t] = False
            Kc[t, :, t] = True
        return Kc

    def to_json(self) -> dict:
        """A plain-JSON description (`from_json` inverts it)."""
        d = {"kind": self.kind}
        if self.kind == "aggregated":
            d["partition"] = [list(map(int, g)) for g in self.partition]
        if self.kind == "linear":
            d["basis"] = np.asarray(self.basis).tolist()
        if self.names:
            d["names"] = list(self.names)
        if self.declared_K is not None:
            d["declared_K"] = np.asarray(self.declared_K).tolist()
        return d

    @staticmethod
    def from_json(d: dict | None) -> "ModelClass":
        if d is None:            # a record written before model classes
            return TABULAR
        return ModelClass(kind=d["kind"], partition=tuple(tuple(g) for g in d.get("partition", ())),
                          basis=None if d.get("basis") is None else np.array(d["basis"], dtype=float),
                          names=tuple(d.get("names", ())),
                          declared_K=None if d.get("declared_K") is None
                          else np.array(d["declared_K"], dtype=bool))

    def fingerprint(self) -> list:
        """What defines the class's numbers, for cache keys (declared_K is in the MDP's K)."""
        d = self.to_json()
        d.pop("declared_K", None)
        d.pop("names", None)
        return [d]


TABULAR = ModelClass()


@dataclass(frozen=True, eq=False)
class Block:
    """The pairs sharing one theta, and their atoms. `targets` (n,) for unit atoms
    (Phi_k(.|s,a) = e_{targets[k]}), else `atoms` (n, len(pairs), S)."""

    pairs: tuple
    targets: np.ndarray | None = None
    atoms: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        return len(self.targets) if self.targets is not None else self.atoms.shape[0]

    def rows(self, S: int) -> np.ndarray:
        """Phi (n, len(pairs), S): the atoms of every pair of the block."""
        if self.atoms is not None:
            return self.atoms
        Phi = np.zeros((len(self.targets), len(self.pairs), S))
        Phi[np.arange(len(self.targets)), :, self.targets] = 1.0
        return Phi


@dataclass(frozen=True, eq=False)
class ClassBlocks:
    """A model class compiled for one MDP: its blocks, the block of each live pair
    (`block_of[s, a]`, -1 on terminal states), its support K and floor eta."""

    model_class: ModelClass
    blocks: tuple
    block_of: np.ndarray
    K: np.ndarray
    floor: float
    terminal: np.ndarray

    @property
    def S(self) -> int:
        return self.K.shape[0]

    @property
    def per_pair(self) -> bool:
        """Every block holds one pair (tabular, linear): a pair's fit ignores the others' data."""
        return all(len(b.pairs) == 1 for b in self.blocks)

    def lift(self, thetas) -> np.ndarray:
        """Phat(.|s,a) = sum_k theta_b(k) Phi_k(.|s,a) for every live pair; terminal rows the
        self-loop. `thetas`: one (n_atoms,) vector per block."""
        S, A = self.K.shape[:2]
        Phat = np.zeros((S, A, S))
        for t in np.flatnonzero(self.terminal):
            Phat[t, :, t] = 1.0
        for b, theta in zip(self.blocks, thetas):
            rows = np.tensordot(theta, b.rows(S), axes=(0, 0))
            for j, (s, a) in enumerate(b.pairs):
                Phat[s, a] = rows[j]
        return Phat

    def theta_of(self, Phat: np.ndarray) -> list:
        """The weights of a model of the class (least squares over the block's rows; exact for a
        member)."""
        out = []
        for b in self.blocks:
            if b.targets is not None:
                s, a = b.pairs[0]
                theta = np.array([np.mean([Phat[s2, a2, t] for (s2, a2) in b.pairs]) for t in b.targets])
            else:
                Phi = b.rows(self.S)                                    # (n, m, S)
                M = Phi.reshape(Phi.shape[0], -1).T
                y = np.concatenate([Phat[s, a] for (s, a) in b.pairs])
                theta = np.linalg.lstsq(M, y, rcond=None)[0]
            out.append(theta)
        return out

    def distance(self, Phat: np.ndarray) -> float:
        """max |Phat - lift(theta_of(Phat))| + max(0, eta - min theta): 0 for a floored member
        of the class."""
        thetas = self.theta_of(Phat)
        below = max((max(0.0, self.floor - float(th.min())) for th in thetas), default=0.0)
        return float(np.max(np.abs(Phat - self.lift(thetas)), initial=0.0)) + below

    def lower_bounds(self) -> np.ndarray:
        """min over the class of Phat(t|s,a) = eta sum_k Phi_k(t) + (1 - n eta) min_k Phi_k(t)
        (the floored simplex's vertices), (S,A,S); 0 off the support."""
        lo = np.zeros(self.K.shape)
        for b in self.blocks:
            Phi = b.rows(self.S)
            n = Phi.shape[0]
            vals = self.floor * Phi.sum(axis=0) + (1.0 - n * self.floor) * Phi.min(axis=0)
            for j, (s, a) in enumerate(b.pairs):
                lo[s, a] = vals[j]
        return lo

    def fit(self, P: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
        """The class's KL fit to data weighted by `weights` (S,A):
            theta_b = argmin_{theta in Theta_b} sum_{(s,a) in b} w(s,a) KL(P(.|s,a) || Phat_theta(.|s,a)).
        Unit atoms: the floored fit (`kl_fit`'s water-filling) of the weighted mixture
        pbar_b = sum w P / sum w, since sum w KL(P || q) = W CE(pbar, q) + const. Other atoms:
        EM on the floored simplex (`em_fit`). A block without weight is free: it gets the fit to
        equal weights on its pairs. Returns (Phat, thetas, weighted (n_blocks,) bool)."""
        thetas, weighted = [], np.zeros(len(self.blocks), dtype=bool)
        for i, b in enumerate(self.blocks):
            w = np.array([weights[s, a] for (s, a) in b.pairs], dtype=float)
            weighted[i] = bool(np.any(w > 0))
            if not weighted[i]:
                w = np.ones(len(b.pairs))
            rowsP = np.array([P[s, a] for (s, a) in b.pairs])           # (m, S)
            if b.targets is not None:
                pbar = (w[:, None] * rowsP).sum(axis=0) / w.sum()
                if np.any(pbar[np.setdiff1d(np.arange(self.S), b.targets)] > 0):
                    raise ValueError("model class support excludes a true transition")
                k = np.zeros(self.S, dtype=bool)
                k[b.targets] = True
                thetas.append(floored_fit(pbar, k, self.floor)[b.targets])
            else:
                thetas.append(em_fit(b.rows(self.S), rowsP, w, self.floor))
        return self.lift(thetas), thetas, weighted


def em_fit(Phi: np.ndarray, rowsP: np.ndarray, w: np.ndarray, eta: float, tol: float = EM_TOL,
           max_iter: int = EM_MAX_ITER) -> np.ndarray:
    """argmax_{theta in Theta} F(theta),  F = sum_j c_j log(a_j . theta),  Theta the floored simplex,
    over the observations j = (pair i, next state t) with c_j = w_i P(t|i) > 0 and
    a_j(k) = Phi_k(t|i). With theta = eta 1 + (1 - n eta) phi, phi on the simplex, F is a
    mixture likelihood in phi with one fixed component, and the EM (minorize-maximize) step
        phi(k) <- phi(k) g(k) / (phi . g),   g = grad_phi F,
    increases F and keeps phi on the simplex. It stops when the Frank-Wolfe gap
    max_k g(k) - phi . g (a bound on F* - F, F concave) is below `tol` times the total weight, or
    after `max_iter` steps (EM is slow where an atom's weight tends to the floor with a vanishing
    gradient gap: about 1/k there)."""
    n = Phi.shape[0]
    i, t = np.nonzero(w[:, None] * rowsP > 0)
    c = w[i] * rowsP[i, t]
    a = Phi[:, i, t].T                                     # (J, n)
    if np.any(a.sum(axis=1) <= 0):
        raise ValueError("no basis kernel explains an observed transition")
    scale = 1.0 - n * eta
    base = eta * a.sum(axis=1)
    if scale <= 0:
        return np.full(n, 1.0 / n)
    phi = np.full(n, 1.0 / n)
    total = c.sum()
    for _ in range(max_iter):
        f = base + scale * (a @ phi)
        g = scale * (a.T @ (c / f))
        inner = float(phi @ g)
        if float(g.max()) - inner <= tol * total:
            break
        phi = phi * g / inner
    return eta + scale * phi


def compile_class(model_class: ModelClass, K: np.ndarray, terminal: np.ndarray,
                  floor: float) -> ClassBlocks:
    """The blocks of `model_class` on support K (the class's support, `ModelClass.support`)."""
    S, A = K.shape[:2]
    block_of = -np.ones((S, A), dtype=int)
    blocks = []
    if model_class.kind == "aggregated":
        listed = [s for g in model_class.partition for s in g]
        if len(listed) != len(set(listed)) or not all(0 <= s < S for s in listed):
            raise ValueError("an aggregated partition lists a state twice or an unknown state")
        groups = tuple(model_class.partition) + tuple((s,) for s in range(S) if s not in set(listed))
    else:
        groups = tuple((s,) for s in range(S))
    for group in groups:
        live = [s for s in group if not terminal[s]]
        if not live:
            continue
        for a in range(A):
            if model_class.kind == "linear":
                s = live[0]
                ks = np.flatnonzero(np.any(model_class.basis[:, s, a] > 0, axis=-1))
                blocks.append(Block(pairs=((s, a),), atoms=model_class.basis[ks, s, a][:, None, :]))
            else:
                targets = np.flatnonzero(np.any(K[live, a], axis=0))
                blocks.append(Block(pairs=tuple((s, a) for s in live), targets=targets))
            for (s, a_) in blocks[-1].pairs:
                block_of[s, a_] = len(blocks) - 1
    return ClassBlocks(model_class, tuple(blocks), block_of, np.array(K, dtype=bool), float(floor),
                       np.array(terminal, dtype=bool))
