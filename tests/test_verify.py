"""verify: accepts correct runs, rejects a policy that is not a best response in its model and a
model fit to other data; exit codes. Uses the hand-written exact hidden_goal fixture."""
import json
from pathlib import Path

import numpy as np
import pytest

from bilevel import verify
from bilevel.tabular import kl_fit, value_iteration
from bilevel.rl.record import RunRecord
from conftest import MDPS

EQ = Path(__file__).parent / "data" / "hidden_goal_equilibria.json"
GOAL = np.array([[0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])     # Y in A and B
DECOY = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])    # X in B


def _record(formulation, policy, model, seed=0, alpha=None):
    return RunRecord(mdp="hidden_goal", mdp_path=str(MDPS / "hidden_goal.yaml"), formulation=formulation,
                     algorithm="inner-outer", alpha=alpha, seed=seed, config={}, policy=policy,
                     model=model, curve=(), env_samples=0, seconds=0.0, final={})


def _hiding_model(m):
    """Fit where the decoy goes (B-X), uniform elsewhere, and B-Y claimed to stay in B."""
    Q = np.where(m.K, 1.0, 0.0)
    Q = Q / Q.sum(-1, keepdims=True)
    Q[1, 0] = kl_fit(m.P, m.K, m.floor)[1, 0]
    Q[1, 1] = [m.floor, 1 - 2 * m.floor, m.floor]
    return Q


def _check(rec, hidden_goal):
    eq = verify.load_equilibria(EQ)
    return verify.check_run(rec, hidden_goal, eq["formulations"][rec.formulation], eq["optimal"]["J"])


def test_accepts_the_exact_pal_solution(hidden_goal):
    c = _check(_record("PAL", GOAL, kl_fit(hidden_goal.P, hidden_goal.K, hidden_goal.floor)), hidden_goal)
    assert c.ok, c.failed
    assert c.eps_M < 1e-9 and c.eps_pi < 1e-6 and c.pal_bound >= c.pal_gap


def test_rejects_policy_that_is_not_a_best_response_in_its_model(hidden_goal):
    """True model, decoy policy: eps_pi = J*(Phat) - J(decoy, Phat) is large."""
    c = _check(_record("PAL", DECOY, kl_fit(hidden_goal.P, hidden_goal.K, hidden_goal.floor)), hidden_goal)
    assert not c.ok
    assert c.eps_pi > 70 and any("best response" in f for f in c.failed)


def test_rejects_model_fit_to_other_data(hidden_goal):
    """Goal policy with the model fit to the decoy's data: eps_M under the goal's occupancy is large."""
    c = _check(_record("MAL", GOAL, _hiding_model(hidden_goal)), hidden_goal)
    assert not c.ok
    assert c.eps_M > verify.TOL_M and any("not fit" in f for f in c.failed)


def test_accepts_mal_decoy_and_names_it(hidden_goal):
    m = hidden_goal
    Q = _hiding_model(m)
    _, pi = value_iteration(Q, np.einsum("ijk,ijk->ij", Q, m.R), m.gamma)
    assert np.allclose(pi[:2], DECOY[:2])
    c = _check(_record("MAL", pi, Q), hidden_goal)
    assert c.ok, c.failed
    assert c.equilibrium.startswith("worst")


def test_cli_exit_codes(tmp_path, hidden_goal, capsys):
    good = _record("PAL", GOAL, kl_fit(hidden_goal.P, hidden_goal.K, hidden_goal.floor))
    (tmp_path / good.filename).write_text(good.to_json())
    assert verify.main([str(tmp_path), "--equilibria", str(EQ)]) == 0
    capsys.readouterr()
    bad = _record("PAL", DECOY, good.model, seed=1)
    (tmp_path / bad.filename).write_text(bad.to_json())
    assert verify.main([str(tmp_path), "--equilibria", str(EQ), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in out] == ["verified", "FAILED"]
    assert verify.main([str(tmp_path / "missing"), "--equilibria", str(EQ)]) == 2
    (tmp_path / "junk.json").write_text("{not json")
    assert verify.main([str(tmp_path), "--equilibria", str(EQ)]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert verify.main([str(empty), "--equilibria", str(EQ)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3


def test_trained_runs_verify(tmp_path, hidden_goal):
    """End to end: short PAL and MAL runs verify against the exact intervals."""
    from bilevel.rl.inner_outer import TrainConfig, train_inner_outer
    for f in ("PAL", "MAL"):
        rec = train_inner_outer(hidden_goal, f, seed=2, cfg=TrainConfig(leader_iters=10, eval_episodes=10),
                                mdp_path=str(MDPS / "hidden_goal.yaml"))
        (tmp_path / rec.filename).write_text(rec.to_json())
    checks = verify.verify_runs(verify.load_runs(tmp_path), verify.load_equilibria(EQ))
    assert all(c.ok for c in checks), [c.failed for c in checks]
