"""Stage 1, the MDP: the tabular type, the YAML format, the state graph, gridworlds, Garnets."""
from bilevel.mdp.model import (SUM_TOL, DEFAULT_FLOOR, SUPPORT_KINDS, MDPError, TabularMDP,  # noqa: F401
                               support_mask)
from bilevel.mdp.io import (load_mdp, mdp_from_dict, mdp_to_dict, dump_mdp)  # noqa: F401
from bilevel.mdp.graph import (state_graph, reachable_states, ergodicity_report, model_size,  # noqa: F401
                               n_policies, live_pairs)
from bilevel.mdp.garnet import (garnet)  # noqa: F401
