"""Exact tabular quantities on plain arrays: policies, evaluation, occupancy, model fits."""
from bilevel.tabular.policies import (uniform_policy, deterministic_policy, greedy_policy,  # noqa: F401
                                      policy_from_occupancy)
from bilevel.tabular.evaluation import (transition_matrix, policy_evaluation, q_values,  # noqa: F401
                                        value_iteration, policy_iteration, bellman_residual,
                                        expected_return, policy_return, episode_reward)
from bilevel.tabular.occupancy import (occupancy, flow_matrix, flow_residual, OccupancyLP,  # noqa: F401
                                       occupancy_lp)
from bilevel.tabular.fits import (kl_rows, model_loss, random_model, kl_fit, tv_distance,  # noqa: F401
                                  simulation_terms)
