"""Equilibrium intervals with independent certificates (DESIGN.md section 2).

For one formulation:
  1. leader optimum  L* = min leader(Phat, pi)  over the single-level MPEC;
  2. the interval    min / max J(pi, M)  s.t. the MPEC and  leader <= L* + tol,
     tol = 1e-6 max(1, |L*|) + floor allowance (loss-based leaders only: 2 eta max_sa |K(s,a)|,
     the most a floored fit can cost, so that the floor does not pick among equilibria)
     + the proven absolute gap of step 1 when SCIP stops at its relative gap (SCIP_GAP), so
     the band contains every truly leader-optimal equilibrium;
  3. each end is re-checked without the MPEC: the follower's gap (value iteration in Phat for the
     policy follower; the closed-form KL fit for the model follower), the complementarity
     violation, and J, episode reward, loss and J(pi, Phat) recomputed from the arrays.
Solutions are strong (optimistic) Stackelberg equilibria: the leader picks among the follower's
best responses. `certificate: global` only when SCIP proved all three solves; else `local`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pyo
from pyomo.common.collections import ComponentMap

from bilevel.formulations import BilevelModel, build, extract
from bilevel.mdp import TabularMDP
from bilevel.mpec import ExactProduct, MPECResult, Scholtes, solve_mpec
from bilevel.occupancy import (episode_reward, kl_fit, kl_rows, model_loss, occupancy, policy_evaluation,
                               random_model, uniform_policy, value_iteration)
from solvers.base import Status
from solvers.ipopt import Ipopt
from solvers.scip import Scip

FOLLOWER_GAP_TOL = 1e-6
AUTO_SCIP_MAX_PAIRS = 16     # --solver auto: SCIP (global) up to this many state-action pairs
# IPOPT past this many live pairs: no Scholtes homotopy (hundreds to thousands of iterations per
# step at ~26 ms each on a 10x10 grid); every start is follower-optimal and goes straight to the
# active-set polish, a smooth NLP on the start's complementarity branch (1 s on the 10x10 grid)
POLISH_ONLY_PAIRS = 200
# --solver auto for MAL_agent_reward (whose MPEC SCIP does not close): enumerate the follower's
# deterministic policies (bilevel.enumeration, global) when there are at most this many ...
ENUMERATE_AUTO_MAX_POLICIES = 16
ENUMERATE_TIME_LIMIT = 5.0   # ... with at most this many seconds per policy; else IPOPT
SCIP_GAP = 1e-3              # relative gap at which SCIP stops ...
SCIP_ABS_GAP = 1e-5          # ... or absolute gap (L* ~ 0); either way the proven gap widens tol
HOMOTOPY = (1e-1, 1e-3, 1e-5, 1e-7, 1e-9)   # Scholtes eps schedule (then an active-set polish)
SCIP_TIME_LIMIT = 30.0       # seconds per SCIP solve; auto falls back to IPOPT past it
FEASIBILITY_SLACK = 1e-5     # relative allowance for solver feasibility tolerances in checks
WARM_SCHEDULE = (1e-6, 1e-8, 1e-10)   # Scholtes eps for starts that are already complementary
WARM_IPOPT = {"warm_start_init_point": "yes", "bound_push": 1e-10, "bound_frac": 1e-10,
              "mu_init": 1e-8}            # keep IPOPT at a start that is already an equilibrium


@dataclass(frozen=True)
class Equilibrium:
    """One end of an interval, every number recomputed from (policy, model) arrays."""

    policy: np.ndarray
    model: np.ndarray
    J: float                     # J(pi, M), discounted true return
    episode_reward: float | None
    model_loss: float            # l(Phat, mu_M^pi)
    J_model: float               # J(pi, Phat)
    leader_objective: float      # the formulation's leader objective at this point
    follower_gap: float
    complementarity_violation: float | None

    def to_json(self) -> dict:
        return {"policy": self.policy.tolist(), "model": self.model.tolist(),
                "J": self.J, "episode_reward": self.episode_reward,
                "model_loss": self.model_loss, "J_model": self.J_model,
                "leader_objective": self.leader_objective, "follower_gap": self.follower_gap,
                "complementarity_violation": self.complementarity_violation}


@dataclass(frozen=True)
class EquilibriumInterval:
    """The certified equilibrium interval of one formulation (or a failure with its reason)."""

    formulation: str
    status: str                                  # "solved" | "failed"
    reason: str = ""
    alpha: float | None = None
    certificate: str = "none"                    # "global" | "local" | "none"
    solver: str = ""
    starts: int = 0
    leader_objective: float | None = None
    tolerance: float | None = None
    low: Equilibrium | None = None               # equilibrium with the smallest J(pi, M)
    high: Equilibrium | None = None              # ... the largest
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "solved"

    def to_json(self) -> dict:
        d = {"status": self.status, "alpha": self.alpha, "seconds": round(self.seconds, 3)}
        if not self.ok:
            d["reason"] = self.reason
            return d
        ep = None if self.low.episode_reward is None else \
            {"min": self.low.episode_reward, "max": self.high.episode_reward}
        d.update({"certificate": self.certificate, "solver": self.solver, "starts": self.starts,
                  "leader_objective": self.leader_objective, "tolerance": self.tolerance,
                  "solver_gap": self.details.get("solver_gap"),
                  **{k: self.details[k] for k in ("ipopt_mode", "ends_at_leader_optimum",
                                                  "snapped_to_best_response", "enumeration")
                     if k in self.details},
                  "J": {"min": self.low.J, "max": self.high.J},
                  "episode_reward": ep,
                  "equilibria": {"min": self.low.to_json(), "max": self.high.to_json()}})
        return d


# --------------------------------------------------------------------------- certificates

def model_reward(mdp: TabularMDP, Phat: np.ndarray) -> np.ndarray:
    """rhat(s,a) = sum_s' Phat(s'|s,a) R(s,a,s')."""
    return np.einsum("ijk,ijk->ij", Phat, mdp.R)


def leader_value(formulation: str, mdp: TabularMDP, pi, Phat, alpha) -> float:
    """The leader objective (to minimize) evaluated from arrays, independently of the MPEC."""
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    J_model = float(mdp.rho0 @ policy_evaluation(Phat, model_reward(mdp, Phat), mdp.gamma, pi))
    if formulation == "PAL":
        return -J_model
    if formulation == "MAL":
        return model_loss(mdp.P, Phat, mu)
    if formulation == "MAL_agent_reward":
        return alpha * model_loss(mdp.P, Phat, mu) - (1 - alpha) * J_model
    mu_rand = occupancy(mdp.P, mdp.rho0, mdp.gamma, uniform_policy(mdp.n_states, mdp.n_actions))
    return model_loss(mdp.P, Phat, alpha * mu + (1 - alpha) * mu_rand)


def follower_gap(formulation: str, mdp: TabularMDP, pi, Phat) -> float:
    """Policy follower: max_s V*_Phat(s) - V^pi_Phat(s) (value iteration in Phat).
    Model follower (PAL): l(Phat, mu_M^pi) - l(P_eta fit, mu_M^pi) (closed-form KL fit)."""
    if formulation == "PAL":
        mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
        best = kl_fit(mdp.P, mdp.K, mdp.floor)
        return max(0.0, model_loss(mdp.P, Phat, mu) - model_loss(mdp.P, best, mu))
    rhat = model_reward(mdp, Phat)
    V_star, _ = value_iteration(Phat, rhat, mdp.gamma, tol=1e-10)
    V_pi = policy_evaluation(Phat, rhat, mdp.gamma, pi)
    return max(0.0, float(np.max(V_star - V_pi)))


def snap_to_best_response(bm: BilevelModel) -> None:
    """PAL only: the model follower's best response is known in closed form (Phat = P_eta on
    every pair with mu_M^pi(s,a) > 0, anything elsewhere), so the solver's model is replaced by
    it on those rows. A relaxed complementarity leaves deviations of order eps / mu on rarely
    visited pairs; the snapped point is an exact equilibrium with the same policy (so the same
    J(pi, M)). Used on an interval end that fails its follower certificate; the band check
    stays on the solver's point and the change of the leader objective is reported."""
    if bm.formulation != "PAL":
        return
    mdp, m = bm.mdp, bm.model
    pi = extract(bm)["policy"]
    visited = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi) > 0
    Peta = kl_fit(mdp.P, mdp.K, mdp.floor)
    for (s, a, t) in m.KSET:
        if visited[s, a]:
            m.Phat[s, a, t].set_value(float(Peta[s, a, t]), skip_validation=True)


