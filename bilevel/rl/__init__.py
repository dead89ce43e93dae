"""RL side: Gymnasium env and batched stepper (env), learners, inner-outer and contextualized
trainers, run records. Importing this package registers `bilevel/Tabular-v0` with Gymnasium."""
from bilevel.rl.env import ENV_ID, register_env

register_env()
__all__ = ["ENV_ID", "register_env"]
