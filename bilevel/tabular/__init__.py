"""Exact tabular quantities on plain arrays: policies, evaluation, occupancy, model fits."""
from bilevel.tabular.policies import (uniform_policy, deterministic_policy, greedy_policy,  # noqa: F401
                                      policy_from_occupancy)
from bilevel.tabular.evaluation import (expected_reward, transition_matrix,  # noqa: F401
                                        policy_evaluation, q_values, value_iteration,
                                        policy_iteration, bellman_residual, expected_return,
                                        policy_return, return_gap, episode_reward)
from bilevel.tabular.occupancy import (occupancy, uniform_occupancy, flow_matrix,  # noqa: F401
                                       flow_residual, OccupancyLP, occupancy_lp)
from bilevel.tabular.fits import (kl_rows, model_loss, random_model, kl_fit, tv_distance,  # noqa: F401
                                  simulation_terms)
