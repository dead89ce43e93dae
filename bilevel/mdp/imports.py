"""MDPs from other toolkits: Gymnasium toy_text environments, transition/reward arrays
(mushroom-rl, emdp, rlberry, pymdptoolbox) and .npz files of such arrays.

Each importer writes the explicit YAML document (`*_document`) and builds the MDP with
`mdp_from_dict`, so bad input fails exactly as a YAML file does: one MDPError line
`SOURCE: FIELD: problem`, e.g. `arrays: transitions.s2.a1: probabilities of state s2, action a1
sum to 0.9, expected 1 (tolerance 1e-09)`. States are named s0, s1, ...; actions a0, a1, ...
unless the source names them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bilevel.mdp.io import mdp_from_dict
from bilevel.mdp.model import MDPError, TabularMDP

LAYOUTS = ("SAS", "ASS")
NPZ_ARRAYS = ("P", "R", "rho0", "terminal")
# the meaning of the action indices of the Gymnasium toy_text environments (their docstrings)
_ACTION_NAMES = {
    "FrozenLakeEnv": ("left", "down", "right", "up"),
    "CliffWalkingEnv": ("up", "right", "down", "left"),
    "TaxiEnv": ("south", "north", "east", "west", "pickup", "dropoff"),
}


# ---------------------------------------------------------------- the shared document

def _document(name, gamma, horizon, states, actions, P, R, rho0, terminal, support,
              r_sa=None) -> dict:
    """The explicit YAML document of arrays P[s,a,s'], R[s,a,s'] (or one reward r_sa[s,a] per
    pair), rho0[s], terminal[s]. Every nonzero entry is written, negative or non-finite ones too,
    so that mdp_from_dict reports them; rows of terminal states are left out (absorbing)."""
    S, A = len(states), len(actions)
    trans, rew = {}, {}
    for s in range(S):
        if terminal[s]:
            continue
        trans[states[s]], rew[states[s]] = {}, {}
        for a in range(A):
            trans[states[s]][actions[a]] = {states[k]: float(P[s, a, k])
                                            for k in np.flatnonzero(P[s, a] != 0)}
            if r_sa is not None:
                if r_sa[s, a] != 0:
                    rew[states[s]][actions[a]] = float(r_sa[s, a])
            else:
                nz = np.flatnonzero(R[s, a] != 0)
                if len(nz):
                    rew[states[s]][actions[a]] = {states[k]: float(R[s, a, k]) for k in nz}
    nz0 = np.flatnonzero(rho0 != 0)
    initial = (states[nz0[0]] if len(nz0) == 1 and rho0[nz0[0]] == 1.0
               else {states[i]: float(rho0[i]) for i in nz0})
    doc = {"name": name, "gamma": gamma}
    if horizon is not None:
        doc["horizon"] = horizon
    doc.update({"states": list(states), "actions": list(actions), "initial": initial,
                "terminal": [states[i] for i in np.flatnonzero(terminal)],
                "transitions": trans, "rewards": {s: r for s, r in rew.items() if r},
                "model_support": support})
    return doc


def _names(given, n: int, prefix: str, source: str, field_: str) -> list[str]:
    if given is None:
        return [f"{prefix}{i}" for i in range(n)]
    names = [str(x) for x in given]
    if len(names) != n:
        raise MDPError(source, field_, f"{len(names)} names given for {n} {field_}")
    return names


# ---------------------------------------------------------------- Gymnasium

def from_gymnasium(env_or_id, gamma: float, horizon: int | None = None, support: str = "true",
                   **make_kwargs) -> TabularMDP:
    """The MDP of a Gymnasium environment with tabular dynamics (see gymnasium_document)."""
    doc, source = gymnasium_document(env_or_id, gamma, horizon, support, **make_kwargs)
    return mdp_from_dict(doc, source=source)


def gymnasium_document(env_or_id, gamma: float, horizon: int | None = None,
                       support: str = "true", **make_kwargs) -> tuple[dict, str]:
    """(YAML document, source) of a Gymnasium environment exposing its dynamics as
    `env.unwrapped.P[s][a] = [(p_i, s'_i, r_i, terminated_i), ...]` (the toy_text ones:
    FrozenLake, CliffWalking, Taxi; `env_or_id` is an environment or an id for `gymnasium.make`
    with `make_kwargs`). Outcomes with the same next state are merged:

        P(s'|s,a)   = sum_{i: s'_i = s'} p_i
        R(s,a,s')   = sum_{i: s'_i = s'} p_i r_i / P(s'|s,a)

    which keeps the expected reward r(s,a) = sum_i p_i r_i, hence every value. A state entered
    with terminated=True is terminal (absorbing, zero reward after entry); entering it with
    terminated=False from a state the start can reach is an error (the episode would go on).
    rho0 = `initial_state_distrib` (or `isd`); horizon = the spec's `max_episode_steps` unless
    given."""
    env, env_id = _gym_env(env_or_id, make_kwargs)
    source = f"gymnasium:{env_id}"
    u = env.unwrapped
    table = getattr(u, "P", None)
    if table is None:
        raise MDPError(source, "P", "the environment exposes no tabular dynamics env.unwrapped.P "
                                    "(Gymnasium's toy_text environments do, except Blackjack)")
    if getattr(u, "fickle_passenger", False):
        raise MDPError(source, "fickle_passenger", "the passenger's changes of mind happen in "
                                                   "step(), outside env.P: not importable")
    S, A = _discrete(env.observation_space, source, "observation_space"), \
        _discrete(env.action_space, source, "action_space")
    P, R, done_in, live_in = _gym_arrays(table, S, A, source)
    rho0 = getattr(u, "initial_state_distrib", getattr(u, "isd", None))
    if rho0 is None:
        raise MDPError(source, "initial_state_distrib", "missing (nor isd)")
    rho0 = np.asarray(rho0, dtype=float).reshape(-1)
    if rho0.shape != (S,):
        raise MDPError(source, "initial_state_distrib", f"must have {S} entries, got {rho0.size}")
    terminal = done_in
    _check_terminal_entries(P, rho0, terminal, live_in, source)
    if horizon is None and env.spec is not None:
        horizon = env.spec.max_episode_steps
    meanings = getattr(u, "get_action_meanings", None)
    actions = (list(meanings()) if callable(meanings)
               else _ACTION_NAMES.get(type(u).__name__))
    if actions is None or len(actions) != A:
        actions = None
    doc = _document(env_id, gamma, horizon, _names(None, S, "s", source, "states"),
                    _names(actions, A, "a", source, "actions"), P, R, rho0, terminal, support)
    return doc, source


def _gym_env(env_or_id, make_kwargs):
    if not isinstance(env_or_id, str):
        spec = getattr(env_or_id, "spec", None)
        return env_or_id, (spec.id if spec is not None else type(env_or_id.unwrapped).__name__)
    import gymnasium
    try:
        return gymnasium.make(env_or_id, **make_kwargs), env_or_id
    except (gymnasium.error.Error, TypeError, ValueError) as e:
        problem = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise MDPError(f"gymnasium:{env_or_id}", "", f"cannot make the environment: {problem}") \
            from None


def _discrete(space, source: str, field_: str) -> int:
    n = getattr(space, "n", None)
    if n is None or getattr(space, "start", 0) != 0:
        raise MDPError(source, field_, f"must be Discrete(n) starting at 0, got {space}")
    return int(n)


def _gym_arrays(table, S: int, A: int, source: str):
    """P, R (merged as in gymnasium_document), and which states are entered with
    terminated=True (done_in[s']) or with terminated=False (live_in[s,a,s'])."""
    P, PR = np.zeros((S, A, S)), np.zeros((S, A, S))
    done_in = np.zeros(S, dtype=bool)
    live_in = np.zeros((S, A, S), dtype=bool)
    for s in range(S):
        for a in range(A):
            fld = f"P[{s}][{a}]"
            try:
                outcomes = table[s][a]
            except (KeyError, IndexError, TypeError):
                raise MDPError(source, fld, "missing") from None
            for i, o in enumerate(outcomes):
                try:
                    p, s2, r, done = o
                    p, s2, r = float(p), int(s2), float(r)
                except (TypeError, ValueError):
                    raise MDPError(source, f"{fld}[{i}]", "must be (probability, next state, "
                                   f"reward, terminated), got {o!r}") from None
                if not 0 <= s2 < S:
                    raise MDPError(source, f"{fld}[{i}]", f"next state {s2} outside 0..{S - 1}")
                P[s, a, s2] += p
                PR[s, a, s2] += p * r
                if done:
                    done_in[s2] = True
                elif p > 0:
                    live_in[s, a, s2] = True
    R = np.divide(PR, P, out=np.zeros_like(PR), where=P > 0)
    return P, R, done_in, live_in


def _check_terminal_entries(P, rho0, terminal, live_in, source):
    """A terminal state must not be a start state nor be entered with terminated=False from a
    state the start reaches (through live states): there the environment would go on."""
    starts = np.flatnonzero((rho0 > 0) & terminal)
    if len(starts):
        raise MDPError(source, "initial_state_distrib", f"starts in state {starts[0]}, which other "
                                                         "transitions enter with terminated=True")
    reach = rho0 > 0
    stack = list(np.flatnonzero(reach))
    while stack:
        s = stack.pop()
        if terminal[s]:
            continue
        for t in np.flatnonzero((P[s] > 0).any(axis=0)):
            if not reach[t]:
                reach[t] = True
                stack.append(t)
    bad = np.argwhere(live_in & terminal[None, None, :] & (reach & ~terminal)[:, None, None])
    if len(bad):
        s, a, t = bad[0]
        raise MDPError(source, f"P[{s}][{a}]", f"enters state {t} with terminated=False, which "
                                               "other transitions enter with terminated=True")


# ---------------------------------------------------------------- arrays

def from_arrays(P, R, rho0=None, *, gamma: float, layout: str = "SAS", terminal=None,
                horizon: int | None = None, support: str = "true", states=None, actions=None,
                name: str = "arrays", source: str | None = None) -> TabularMDP:
    """The MDP of transition and reward arrays (see arrays_document for the conventions)."""
    doc = arrays_document(P, R, rho0, gamma=gamma, layout=layout, terminal=terminal,
                          horizon=horizon, support=support, states=states, actions=actions,
                          name=name, source=source)
    return mdp_from_dict(doc, source=source or name)


def from_pymdptoolbox(P, R, gamma: float, **kwargs) -> TabularMDP:
    """pymdptoolbox's (P, R): P[a][s][s'] of shape (A,S,S) (or a list of A (S,S) matrices,
    sparse ones too), R of shape (S,A), (A,S,S) or (S,). It has no start distribution: rho0 is
    uniform unless given. That is from_arrays(..., layout="ASS")."""
    return from_arrays(P, R, gamma=gamma, layout="ASS", **kwargs)


def arrays_document(P, R, rho0=None, *, gamma: float, layout: str = "SAS", terminal=None,
                    horizon: int | None = None, support: str = "true", states=None, actions=None,
                    name: str = "arrays", source: str | None = None) -> dict:
    """The YAML document of arrays in either toolkit layout:

    layout "SAS" (mushroom-rl FiniteMDP(p, r, mu), emdp, rlberry FiniteMDP):
        P[s, a, s'] = P(s'|s,a), shape (S,A,S); R[s, a, s'] of shape (S,A,S)
    layout "ASS" (pymdptoolbox):
        P[a, s, s'] = P(s'|s,a), shape (A,S,S); R[a, s, s'] of shape (A,S,S)
    in both layouts R may also be r(s,a) of shape (S,A) (emdp, rlberry, pymdptoolbox), or a
    reward per state of shape (S,), r(s,a) = R[s] (pymdptoolbox's vector form).
    rho0[s] (mushroom-rl's `mu`): default uniform over all states, as mushroom-rl starts when
    `mu` is None. terminal: a bool mask (S,) or a list of state indices; a terminal state is
    absorbing with zero reward after entry (its rows of P and R are ignored), the mushroom-rl
    `absorbing` flag. Rows of P must sum to 1 (tolerance 1e-9)."""
    source = source or name
    if layout not in LAYOUTS:
        raise MDPError(source, "layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    P = _dense(P, source, "P")
    if P.ndim != 3 or (layout == "SAS" and P.shape[0] != P.shape[2]) \
            or (layout == "ASS" and P.shape[1] != P.shape[2]):
        want = "(S, A, S)" if layout == "SAS" else "(A, S, S)"
        raise MDPError(source, "P", f"must have shape {want} for layout {layout}, got {P.shape}")
    if layout == "ASS":
        P = P.transpose(1, 0, 2)
    S, A, _ = P.shape
    R = _dense(R, source, "R")
    r_sa = None
    if R.shape == (S,):
        r_sa = np.repeat(R[:, None], A, axis=1)
    elif R.shape == (S, A):
        r_sa = R
    elif layout == "SAS" and R.shape == (S, A, S):
        pass
    elif layout == "ASS" and R.shape == (A, S, S):
        R = R.transpose(1, 0, 2)
    else:
        want = "(S, A, S)" if layout == "SAS" else "(A, S, S)"
        raise MDPError(source, "R", f"must have shape {want}, (S, A) = {(S, A)} or (S,) = ({S},) "
                                    f"for layout {layout}, got {R.shape}")
    rho0 = np.full(S, 1.0 / S) if rho0 is None else _dense(rho0, source, "rho0").reshape(-1)
    if rho0.shape != (S,):
        raise MDPError(source, "rho0", f"must have {S} entries, got {rho0.size}")
    term = _terminal_mask(terminal, S, source)
    return _document(name, gamma, horizon, _names(states, S, "s", source, "states"),
                     _names(actions, A, "a", source, "actions"), P, R, rho0, term, support, r_sa)


def _dense(x, source: str, field_: str) -> np.ndarray:
    """A float array from an array, a list of (possibly scipy-sparse) matrices, or a matrix."""
    try:
        if isinstance(x, (list, tuple)) and any(hasattr(m, "toarray") for m in x):
            x = [m.toarray() if hasattr(m, "toarray") else m for m in x]
        elif hasattr(x, "toarray"):
            x = x.toarray()
        return np.array(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise MDPError(source, field_, f"not a numeric array ({e.__class__.__name__})") from None


def _terminal_mask(terminal, S: int, source: str) -> np.ndarray:
    if terminal is None:
        return np.zeros(S, dtype=bool)
    t = np.asarray(terminal)
    if t.dtype == bool:
        if t.shape != (S,):
            raise MDPError(source, "terminal", f"a mask must have {S} entries, got {t.size}")
        return t.copy()
    mask = np.zeros(S, dtype=bool)
    for i in np.atleast_1d(t).tolist():
        if isinstance(i, float) and i.is_integer():
            i = int(i)
        if not isinstance(i, int) or not 0 <= i < S:
            raise MDPError(source, "terminal", f"state index {i!r} outside 0..{S - 1}")
        mask[i] = True
    return mask


def from_npz(path: str | Path, gamma: float, layout: str = "SAS", horizon: int | None = None,
             support: str = "true", name: str | None = None) -> TabularMDP:
    """The MDP of a .npz file holding arrays P and R, optionally rho0 and terminal (from_arrays
    conventions, `layout` SAS or ASS)."""
    doc, source = npz_document(path, gamma, layout, horizon, support, name)
    return mdp_from_dict(doc, source=source)


def npz_document(path: str | Path, gamma: float, layout: str = "SAS", horizon: int | None = None,
                 support: str = "true", name: str | None = None) -> tuple[dict, str]:
    """(YAML document, source) of a .npz file of arrays (see from_npz)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise MDPError(source, "", "file does not exist" if not path.exists()
                       else "not a regular file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        raise MDPError(source, "", f"not a readable .npz archive ({e.__class__.__name__})") \
            from None
    for k in arrays:
        if k not in NPZ_ARRAYS:
            raise MDPError(source, k, f"unknown array (known: {', '.join(NPZ_ARRAYS)})")
    for k in ("P", "R"):
        if k not in arrays:
            raise MDPError(source, k, "missing (required)")
    doc = arrays_document(arrays["P"], arrays["R"], arrays.get("rho0"), gamma=gamma,
                          layout=layout, terminal=arrays.get("terminal"), horizon=horizon,
                          support=support, name=name or path.stem, source=source)
    return doc, source


def convert_document(spec: str, gamma: float, layout: str = "SAS", horizon: int | None = None,
                     support: str = "true", name: str | None = None,
                     make_kwargs: dict[str, Any] | None = None) -> tuple[dict, str]:
    """(YAML document, source) of `gymnasium:ENV_ID` or a .npz path, validated."""
    if spec.startswith("gymnasium:"):
        doc, source = gymnasium_document(spec.split(":", 1)[1], gamma, horizon, support,
                                         **(make_kwargs or {}))
        if name:
            doc["name"] = name
    else:
        if make_kwargs:
            raise MDPError(spec, "--make", "only for gymnasium: sources")
        doc, source = npz_document(spec, gamma, layout, horizon, support, name)
    mdp_from_dict(doc, source=source)
    return doc, source


__all__ = ["arrays_document", "convert_document", "from_arrays", "from_gymnasium", "from_npz",
           "from_pymdptoolbox", "gymnasium_document", "npz_document"]
