"""The state graph of an MDP: reachability, closed classes (ergodicity), model size."""
from __future__ import annotations

import networkx as nx
import numpy as np

from bilevel.mdp.model import TabularMDP


def _graph_from_P(P: np.ndarray) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(range(P.shape[0]))
    s, _, s2 = np.nonzero(P > 0)
    g.add_edges_from(zip(s.tolist(), s2.tolist()))
    return g


def support_mask(P: np.ndarray, terminal: np.ndarray, kind: str) -> np.ndarray:
    """K[s,a,s']: `true` = supp P(.|s,a); `neighbors` = successors of s in the state graph
    plus s itself; `all` = every state. Terminal states keep K[t,a] = {t}."""
    S, A, _ = P.shape
    if kind == "true":
        K = P > 0
    elif kind == "all":
        K = np.ones_like(P, dtype=bool)
    elif kind == "neighbors":
        g = _graph_from_P(P)
        K = np.zeros_like(P, dtype=bool)
        for s in range(S):
            nb = list(g.successors(s)) + [s]
            K[s][:, nb] = True
    else:
        raise ValueError(f"unknown model support {kind!r}")
    K = np.array(K)
    for t in np.flatnonzero(terminal):
        K[t] = False
        K[t, :, t] = True
    return K


def state_graph(mdp: TabularMDP) -> nx.DiGraph:
    """Directed graph on state names; edge s->s' iff P(s'|s,a) > 0 for some a.
    Edge attribute `actions`: {action: (probability, reward)}."""
    g = nx.DiGraph()
    for i, s in enumerate(mdp.states):
        g.add_node(s, terminal=bool(mdp.terminal[i]), initial=float(mdp.rho0[i]))
    for i, j, k in zip(*np.nonzero(mdp.P > 0)):
        s, a, s2 = mdp.states[i], mdp.actions[j], mdp.states[k]
        if not g.has_edge(s, s2):
            g.add_edge(s, s2, actions={})
        g[s][s2]["actions"][a] = (float(mdp.P[i, j, k]), float(mdp.R[i, j, k]))
    return g


def reachable_states(mdp: TabularMDP) -> np.ndarray:
    """Bool (S,): states reachable from supp(rho0) under some policy (one search from all
    start states together: linear in the number of edges however many states start)."""
    g = _graph_from_P(mdp.P)
    out = np.zeros(mdp.n_states, dtype=bool)
    stack = [int(s) for s in np.flatnonzero(mdp.rho0 > 0)]
    out[stack] = True
    while stack:
        for t in g.successors(stack.pop()):
            if not out[t]:
                out[t] = True
                stack.append(t)
    return out


def ergodicity_report(mdp: TabularMDP) -> dict:
    """Strongly connected classes of the state graph, which are closed (no edge leaves),
    and whether the graph is one class (every state reaches every other)."""
    g = state_graph(mdp)
    sccs = [sorted(c, key=mdp.states.index) for c in nx.strongly_connected_components(g)]
    sccs.sort(key=lambda c: mdp.states.index(c[0]))
    cond = nx.condensation(g, scc=[set(c) for c in sccs])
    closed = [sccs[n] for n in cond.nodes if cond.out_degree(n) == 0]
    return {"classes": sccs, "closed_classes": closed,
            "strongly_connected": len(sccs) == 1,
            "reachable": [s for s, m in zip(mdp.states, reachable_states(mdp)) if m]}


def model_size(mdp: TabularMDP) -> dict:
    """How large the model and its MPEC are: `model_entries` = |K| (one model variable per
    entry of the support), `dense_entries` = S*A*S, `pairs` = S*A (one policy variable and one
    complementarity pair each)."""
    S, A = mdp.n_states, mdp.n_actions
    return {"states": S, "actions": A, "pairs": S * A, "model_entries": int(mdp.K.sum()),
            "dense_entries": S * A * S}


def n_policies(mdp: TabularMDP) -> int:
    """Number of deterministic policies (one action per live state)."""
    return mdp.n_actions ** int((~mdp.terminal).sum())


def live_pairs(mdp: TabularMDP) -> int:
    """Number of non-terminal state-action pairs (= policy-side complementarity pairs)."""
    return int((~mdp.terminal).sum()) * mdp.n_actions