def certify(bm: BilevelModel, violation: float | None) -> Equilibrium:
    """Read (pi, Phat) from the model and recompute every reported number."""
    mdp = bm.mdp
    x = extract(bm)
    pi, Phat = x["policy"], x["model"]
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    J = float(mdp.rho0 @ policy_evaluation(mdp.P, mdp.r, mdp.gamma, pi))
    ep = episode_reward(mdp.P, mdp.r, mdp.rho0, pi, mdp.horizon) if mdp.horizon else None
    J_model = float(mdp.rho0 @ policy_evaluation(Phat, model_reward(mdp, Phat), mdp.gamma, pi))
    return Equilibrium(policy=pi, model=Phat, J=J, episode_reward=ep,
                       model_loss=model_loss(mdp.P, Phat, mu), J_model=J_model,
                       leader_objective=leader_value(bm.formulation, mdp, pi, Phat, bm.alpha),
                       follower_gap=follower_gap(bm.formulation, mdp, pi, Phat),
                       complementarity_violation=violation)


# --------------------------------------------------------------------------- starts

def starting_point(bm: BilevelModel, pi: np.ndarray, Phat: np.ndarray | None = None) -> ComponentMap:
    """A consistent start: policy pi, model Phat (default: the floored fit P_eta), the true
    occupancy mu, and (MAL family) V, w of pi in Phat, or (PAL) the model occupancy d."""
    mdp, m = bm.mdp, bm.model
    if Phat is None:
        Phat = kl_fit(mdp.P, mdp.K, mdp.floor)
    mu = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi)
    x = ComponentMap()
    for (s, a) in m.SA:
        x[m.pi[s, a]] = float(pi[s, a])
    for (s, a, t) in m.KSET:
        x[m.Phat[s, a, t]] = float(Phat[s, a, t])
    for s in range(mdp.n_states):
        for a in range(mdp.n_actions):
            if not m.mu[s, a].fixed:
                x[m.mu[s, a]] = float(mu[s, a] if not mdp.terminal[s] else mu[s].sum())
    if hasattr(m, "fit_up"):
        diff = Phat - kl_fit(mdp.P, mdp.K, mdp.floor)
        for (s, a, t) in m.KSET:
            x[m.fit_up[s, a, t]] = float(max(diff[s, a, t], 0.0))
            x[m.fit_down[s, a, t]] = float(max(-diff[s, a, t], 0.0))
    if hasattr(m, "kl"):
        kl = kl_rows(mdp.P, Phat)
        for (s, a) in m.SA:
            x[m.kl[s, a]] = float(kl[s, a])
    rhat = model_reward(mdp, Phat)
    if hasattr(m, "V"):
        V = policy_evaluation(Phat, rhat, mdp.gamma, pi)
        Q = rhat + mdp.gamma * Phat @ V
        for s in range(mdp.n_states):
            if not m.V[s].fixed:
                x[m.V[s]] = float(V[s])
        for (s, a) in m.SA:
            x[m.w[s, a]] = float(max(0.0, V[s] - Q[s, a]))
    if hasattr(m, "d"):
        d = occupancy(Phat, mdp.rho0, mdp.gamma, pi)
        for s in range(mdp.n_states):
            for a in range(mdp.n_actions):
                if not m.d[s, a].fixed:
                    x[m.d[s, a]] = float(d[s, a] if not mdp.terminal[s] else d[s].sum())
    return x


