"""Stage 1, the MDP: the tabular type, the YAML format, the state graph, gridworlds, Garnets.

    model.py      TabularMDP (arrays P, R, rho0, K, ...) and MDPError
    io.py         read / write the YAML format, every error naming file and field
    graph.py      the state graph: model support K, reachability, closed classes, sizes
    gridworld.py  the `gridworld:` form of the YAML, compiled to arrays
    garnet.py     seeded random Garnet MDPs
    imports.py    MDPs from other toolkits: Gymnasium toy_text, (S,A,S) / (A,S,S) arrays, .npz
"""
from bilevel.mdp.garnet import garnet
from bilevel.mdp.graph import (ergodicity_report, live_pairs, model_size, n_policies, reachable_states,
                               state_graph, support_mask)
from bilevel.mdp.imports import from_arrays, from_gymnasium, from_npz, from_pymdptoolbox
from bilevel.mdp.io import dump_mdp, load_mdp, mdp_from_dict, mdp_to_dict
from bilevel.mdp.model import DEFAULT_FLOOR, SUM_TOL, SUPPORT_KINDS, MDPError, TabularMDP

__all__ = ["DEFAULT_FLOOR", "SUM_TOL", "SUPPORT_KINDS", "MDPError", "TabularMDP", "dump_mdp",
           "ergodicity_report", "from_arrays", "from_gymnasium", "from_npz", "from_pymdptoolbox",
           "garnet", "live_pairs", "load_mdp", "mdp_from_dict", "mdp_to_dict", "model_size",
           "n_policies", "reachable_states", "state_graph", "support_mask"]
