"""The reference study's published results on hidden_goal ("Avg. Ep. Reward", mean and std over
its seeds), shown next to the exact intervals (report) and the trained runs (train)."""
from __future__ import annotations

REFERENCE_MDP = "hidden_goal"
REFERENCE = {"PAL": {"mean": 36.77, "std": 0.64}, "MAL": {"mean": 0.97, "std": 0.05},
             "MAL_agent_reward": {"mean": 36.93, "std": 0.57},
             "MAL_random_noise": {"mean": 36.74, "std": 0.67}}


def reference_for(mdp_name: str) -> dict | None:
    """The published table when `mdp_name` is the reference study's MDP, else None."""
    return REFERENCE if mdp_name == REFERENCE_MDP else None


def reference_text(entry: dict) -> str:
    """'mean ± std' with two decimals."""
    return f"{entry['mean']:.2f} ± {entry['std']:.2f}"