def structured_starts(bm: BilevelModel) -> list[ComponentMap]:
    """IPOPT starts that make the known equilibria reachable: the optimal policy of M with the
    fitted model, the uniform policy, and (MAL family) the optimal policy of the fitted model."""
    mdp = bm.mdp
    _, pi_star = value_iteration(mdp.P, mdp.r, mdp.gamma)
    starts = [starting_point(bm, pi_star), starting_point(bm, uniform_policy(mdp.n_states, mdp.n_actions))]
    if bm.formulation != "PAL":
        Peta = kl_fit(mdp.P, mdp.K, mdp.floor)
        _, pi_eta = value_iteration(Peta, model_reward(mdp, Peta), mdp.gamma)
        starts.insert(0, starting_point(bm, pi_eta, Peta))
    return starts


def random_starts(bm: BilevelModel, n: int, seed: int = 0) -> list[ComponentMap]:
    """`n` seeded random starts that satisfy every constraint but the leader's, completed by
    `starting_point` (so IPOPT starts on the flows, never from a box-random point, whose
    log(Phat) and bilinear terms stall it for thousands of iterations on gridworlds):
    MAL family: Phat(.|s,a) = (1-l) P_eta + l D, D = `random_model` (floored Dirichlet(1) on
                K(s,a)), l = 0 or U(0,1) with probability 1/2 each, and pi greedy in Phat (an
                exact follower optimum);
    PAL:        pi(.|s) one-hot or Dirichlet(1) with probability 1/2 each, Phat = P_eta where
                mu_pi > 0 (the exact model best response) and D elsewhere."""
    mdp = bm.mdp
    S, A = mdp.n_states, mdp.n_actions
    rng = np.random.default_rng(seed)
    Peta = kl_fit(mdp.P, mdp.K, mdp.floor)
    out = []
    for _ in range(n):
        D = random_model(mdp.K, mdp.floor, rng)
        if bm.formulation == "PAL":
            pi = rng.dirichlet(np.ones(A), size=S)
            onehot = rng.random(S) < 0.5
            pi[onehot] = np.eye(A)[rng.integers(A, size=int(onehot.sum()))]
            visited = occupancy(mdp.P, mdp.rho0, mdp.gamma, pi) > 0
            Phat = np.where(visited[:, :, None], Peta, D)
        else:
            lam = np.where(rng.random((S, A)) < 0.5, 0.0, rng.random((S, A)))[:, :, None]
            Phat = (1.0 - lam) * Peta + lam * D     # both floored on K: so is the mixture
            _, pi = value_iteration(Phat, model_reward(mdp, Phat), mdp.gamma, tol=1e-10)
        out.append(starting_point(bm, pi, Phat))
    return out


