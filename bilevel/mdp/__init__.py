"""Stage 1, the MDP: the tabular type, the YAML format, the state graph, gridworlds, Garnets.

    model.py      TabularMDP (arrays P, R, rho0, K, ...) and MDPError
    io.py         read / write the YAML format, every error naming file and field
    graph.py      the state graph: model support K, reachability, closed classes, sizes
    gridworld.py  the `gridworld:` form of the YAML, compiled to arrays
    garnet.py     seeded random Garnet MDPs
"""
from bilevel.mdp.garnet import garnet
from bilevel.mdp.graph import (ergodicity_report, live_pairs, model_size, n_policies, reachable_states,
                               state_graph, support_mask)
from bilevel.mdp.io import dump_mdp, load_mdp, mdp_from_dict, mdp_to_dict
from bilevel.mdp.model import DEFAULT_FLOOR, SUM_TOL, SUPPORT_KINDS, MDPError, TabularMDP

__all__ = ["DEFAULT_FLOOR", "SUM_TOL", "SUPPORT_KINDS", "MDPError", "TabularMDP", "dump_mdp",
           "ergodicity_report", "garnet", "live_pairs", "load_mdp", "mdp_from_dict", "mdp_to_dict",
           "model_size", "n_policies", "reachable_states", "state_graph", "support_mask"]
