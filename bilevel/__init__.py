"""stackelberg-mbrl: exact Stackelberg equilibria of model-based RL on tabular MDPs.

The public surface, for use from a training script:

    import bilevel
    mdp = bilevel.load_mdp("mdps/hidden_goal.yaml")
    interval = bilevel.equilibrium_interval(mdp, "MAL")            # EquilibriumInterval, certified
    print(interval.certificate, interval.low.J, interval.high.J)
    check = bilevel.verify_iterate(mdp, policy, model, interval)  # a trainer's (pi, Phat) against it
    print(check.ok, check.failed)

Arrays follow one convention: policy (S, A), model (S, A, S), see docs/DESIGN.md section 1.
(The functions are not named `equilibria` and `verify`: those are the submodules
`bilevel.equilibria` and `bilevel.verify`, which would replace them on import.)
"""
from __future__ import annotations

__all__ = ["FORMULATIONS", "load_mdp", "equilibrium_interval", "verify_iterate"]


def __getattr__(name):
    """`bilevel.FORMULATIONS`: the formulation names of the registry (bilevel.game), imported
    on first use so that `import bilevel` stays light."""
    if name == "FORMULATIONS":
        from bilevel.game import FORMULATIONS
        return tuple(FORMULATIONS)
    raise AttributeError(f"module 'bilevel' has no attribute {name!r}")


def load_mdp(path):
    """Load and validate an MDP file (YAML); raises `bilevel.mdp.MDPError` (one-line message)."""
    from bilevel.mdp import load_mdp as _load
    return _load(path)


def equilibrium_interval(mdp, formulation: str, alpha: float | None = None, solver: str = "auto",
               epsilon: float | None = None, **options):
    """The certified equilibrium interval of `formulation` on `mdp`: an `EquilibriumInterval`
    with `.status`, `.certificate` ("global" | "local"), `.low` / `.high` (`Equilibrium`: policy,
    model, J, episode_reward, ...), `.details` and `.to_json()`. `solver`: auto | exact |
    mpec-scip | mpec-ipopt | enumerate; `epsilon`: the interval over epsilon-leader-optimal
    equilibria instead of the exact limit one. Further options go to
    `bilevel.equilibria.solve_formulation`."""
    from bilevel.equilibria import solve_formulation
    return solve_formulation(mdp, formulation, alpha=alpha, solver=solver, epsilon=epsilon,
                             **options)


def verify_iterate(mdp, policy, model, interval, alpha: float | None = None):
    """Check a trainer's current iterate (policy (S,A), model (S,A,S)) against `interval`, the
    `EquilibriumInterval` of its formulation (or that interval's `to_json()` dict): J(pi, M)
    against the interval, the follower's gap eps_pi, the model's excess loss eps_M and, for PAL,
    the theorem bound. Returns a `bilevel.verify.RunCheck` (`.ok`, `.failed`, `.to_dict()`)."""
    import numpy as np

    from bilevel.tabular import value_iteration
    from bilevel.rl.record import RunRecord
    from bilevel.verify import check_run
    eq = interval if isinstance(interval, dict) else interval.to_json()
    formulation = getattr(interval, "formulation", None) or eq.get("formulation")
    if formulation is None:
        raise ValueError("interval: pass an EquilibriumInterval (a to_json() dict has no "
                         "formulation name)")
    if alpha is None:
        alpha = eq.get("alpha")
    rec = RunRecord(mdp=mdp.name, mdp_path=mdp.source, formulation=formulation,
                    algorithm="external", alpha=alpha, seed=0, config={},
                    policy=np.asarray(policy, float), model=np.asarray(model, float), curve=(),
                    env_samples=0, seconds=0.0, final={})
    J_star = float(mdp.rho0 @ value_iteration(mdp.P, mdp.r, mdp.gamma)[0])
    return check_run(rec, mdp, eq, J_star, file="<iterate>")