# --------------------------------------------------------------------------- solving

def set_objective(m, expr, sense=pyo.minimize):
    """Make `sense expr` the model's one objective (m.eq_objective), replacing the previous."""
    if m.component("eq_objective") is not None:
        m.del_component("eq_objective")
    m.eq_objective = pyo.Objective(expr=expr, sense=sense)


def equilibrium_tolerance(bm: BilevelModel, L: float) -> float:
    """The band: (pi, Phat) is an equilibrium when leader <= L* + tol, tol = 1e-6 max(1, |L*|)
    plus, for the MAL family, what the model floor can cost (2 floor |K(s,a)|)."""
    mdp = bm.mdp
    tol = 1e-6 * max(1.0, abs(L))
    if bm.formulation != "PAL":
        tol += 2.0 * mdp.floor * float(mdp.K.sum(axis=-1).max())
    return tol


def _ipopt_best(m, backend, reduction, kw, warm_points, sense=pyo.minimize, warm_schedule=WARM_SCHEDULE):
    """Best of two IPOPT runs: `warm_points` (exact equilibria already: the structured starts,
    then step 1's leader-optimal points) run `warm_schedule` (a short homotopy from a small eps,
    so the relaxation does not walk away from them; () in polish mode) with WARM_IPOPT; the
    cold starts in `kw` run `reduction`'s full schedule."""
    warm_backend = Ipopt(tol=backend.tol, max_iter=backend.max_iter, options=WARM_IPOPT)
    warm = solve_mpec(m, Scholtes(schedule=warm_schedule), warm_backend, starts=0, x0s=warm_points)
    cold = solve_mpec(m, reduction, backend, **kw)
    found = [r for r in (warm, cold) if r.ok]
    if not found:
        return cold if cold.starts_tried else warm
    sign = 1.0 if sense == pyo.minimize else -1.0
    best = min(found, key=lambda r: sign * r.objective)
    for v, x in best.point.items():        # solve_mpec loaded `cold` last: reload the winner
        v.set_value(x, skip_validation=True)
    if best is warm and cold.ok:
        best = MPECResult(**{**best.__dict__, "solutions": best.solutions + cold.solutions,
                             "starts_tried": warm.starts_tried + cold.starts_tried,
                             "starts_succeeded": warm.starts_succeeded + cold.starts_succeeded})
    return best


def choose_solver(mdp: TabularMDP, solver: str, formulation: str = "") -> str:
    """`auto`: SCIP (global) for MDPs with at most AUTO_SCIP_MAX_PAIRS state-action pairs, except
    MAL_agent_reward (SCIP did not close its gap in 30 s on hidden_goal for alpha >= 0.99):
    enumeration of the follower's policies when there are at most ENUMERATE_AUTO_MAX_POLICIES,
    else IPOPT. (solve_formulation: a SCIP solve that does not certify hands over to the
    enumeration when it applies and proves both ends, else to IPOPT.) `enumerate` covers the
    MAL family; PAL then takes the `auto` route."""
    if solver == "enumerate":
        return "enumerate" if formulation != "PAL" else choose_solver(mdp, "auto", formulation)
    if solver != "auto":
        return solver
    if formulation == "MAL_agent_reward":
        return "enumerate" if n_policies(mdp) <= ENUMERATE_AUTO_MAX_POLICIES else "ipopt"
    return "scip" if live_pairs(mdp) <= AUTO_SCIP_MAX_PAIRS else "ipopt"


