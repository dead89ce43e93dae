"""`python -m bilevel.verify DIR [--equilibria FILE.json] [--json]`: check RL runs against the exact
equilibria of their MDP.

Per run (policy pi (S,A), model Phat (S,A,S), true MDP M, exact equilibria of its formulation):
    mu      = true occupancy of pi in M; the leader's data occupancy nu = mu, or for
              MAL_random_noise nu = alpha mu + (1-alpha) mu_rand
    eps_M   = l(Phat, nu) - min_{M' in C} l(M', nu), C the run's model class (tabular: the floored
              models on K, whose minimizer is P_eta = kl_fit(P, K, eta))
    eps_pi  = max_pi' J(pi', Phat) - J(pi, Phat)   (value iteration in Phat, rewards rhat = Phat R)
    J       = J(pi, M) (discounted) against the exact interval [J_min, J_max] of the formulation
    PAL     : theorem bound  eps_pi' + 4 g sqrt(l(Phat, mu)) R_max / (1-g)^2  >=  J* - J  (the
              loss itself, as the theorem states its premise, not the excess eps_M: at the file's
              floor even the exact best response P_eta has a loss, and the floor moves J), where
              eps_pi' = max(eps_pi, L - J(pi, Phat)) and L = sup J(pi', Mhat(pi')) (the exact PAL
              optimum's J in its model)
    MAL family: which equilibrium the run found: the worst end of the interval (hiding, e.g. the
              decoy on hidden_goal), the best end (goal), or in between.
Checks: J against the exact interval, with the interval's own precision as tolerance,
    tol_J = max(TOL_J_REL max(1, |J_min|, |J_max|), the interval's band `tolerance`, its solver
                gap, its ends' proved gaps and follower gaps)      (interval_tolerance)
so J is "inside" [J_min, J_max], "within tolerance" (outside by at most tol_J) or "outside" (a
failure); eps_pi <= TOL_PI = 1% of the return scale R_max/(1-g) (the follower best-responds in
its model, up to the run's own convergence; for PAL the policy is optimal in its model);
eps_M <= TOL_M nats (PAL, MAL, MAL_random_noise: the model fits the leader's data;
MAL_agent_reward trades loss for return, so eps_M is reported only); PAL: bound >= gap; a run of a
restricted class: its model lies in the class (`ClassBlocks.distance` <= TOL_CLASS).
Notes (not failures): a run whose leader objective beats the exact optimum L* (the solve missed
an equilibrium); a run outside its interval whose follower best-responds but whose leader
objective is above L* by more than the band: an equilibrium the leader could improve on (the
exact optimum's witness is one), where a trainer that only follows local steps stops.
A run record of MAL_agent_reward or MAL_random_noise must carry its alpha.
Exit status: 0 all runs verified, 1 some run failed, 2 bad input.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from bilevel.game.base import Formulation
from bilevel.game.formulations import FORMULATIONS
from bilevel.mdp.model import TabularMDP
from bilevel.rl.record import RunRecord
from bilevel.tabular.evaluation import episode_reward, policy_return, return_gap
from bilevel.tabular.fits import model_loss


TOL_J_REL = 1e-6        # the floor of the J tolerance, relative to max(1, |J_min|, |J_max|)
TOL_PI_FRACTION = 0.01  # eps_pi tolerance, of R_max / (1 - gamma)
TOL_M = 0.05            # nats
TOL_CLASS = 1e-8        # a restricted run's model: distance to its class


INSIDE, WITHIN, OUTSIDE = "inside", "within tolerance", "outside"


class VerifyInputError(ValueError):
    """Bad input to verify (one-line message)."""


@dataclass(frozen=True)
class RunCheck:
    """The verification of one run. J figures are discounted returns; episode_reward is T-step."""

    file: str
    formulation: str
    seed: int
    alpha: float | None
    J: float
    episode_reward: float
    J_interval: tuple[float, float]
    episode_reward_interval: tuple[float, float] | None
    outside_by: float                 # 0 inside; else distance of J to the interval
    tol_J: float                      # the interval's precision (interval_tolerance)
    position: str                     # J: "inside" | "within tolerance" | "outside" the interval
    tol_pi: float                     # eps_pi tolerance
    eps_M: float
    eps_pi: float
    leader_objective: float           # the run's leader objective (to minimize), exact in M
    exact_leader_objective: float | None
    pal_bound: float | None           # eps_pi' + 4 g sqrt(l(Phat, mu)) R_max/(1-g)^2
    pal_gap: float | None             # J* - J(pi, M)
    equilibrium: str                  # MAL family: which equilibrium the run found
    failed: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = "verified" if self.ok else "FAILED"
        return d


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def interval_tolerance(eq: dict) -> tuple[float, list[str]]:
    """The precision of an exact interval (a solve output's entry), as a tolerance on J:
    max(TOL_J_REL max(1, |J_min|, |J_max|), the band `tolerance`, `solver_gap`, the ends'
    `proved_gap` and `follower_gap`), and notes on what it could not count (an end whose gap
    is unknown or not proved)."""
    lo, hi = float(eq["J"]["min"]), float(eq["J"]["max"])
    parts = [TOL_J_REL * max(1.0, abs(lo), abs(hi))]
    notes = []
    for key in ("tolerance", "solver_gap"):
        if eq.get(key) is not None:
            parts.append(_finite(eq[key]))
    proved = eq.get("proved_gap")
    if isinstance(proved, dict):
        for end in ("min", "max"):
            if end in proved:
                parts.append(_finite(proved[end]))
                if parts[-1] is None:
                    notes.append(f"the interval's {end} end has no proved gap: its precision is "
                                 "not counted in the tolerance")
    for end, e in (eq.get("equilibria") or {}).items():
        if isinstance(e, dict) and e.get("follower_gap") is not None:
            parts.append(_finite(e["follower_gap"]))
    return max(abs(x) for x in parts if x is not None), notes


def run_formulation(rec: RunRecord, file: str) -> Formulation:
    """The run's registered formulation; VerifyInputError naming the file otherwise."""
    f = FORMULATIONS.get(rec.formulation)
    if f is None:
        raise VerifyInputError(f"{file}: run record of unknown formulation {rec.formulation!r} "
                               f"(choose from {', '.join(FORMULATIONS)})")
    return f


def require_alpha(rec: RunRecord, file: str) -> None:
    """A run of a formulation with an alpha (MAL_agent_reward, MAL_random_noise) must record it:
    VerifyInputError naming the file and the field otherwise (never a silent alpha 0)."""
    f = FORMULATIONS.get(rec.formulation)
    if f is not None and f.takes_alpha and rec.alpha is None:
        raise VerifyInputError(f"{file}: run record of {rec.formulation} lacks its alpha (field "
                               "'alpha' is missing or null)")


def check_run(rec: RunRecord, mdp: TabularMDP, eq: dict, optimal_J: float, file: str = "") -> RunCheck:
    """Verify one run against `eq`, the solve output's entry for its formulation."""
    f = rec.formulation
    spec = run_formulation(rec, file)
    require_alpha(rec, file)
    pi, Phat = np.asarray(rec.policy, float), np.asarray(rec.model, float)
    S, A = mdp.n_states, mdp.n_actions
    if pi.shape != (S, A) or Phat.shape != (S, A, S):
        raise VerifyInputError(f"{file}: policy/model shapes {pi.shape}/{Phat.shape} do not fit "
                               f"MDP {mdp.name} ({S} states, {A} actions)")
    g, T = mdp.gamma, mdp.horizon
    tol_J, notes = interval_tolerance(eq)
    tol_pi = TOL_PI_FRACTION * max(mdp.r_max, 1e-12) / (1.0 - g)
    eps_M = spec.excess_loss(mdp, pi, Phat, rec.alpha)
    rh = mdp.model_reward(Phat)
    J_model = policy_return(Phat, rh, mdp.rho0, g, pi)
    eps_pi = return_gap(Phat, rh, mdp.rho0, g, pi)
    J = mdp.true_return(pi)
    ep = episode_reward(mdp.P, mdp.r, mdp.rho0, pi, T) if T else float("nan")
    lo, hi = float(eq["J"]["min"]), float(eq["J"]["max"])
    outside = max(0.0, lo - J, J - hi)
    position = INSIDE if outside == 0.0 else WITHIN if outside <= tol_J else OUTSIDE
    ep_int = (float(eq["episode_reward"]["min"]), float(eq["episode_reward"]["max"])) \
        if eq.get("episode_reward") else None
    leader = spec.leader_value(mdp, pi, Phat, rec.alpha)

    failed = []
    if position == OUTSIDE:
        failed.append(f"J={J:.8g} outside exact interval [{lo:.8g}, {hi:.8g}] by {outside:.3g} "
                      f"> tolerance {tol_J:.3g}")
    if eps_pi > tol_pi:
        failed.append(f"eps_pi={eps_pi:.3g} > {tol_pi:.3g}: policy not a best response in its model")
    if spec.fits_leader_data and eps_M > TOL_M:
        failed.append(f"eps_M={eps_M:.3g} > {TOL_M}: model not fit to the leader's data")
    if mdp.restricted and (off := mdp.model_blocks.distance(Phat)) > TOL_CLASS:
        failed.append(f"the model is {off:.3g} off the {mdp.model_class.kind} class it trained in")
    bound = gap = None
    if spec.leader == "policy" and mdp.averaged:
        notes.append("the PAL theorem's bound is stated for the discounted occupancy and return: "
                     "not checked under occupancy: average")
        equilibrium = "optimum" if abs(J - optimal_J) <= tol_J else "suboptimal"
    elif spec.leader == "policy":     # PAL's theorem
        L = _pal_value(eq)
        eps_pi_thm = max(eps_pi, L - J_model) if L is not None else eps_pi
        loss = model_loss(mdp.P, Phat, spec.nu(mdp, pi, rec.alpha))
        bound = eps_pi_thm + 4.0 * g * math.sqrt(loss) * mdp.r_max / (1.0 - g) ** 2
        gap = optimal_J - J
        if gap > bound + 1e-9:
            failed.append(f"PAL bound violated: gap {gap:.4g} > bound {bound:.4g}")
        equilibrium = "optimum" if abs(J - optimal_J) <= tol_J else "suboptimal"
    else:
        if hi - lo <= tol_J:
            equilibrium = "unique value"
        elif abs(J - lo) <= tol_J:
            equilibrium = "worst (hiding/decoy)"
        elif abs(J - hi) <= tol_J:
            equilibrium = "best (goal)"
        else:
            equilibrium = "intermediate (hiding)"
    if spec.takes_alpha and eq.get("alpha") is None:
        notes.append(f"the exact solution records no alpha for {f}: the run's alpha "
                     f"{rec.alpha:g} is not checked against it")
    exact_L = eq.get("leader_objective")
    if exact_L is not None and eps_pi <= tol_pi:
        L_star = float(exact_L)
        if leader < L_star - 1e-3 * max(1.0, abs(L_star)):
            notes.append(f"the run's leader objective {leader:.6g} beats the exact optimum {L_star:.6g}: "
                         "the exact solve missed a better equilibrium, so its interval is suspect")
        elif (position == OUTSIDE and not (spec.fits_leader_data and eps_M > TOL_M)
              and leader > L_star + _band(eq)):
            # the exact optimum is attained by its witness: the run's equilibrium is not leader-optimal
            notes.append(f"the follower best-responds, but the run's leader objective {leader:.6g} is "
                         f"{leader - L_star:.3g} above the exact optimum {L_star:.6g}: "
                         "the leader stopped at an equilibrium it could improve on")
    return RunCheck(file=file, formulation=f, seed=rec.seed, alpha=rec.alpha, J=J, episode_reward=ep,
                    J_interval=(lo, hi), episode_reward_interval=ep_int, outside_by=outside,
                    tol_J=tol_J, position=position, tol_pi=tol_pi, eps_M=eps_M, eps_pi=eps_pi,
                    leader_objective=float(leader),
                    exact_leader_objective=None if exact_L is None else float(exact_L),
                    pal_bound=bound, pal_gap=gap, equilibrium=equilibrium, failed=tuple(failed),
                    notes=tuple(notes))


def _band(eq: dict) -> float:
    """How far above L* a leader objective still counts as leader-optimal: the interval's band
    `tolerance`, at least 1e-6 max(1, |L*|)."""
    L = abs(float(eq["leader_objective"]))
    return max(_finite(eq.get("tolerance")) or 0.0, 1e-6 * max(1.0, L))


def _pal_value(eq: dict) -> float | None:
    """sup_pi J(pi, Mhat(pi)): the PAL optimum's return in its own model (else its true J max)."""
    best = (eq.get("equilibria") or {}).get("max") or {}
    if "J_model" in best:
        return float(best["J_model"])
    return float(eq["J"]["max"]) if eq.get("J") else None

