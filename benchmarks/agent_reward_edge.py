"""How crowded the edge of MAL + agent reward's band is on a stochastic MDP: the policies that the
linear part of the MINLP's relaxation admits below the lowest in-band equilibrium found, each
with how far it really lies outside the band (docs/DESIGN.md 5.6).

At an integer point the MINLP's relaxation (module docstring of bilevel.equilibria.exact.minlp)
bounds the leader of every equilibrium whose deterministic policy has true occupancy mu below by
a linear function: minimizing `alpha z - c1 (span_in h + span_out y)` per pair under
`2 h^2 <= mu (z - y)`, `y >= ell_lo mu` gives

    leader >= sum_{s,a} mu(s,a) a(s,a),
    a = (alpha - c1 span_out) ell_lo - c1 r - c1^2 span_in^2 / (8 alpha),   c1 = (1 - alpha)/(1 - g).

So min J(pi, M) over the deterministic policies with `sum mu a <= L* + tol` is a lower bound on
the band's min end. This benchmark lists those policies in the order of J (HiGHS; after each,
a no-good cut over the states it reaches, since policies that agree there have the same
occupancy) and, for each, its leader at the floored fit P_eta less the second-order size of
its best lie,

    C(pi) = c1^2 / (2 alpha) sum_s d(s) Var_{P(.|s,pi(s))}(R + g V^pi_M),

which IPOPT's best lie matches to a few percent (DESIGN 5.6; not a bound). A policy that lies
outside the band by far more than C(pi) could only be excluded one at a time; the listing
counts how many such policies stand between the linear bound and the lowest in-band
equilibrium found. L*, tol and that equilibrium come from one run of the MINLP route.

    python benchmarks/agent_reward_edge.py [--spec garnet:16:3:2:0:neighbors] [--alpha 0.9999]
        [--time-limit 120] [--policies 300] [--seconds 900]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import exact_targets  # noqa: E402
from bilevel.equilibria.exact.agent_reward import agent_reward_interval  # noqa: E402
from bilevel.equilibria.exact.lie_bound import lie_bound, linear_coefficients  # noqa: E402
from bilevel.tabular.evaluation import policy_evaluation  # noqa: E402
from bilevel.tabular.fits import kl_fit, kl_rows  # noqa: E402
from bilevel.tabular.occupancy import occupancy  # noqa: E402
from bilevel.tabular.policies import deterministic_policy  # noqa: E402
from solvers.milp import MILP  # noqa: E402


def policy_terms(mdp, alpha: float, actions) -> dict:
    """From arrays, for a deterministic policy: J(pi, M), its occupancy, the leader at the
    floored fit alpha l(P_eta, mu) - (1 - alpha) V^pi_{P_eta}(rho0), and the second-order lie C(pi)."""
    g, P, R = mdp.gamma, mdp.P, mdp.R
    pi = deterministic_policy(actions, mdp.n_actions)
    Peta = kl_fit(P, mdp.K, mdp.floor)
    mu = occupancy(P, mdp.rho0, g, pi)
    V = policy_evaluation(P, mdp.r, g, pi)
    V_eta = policy_evaluation(Peta, mdp.model_reward(Peta), g, pi)
    leader_fit = alpha * float(np.sum(mu * kl_rows(P, Peta))) - (1 - alpha) * float(mdp.rho0 @ V_eta)
    S = np.arange(mdp.n_states)
    p, f = P[S, actions], R[S, actions] + g * V[None, :]
    mean = np.sum(p * f, axis=1)
    var = np.sum(p * (f - mean[:, None]) ** 2, axis=1)
    c1 = (1 - alpha) / (1 - g)
    lie = c1 ** 2 / (2 * alpha) * float(mu.sum(axis=1) @ var)
    return {"J": float(mdp.rho0 @ V), "mu": mu, "leader_fit": leader_fit, "lie": lie}


def edge(mdp, alpha: float, band: float, J_low: float, policies: int, seconds: float, say=print) -> dict:
    """List the policies with sum mu a <= band in the order of J (module docstring) until J
    reaches J_low, `policies` are listed or `seconds` pass."""
    S, A, g = mdp.n_states, mdp.n_actions, mdp.gamma
    live = ~mdp.terminal
    milp = MILP()
    mu = milp.var((S, A), ub=(np.where(live[:, None], np.inf, 0.0) * np.ones((S, A))).ravel())
    x = milp.binary((S, A))
    milp.set_cost(mu, mdp.r / (1 - g))
    for t in np.flatnonzero(live):
        inflow = mdp.P[:, :, t]
        cols = np.concatenate([mu[t], mu[inflow > 0]])
        coefs = np.concatenate([np.ones(A), -g * inflow[inflow > 0]])
        milp.row(cols, coefs, (1 - g) * mdp.rho0[t], (1 - g) * mdp.rho0[t])
        milp.row(x[t], np.ones(A), 1, 1)
    for s, a in np.ndindex(S, A):
        milp.row([mu[s, a], x[s, a]], [1.0, -1.0], hi=0.0)
    milp.row(mu, linear_coefficients(mdp, alpha), hi=band)
    t0, listed, bounds = time.perf_counter(), [], []
    while len(listed) < policies and time.perf_counter() - t0 < seconds:
        res = milp.solve()
        if res.x is None:
            break
        actions = np.where(live, res.x[x].argmax(axis=1), 0)
        bounds.append(res.objective)
        if res.objective >= J_low - 1e-9 * max(1.0, abs(J_low)):
            break
        terms = policy_terms(mdp, alpha, actions)
        outside = terms["leader_fit"] - terms["lie"] - band
        listed.append({"J": terms["J"], "outside": outside, "lie": terms["lie"]})
        if len(listed) % 20 == 1:
            say(f"{len(listed):>5} J {terms['J']:.5f}  outside the band by {outside:.3g} "
                f"(lie {terms['lie']:.3g})  {time.perf_counter() - t0:.0f} s")
        reached = np.flatnonzero(terms["mu"].sum(axis=1) > 0)
        milp.row(x[reached, actions[reached]], np.ones(reached.size), hi=reached.size - 1)
    return {"listed": listed, "bounds": bounds, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="garnet:16:3:2:0:neighbors")
    ap.add_argument("--alpha", type=float, default=0.9999)
    ap.add_argument("--time-limit", type=float, default=120.0, help="per SCIP solve of the MINLP route")
    ap.add_argument("--policies", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=900.0)
    args = ap.parse_args(argv)
    mdp = exact_targets.load(args.spec)
    res = agent_reward_interval(mdp, args.alpha, time_limit=args.time_limit)
    if not res.ok:
        print(f"the MINLP route failed: {res.reason}")
        return 1
    band = res.leader_objective + res.tolerance
    print(f"{exact_targets.label(args.spec)}, alpha {args.alpha:g}: L* {res.leader_objective:.9g}, "
          f"tol {res.tolerance:.3g}, {res.certificate} interval [{res.low.J:.5f}, {res.high.J:.5f}] "
          f"(proved gaps {res.details.get('proved_gap')})")
    out = edge(mdp, args.alpha, band, res.low.J, args.policies, args.seconds)
    listed, bounds = out["listed"], out["bounds"]
    if bounds and bounds[0] > res.low.J + 1e-6 * max(1.0, abs(res.low.J)):
        print(f"INCONSISTENT: the linear bound {bounds[0]:.9g} lies above an in-band "
              f"equilibrium's J {res.low.J:.9g}")
        return 1
    if not listed:
        print("no policy of the linear relaxation lies below the low end: it is proved")
        return 0
    far = [p["outside"] for p in listed]
    print(f"{len(listed)} policies in {out['seconds']:.0f} s; the linear bound on min J moved "
          f"{bounds[0]:.5f} -> {bounds[-1]:.5f} (low end found {res.low.J:.5f}); outside the "
          f"band by {min(far):.3g} .. {max(far):.3g} (median {np.median(far):.3g}), against lies of "
          f"at most {max(p['lie'] for p in listed):.3g}; in the band: {sum(f <= 0 for f in far)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