def n_policies(mdp: TabularMDP) -> int:
    """Number of deterministic policies (one action per live state)."""
    return mdp.n_actions ** int((~mdp.terminal).sum())


def live_pairs(mdp: TabularMDP) -> int:
    """Number of non-terminal state-action pairs (= policy-side complementarity pairs)."""
    return int((~mdp.terminal).sum()) * mdp.n_actions


def solve_formulation(mdp: TabularMDP, formulation: str, alpha: float | None = None,
                      solver: str = "auto", starts: int = 3, seed: int = 0,
                      time_limit: float = SCIP_TIME_LIMIT, pal_reduction: str = "closed_form",
                      log=None, ipopt_mode: str = "auto") -> EquilibriumInterval:
    """The equilibrium interval of `formulation` (see module docstring). With solver="auto",
    a SCIP solve that cannot prove its gap in `time_limit` hands over to IPOPT (local).
    ipopt_mode: "homotopy" (Scholtes eps schedule, then polish), "polish" (active-set polish
    from follower-optimal starts only), "auto" (polish past POLISH_ONLY_PAIRS live pairs).
    solver="enumerate" (MAL family, tiny MDPs): bilevel.enumeration, at most
    min(time_limit, ENUMERATE_TIME_LIMIT) s per policy (the bounds need only resolve the band)."""
    say = log or (lambda msg: None)

    def enumerated() -> EquilibriumInterval:
        from bilevel.enumeration import enumerate_interval
        return enumerate_interval(mdp, formulation, alpha,
                                  time_limit=min(time_limit, ENUMERATE_TIME_LIMIT), log=log)

    which = choose_solver(mdp, solver, formulation)
    if which == "enumerate":
        return enumerated()
    res = _solve_formulation(mdp, formulation, alpha, which, starts, seed,
                             time_limit, pal_reduction, log, ipopt_mode)
    if solver == "auto" and res.solver == "scip" and not res.ok and formulation != "PAL" and \
            n_policies(mdp) <= ENUMERATE_AUTO_MAX_POLICIES:
        say(f"{formulation}: SCIP did not certify ({res.reason}); enumerating the follower's "
            "policies")
        enum = enumerated()
        if enum.ok and enum.certificate == "global":
            return EquilibriumInterval(**{**enum.__dict__, "seconds": enum.seconds + res.seconds,
                                          "details": dict(enum.details, scip=res.reason)})
    if solver in ("auto", "enumerate") and res.solver == "scip" and not res.ok:
        say(f"{formulation}: SCIP did not certify ({res.reason}); IPOPT")
        local = _solve_formulation(mdp, formulation, alpha, "ipopt", starts, seed, time_limit,
                                   pal_reduction, log, ipopt_mode)
        details = dict(local.details, scip=res.reason)
        return EquilibriumInterval(**{**local.__dict__, "details": details,
                                      "seconds": local.seconds + res.seconds})
    return res


def _solve_formulation(mdp, formulation, alpha, which, starts, seed, time_limit, pal_reduction,
                       log, ipopt_mode="auto") -> EquilibriumInterval:
    if ipopt_mode not in ("auto", "homotopy", "polish"):
        raise ValueError(f"unknown ipopt_mode {ipopt_mode!r} (auto | homotopy | polish)")
    t0 = time.perf_counter()
    polish_only = which == "ipopt" and (
        ipopt_mode == "polish" or (ipopt_mode == "auto" and live_pairs(mdp) > POLISH_ONLY_PAIRS))
    if polish_only and pal_reduction == "closed_form":
        # the polish fixes one side of each pair to 0; a squared-norm side is degenerate there
        pal_reduction = "closed_form_split"
    bm = build(mdp, formulation, alpha=alpha, pal_reduction=pal_reduction)
    m = bm.model
    if which == "scip":
        backend = Scip(time_limit=time_limit, gap=SCIP_GAP, abs_gap=SCIP_ABS_GAP)
        reduction, kw = ExactProduct(), {}
    elif which == "ipopt":
        schedule, warm_schedule = ((), ()) if polish_only else (HOMOTOPY, WARM_SCHEDULE)
        backend, reduction = Ipopt(tol=1e-9, max_iter=3000), Scholtes(schedule=schedule)
        # cold starts: the model's current values (the build's start; in the interval steps the
        # leader-optimal point) and starts - 1 random follower-optimal points
        kw = {"starts": min(starts, 1), "x0s": structured_starts(bm)}
    else:
        raise ValueError(f"unknown solver {which!r} (ipopt | scip | auto)")
    say = log or (lambda msg: None)
    fail = lambda why: EquilibriumInterval(formulation, "failed", reason=why, alpha=bm.alpha,
                                           solver=which, seconds=time.perf_counter() - t0)
    n_starts = 1 if which == "scip" else starts + len(kw.get("x0s", ()))
    structured = ()

    say(f"{formulation}: leader optimum ({which})")
    set_objective(m, m.leader)
    if which == "ipopt":
        structured = kw["x0s"]
        kw = dict(kw, x0s=random_starts(bm, max(0, starts - 1), seed))
        lead = _ipopt_best(m, backend, reduction, kw, structured, pyo.minimize, warm_schedule)
    else:
        lead = solve_mpec(m, reduction, backend, **kw)
    if not lead.ok:
        return fail(f"leader optimum: {lead.status.value} ({lead.message})")
    L = float(lead.objective)
    proven_gap = abs(L - lead.bound) if (lead.bound is not None and math.isfinite(lead.bound)) else 0.0
    tol = equilibrium_tolerance(bm, L) + proven_gap
    L_check = certify(bm, lead.complementarity_violation).leader_objective
    m.eq_leader_bound = pyo.Constraint(expr=m.leader <= L + tol)
    certificate = lead.certificate
    gaps = [lead.gap] if lead.gap is not None else []
    ends, fallbacks, snapped = {}, {}, {}
    for name, sense in (("min", pyo.minimize), ("max", pyo.maximize)):
        say(f"{formulation}: {name} J(pi, M) over equilibria ({which})")
        set_objective(m, m.true_return, sense)
        if which == "ipopt":
            res = _ipopt_best(m, backend, reduction, kw,
                              list(structured) + [p for _, p in lead.solutions], sense, warm_schedule)
        else:
            res = solve_mpec(m, reduction, backend, **kw)
        if not res.ok and which == "ipopt":
            # no start of this step converged: the leader-optimal point is itself an
            # equilibrium in the band, so it stands as this end (local, and said so)
            say(f"{formulation}: {name} J step failed ({res.message}); the leader optimum stands")
            fallbacks[name] = f"{res.status.value}: {res.message}"
            for v, x in lead.point.items():
                v.set_value(x, skip_validation=True)
            res = lead
        if not res.ok:
            return fail(f"{name} J over equilibria: {res.status.value} ({res.message})")
        if res.certificate != "global":
            certificate = "local"
        if res.gap is not None:
            gaps.append(res.gap)
        eq = certify(bm, res.complementarity_violation)
        leader_at_solution = eq.leader_objective
        if eq.follower_gap > FOLLOWER_GAP_TOL and bm.formulation == "PAL":
            snap_to_best_response(bm)
            eq = certify(bm, res.complementarity_violation)
            snapped[name] = {"leader_objective_before": leader_at_solution,
                             "leader_objective_after": eq.leader_objective}
        if eq.follower_gap > FOLLOWER_GAP_TOL:
            return fail(f"{name} end fails its certificate: follower gap {eq.follower_gap:.3g} "
                        f"> {FOLLOWER_GAP_TOL:g}")
        # recomputed from arrays; the allowance covers the solvers' feasibility tolerance
        if leader_at_solution > max(L, L_check) + tol + FEASIBILITY_SLACK * max(1.0, abs(L)):
            return fail(f"{name} end fails its certificate: leader objective "
                        f"{leader_at_solution:.9g} above L* + tol = {L + tol:.9g}")
        ends[name] = eq
    low, high = ends["min"], ends["max"]
    if low.J > high.J:  # numerical noise: recomputed values decide the order
        low, high = high, low
    details = {"solver_gap": max((g for g in gaps if math.isfinite(g)), default=None),
               "leader_objective_recomputed": L_check}
    if which == "ipopt":
        details["ipopt_mode"] = "polish" if not reduction.schedule else "homotopy"
    if fallbacks:
        details["ends_at_leader_optimum"] = fallbacks
    if snapped:
        details["snapped_to_best_response"] = snapped
    return EquilibriumInterval(formulation, "solved", alpha=bm.alpha, certificate=certificate,
                               solver=which, starts=n_starts, leader_objective=L, tolerance=tol,
                               low=low, high=high, seconds=time.perf_counter() - t0,
                               details=details)
