"""The command-line interfaces say what happened: bad --alpha keys are errors, one formulation's
crash is a recorded failure (the others are still solved), JSON never holds NaN or Infinity,
failures give exit status 1, verify needs a run's alpha and tells inside / within tolerance /
outside the exact interval apart."""
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bilevel.mdp import dump_mdp
from bilevel.tabular import kl_fit
from bilevel.rl.record import RunRecord
from conftest import MDPS

solve = importlib.import_module("bilevel.solve")
common = importlib.import_module("bilevel.cli.common")
document = importlib.import_module("bilevel.equilibria.document")
verify = importlib.import_module("bilevel.verify")
report = importlib.import_module("bilevel.report.cli")
report_data = importlib.import_module("bilevel.report.data")
studies = importlib.import_module("bilevel.studies.cli")
fixes = importlib.import_module("bilevel.studies.fixes")
theorem = importlib.import_module("bilevel.studies.theorem")
mal_terms = importlib.import_module("bilevel.studies.mal_terms")
sweep_task = importlib.import_module("bilevel.sweep.task")

HIDDEN = MDPS / "hidden_goal.yaml"
EQ = Path(__file__).parent / "data" / "hidden_goal_equilibria.json"
GOAL = np.array([[0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])


def strict_json(text: str):
    """json.loads that rejects NaN and +-Infinity (not JSON)."""
    def bad(const):
        raise AssertionError(f"{const} written to JSON")
    return json.loads(text, parse_constant=bad)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# --------------------------------------------------------------------------- 1. solve --alpha

@pytest.mark.parametrize("text, key", [
    ("FOO=0.5", "FOO"),
    ("PAL=0.5", "PAL"),
    ("MAL=0.5", "MAL"),
    ("MAL_random_noise=0.5,mal_agent_reward=0.9", "mal_agent_reward"),
    ("MAL_random_noise=", "MAL_random_noise"),
    ("MAL_random_noise=0.5=0.6", "MAL_random_noise"),
    ("MAL_random_noise=0.5,0.9", "0.9"),
    ("MAL_agent_reward=x", "MAL_agent_reward"),
])
def test_solve_rejects_a_bad_alpha_key_or_malformed_alpha(text, key, capsys):
    rc = solve.main([str(HIDDEN), "--formulations", "PAL", "--alpha", text])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "--alpha" in line and key in line


def test_solve_alpha_for_a_formulation_with_alpha_is_accepted():
    assert common._parse_alpha("MAL_random_noise=0.3, MAL_agent_reward=1") == {
        "MAL_random_noise": 0.3, "MAL_agent_reward": 1.0}
    assert common._parse_alpha("0.25") == 0.25


# --------------------------------------------------------------------------- 2. one crash

@pytest.fixture
def mal_crashes(monkeypatch):
    real = document.solve_formulation

    def fake(mdp, formulation, *a, **kw):
        if formulation == "MAL":
            raise RuntimeError("boom\nin the MILP")
        return real(mdp, formulation, *a, **kw)

    monkeypatch.setattr(document, "solve_formulation", fake)


def test_solve_records_one_formulations_crash_and_solves_the_others(mal_crashes, capsys):
    rc = solve.main([str(HIDDEN), "--formulations", "PAL,MAL,MAL_random_noise", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    doc = strict_json(out)
    mal = doc["formulations"]["MAL"]
    assert mal["status"] == "failed" and mal["reason"] == "RuntimeError: boom in the MILP"
    assert doc["formulations"]["PAL"]["status"] == "solved"
    noise = doc["formulations"]["MAL_random_noise"]
    assert noise["status"] == "solved" and noise["alpha"] == 0.5
    assert "Traceback" not in err and "MAL failed" in err


def test_solve_table_shows_the_failed_formulation(mal_crashes, capsys):
    assert solve.main([str(HIDDEN), "--formulations", "PAL,MAL"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: RuntimeError: boom in the MILP" in out
    assert "PAL" in out and "[73.96, 73.96]" in out


# --------------------------------------------------------------------------- 3. no NaN in JSON

def test_json_clean_replaces_nan_and_infinities_everywhere():
    obj = {"a": float("nan"), "b": [1.0, math.inf, (-math.inf, 2)], "c": np.float64("nan"),
           "d": np.array([1.0, np.nan]), "e": {"f": np.float32(np.inf), "g": np.int64(3)},
           "h": np.bool_(True), "i": "NaN"}
    assert common.json_clean(obj) == {"a": None, "b": [1.0, None, [None, 2]], "c": None,
                                     "d": [1.0, None], "e": {"f": None, "g": 3}, "h": True,
                                     "i": "NaN"}
    assert strict_json(common.json_dumps(obj))["d"] == [1.0, None]


def test_solve_json_never_holds_nan(monkeypatch, capsys):
    class Fake:
        def to_json(self):
            return {"status": "solved", "alpha": None, "seconds": 0.0, "certificate": "global",
                    "solver": "exact", "starts": 0, "leader_objective": 0.0, "tolerance": math.nan,
                    "solver_gap": None, "proved_gap": {"min": math.inf, "max": 0.0},
                    "J": {"min": 1.0, "max": 2.0}, "episode_reward": None,
                    "equilibria": {"min": {}, "max": {}}}

    monkeypatch.setattr(document, "solve_formulation", lambda *a, **kw: Fake())
    assert solve.main([str(HIDDEN), "--formulations", "MAL", "--json"]) == 0
    d = strict_json(capsys.readouterr().out)["formulations"]["MAL"]
    assert d["tolerance"] is None and d["proved_gap"] == {"min": None, "max": 0.0}


def _no_horizon_mdp(tmp_path, hidden_goal):
    path = tmp_path / "hidden_goal_no_horizon.yaml"
    path.write_text(dump_mdp(hidden_goal.with_(horizon=None)))
    return path


def test_verify_json_never_holds_nan(tmp_path, hidden_goal, capsys):
    """Without a horizon the episode reward is NaN: it is written as null."""
    path = _no_horizon_mdp(tmp_path, hidden_goal)
    rec = RunRecord(mdp="hidden_goal", mdp_path=str(path), formulation="PAL", algorithm="inner-outer",
                    alpha=None, seed=0, config={}, policy=GOAL,
                    model=kl_fit(hidden_goal.P, hidden_goal.K, hidden_goal.floor), curve=(),
                    env_samples=0, seconds=0.0, final={})
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / rec.filename).write_text(rec.to_json())
    assert verify.main([str(runs), "--equilibria", str(EQ), "--json"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out[0]["episode_reward"] is None and out[0]["verdict"] == "verified"


@pytest.fixture(scope="module")
def pal_doc():
    from bilevel.mdp import load_mdp
    return document.solve_to_dict(load_mdp(HIDDEN), formulations=["PAL"])


def test_report_json_never_holds_nan_and_a_failed_formulation_exits_1(pal_doc, tmp_path, capsys):
    doc = json.loads(json.dumps(pal_doc))
    doc["formulations"]["PAL"]["solver_gap"] = math.nan
    doc["formulations"]["MAL"] = {"status": "failed", "alpha": None, "seconds": 0.1,
                                  "reason": "RuntimeError: boom"}
    eq = tmp_path / "eq.json"
    eq.write_text(json.dumps(doc))            # Python writes NaN here; the report must not
    out = tmp_path / "report"
    rc = report.main([str(HIDDEN), "--equilibria", str(eq), "--no-sweep", "--out", str(out), "-q"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "MAL" in line
    data = strict_json((out / "data.json").read_text())
    assert data["formulations"]["PAL"]["solver_gap"] is None
    assert strict_json((out / "equilibria.json").read_text())["formulations"]["MAL"]["status"] == "failed"
    assert "exact solve failed" in (out / "report.md").read_text()


def test_report_exits_0_when_everything_solved(pal_doc, tmp_path, capsys):
    eq = tmp_path / "eq.json"
    eq.write_text(json.dumps(pal_doc))
    assert report.main([str(HIDDEN), "--equilibria", str(eq), "--no-sweep",
                        "--out", str(tmp_path / "r"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_report_exits_1_when_a_sweep_point_failed(pal_doc, tmp_path, monkeypatch, capsys):
    eq = tmp_path / "eq.json"
    eq.write_text(json.dumps(pal_doc))
    rows = [{"alpha": 0.5, "status": "solved", "certificate": "global", "J": {"min": 1.0, "max": 2.0},
             "episode_reward": {"min": 1.0, "max": 2.0}},
            {"alpha": 0.9, "status": "failed", "reason": "RuntimeError: boom"}]
    monkeypatch.setattr(report_data, "sweeps", lambda mdp, alphas, log=None, sweep=None: {"MAL_random_noise": rows})
    rc = report.main([str(HIDDEN), "--equilibria", str(eq), "--alphas", "0.5,0.9",
                      "--out", str(tmp_path / "r"), "-q"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "MAL_random_noise" in line and "0.9" in line


def test_report_reads_a_counterexample_with_a_failed_row(pal_doc, tmp_path):
    """A failed counterexample row is null in counterexample.json: the report shows n/a."""
    d = tmp_path / "studies"
    d.mkdir()
    (d / "counterexample.json").write_text(json.dumps({"solver": "scip", "failed": ["k=1 MAL"], "rows": [
        {"k": 1.0, "J_star": 74.0, "mal_min_J": None, "mal_gap": None, "pal_min_J": None,
         "pal_gap": None, "pal_closed_form_gap": 0.0, "mal_certificate": "failed: boom",
         "pal_certificate": "failed: boom", "seconds": 0.1}]}))
    st = report_data.studies_data(str(d))
    assert st["counterexample"]["rows"][0]["gap_per_k"] is None


# --------------------------------------------------------------------------- 4. studies exit 1

def test_worst_gap_records_a_crash_as_a_failed_result(monkeypatch):
    import bilevel.equilibria.routing as eqm

    def boom(*a, **kw):
        raise ValueError("no good")

    monkeypatch.setattr(eqm, "solve_formulation", boom)
    r = fixes.worst_gap(fixes.fixes_mdp(0, 0), "MAL", None, "scip", 1.0)
    assert not r.ok and r.reason == "ValueError: no good" and math.isnan(r.gap)


def _fake_gap(mdp, f, a=None, solver="scip", time_limit=10.0, starts=8):
    ok = f != "MAL_random_noise"
    return fixes.FixResult(mdp=mdp.name, formulation=f, alpha=a, ok=ok,
                           gap=1.0 if ok else float("nan"), solver=solver,
                           certificate="global" if ok else "none", seconds=0.0,
                           reason="" if ok else "RuntimeError: boom")


@pytest.fixture
def in_process(monkeypatch):
    """The studies' time-limited tasks run in this process (`--workers 0` and no child
    process), so a monkeypatched solver applies."""
    monkeypatch.setattr(sweep_task, "call_in_child",
                        lambda fn, kwargs, time_limit: sweep_task.call(fn, kwargs))


def test_studies_fixes_exits_1_when_a_task_failed_and_writes_no_nan(tmp_path, monkeypatch, capsys,
                                                                    in_process):
    monkeypatch.setattr(fixes, "worst_gap", _fake_gap)
    args = ["fixes", "--mdps", "2", "--alphas", "0.5", "--agent-mdps", "0", "--no-pal",
            "--out", str(tmp_path), "-q", "--workers", "0"]       # -q: no progress lines
    assert studies.main(args) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "2 task(s) failed" in line and "MAL_random_noise(0.5)" in line
    pay = strict_json((tmp_path / "fixes.json").read_text())
    assert pay["failed"] and [r["gap"] for r in pay["results"]
                              if r["formulation"] == "MAL_random_noise"] == [None, None]
    stored = [strict_json(f.read_text()) for f in (tmp_path / "tasks").glob("*.json")]
    bad = [r["result"] for r in stored if r["status"] == "ok" and not r["result"]["ok"]]
    assert len(stored) == 8 and len(bad) == 2 and all(r["gap"] is None for r in bad)
    # a stored record read back: a failed result is NaN again, not None
    unit = ("MAL_random_noise", 0.5, "scip", 10.0)
    assert math.isnan(fixes.fix_from_record({"status": "ok", "result": bad[0]}, "m", unit).gap)
    assert studies.main(args) == 1                               # the same, from the records
    assert one_error_line(capsys.readouterr().err) == line


def test_studies_fixes_exits_0_when_every_task_solved(tmp_path, monkeypatch, capsys, in_process):
    monkeypatch.setattr(fixes, "worst_gap", lambda mdp, f, a=None, solver="scip", time_limit=10.0,
                        starts=8: fixes.FixResult(mdp=mdp.name, formulation=f, alpha=a, ok=True,
                                                  gap=0.0, solver=solver, certificate="global",
                                                  seconds=0.0))
    assert studies.main(["fixes", "--mdps", "1", "--alphas", "0.5", "--agent-mdps", "0",
                         "--no-pal", "--out", str(tmp_path), "-q", "--workers", "0"]) == 0
    assert capsys.readouterr().err == ""


def test_studies_counterexample_exits_1_on_a_failed_solve_and_writes_null(tmp_path, monkeypatch,
                                                                          capsys, in_process):
    import bilevel.equilibria.routing as eqm

    def boom(mdp, formulation, **kw):
        raise RuntimeError(f"{formulation} broke")

    monkeypatch.setattr(eqm, "solve_formulation", boom)
    assert studies.main(["counterexample", "--scales", "1", "--out", str(tmp_path),
                         "--workers", "0", "-q"]) == 1
    assert "MAL broke" in one_error_line(capsys.readouterr().err)
    row = strict_json((tmp_path / "counterexample.json").read_text())["rows"][0]
    assert row["mal_gap"] is None and row["mal_certificate"] == "failed: RuntimeError: MAL broke"


def test_studies_theorem_exits_1_when_the_mal_terms_failed(tmp_path, monkeypatch, capsys,
                                                           in_process):
    monkeypatch.setattr(mal_terms, "mal_terms", lambda mdp, solver="scip", time_limit=10.0: None)
    assert studies.main(["theorem", "--mdps", "1", "--mal-mdps", "1", "--early-mdps", "0",
                         "--out", str(tmp_path), "--workers", "0", "-q"]) == 1
    assert "MAL terms" in one_error_line(capsys.readouterr().err)
    pay = strict_json((tmp_path / "theorem.json").read_text())
    assert len(pay["failed"]) == 4 and pay["violations"] == []


# --------------------------------------------------------------------------- 5. verify

def _record(formulation, alpha, model, hidden_goal, policy=GOAL):
    return RunRecord(mdp="hidden_goal", mdp_path=str(HIDDEN), formulation=formulation,
                     algorithm="inner-outer", alpha=alpha, seed=0, config={}, policy=policy,
                     model=model, curve=(), env_samples=0, seconds=0.0, final={})


@pytest.mark.parametrize("formulation", ["MAL_random_noise", "MAL_agent_reward"])
@pytest.mark.parametrize("how", ["null", "missing"])
def test_verify_rejects_a_record_without_its_alpha(formulation, how, tmp_path, hidden_goal, capsys):
    rec = _record(formulation, None, kl_fit(hidden_goal.P, hidden_goal.K, hidden_goal.floor),
                  hidden_goal)
    d = rec.to_dict()
    if how == "missing":
        del d["alpha"]
    f = tmp_path / rec.filename
    f.write_text(json.dumps(d))
    assert verify.main([str(tmp_path), "--equilibria", str(EQ)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(f) in line and "alpha" in line


def test_verify_runs_rejects_an_in_memory_record_without_alpha(hidden_goal):
    rec = _record("MAL_random_noise", None, kl_fit(hidden_goal.P, hidden_goal.K, hidden_goal.floor),
                  hidden_goal)
    with pytest.raises(verify.VerifyInputError, match=r"run7\.json: .*alpha"):
        verify.verify_runs([("run7.json", rec)], verify.load_equilibria(EQ))


def _pal_entry(lo, hi, **extra):
    return {"status": "solved", "alpha": None, "J": {"min": lo, "max": hi},
            "episode_reward": None, "leader_objective": -hi, **extra}


@pytest.fixture(scope="module")
def pal_run(hidden_goal):
    rec = _record("PAL", None, kl_fit(hidden_goal.P, hidden_goal.K, hidden_goal.floor), hidden_goal)
    J = verify.check_run(rec, hidden_goal, _pal_entry(0.0, 100.0), 100.0).J
    return rec, J


def test_verify_tells_inside_within_tolerance_and_outside_apart(pal_run, hidden_goal):
    rec, J = pal_run
    inside = verify.check_run(rec, hidden_goal, _pal_entry(J - 1.0, J + 1.0), J)
    assert inside.position == "inside" and inside.ok and inside.outside_by == 0.0
    near = verify.check_run(rec, hidden_goal, _pal_entry(J + 1e-5, J + 1e-5), J)
    assert near.position == "within tolerance" and near.ok
    assert near.tol_J == pytest.approx(1e-6 * (J + 1e-5))
    # 1e-3 off an exact interval: outside (the old rule, 1% of R_max/(1-gamma) ~ 0.75, accepted it)
    far = verify.check_run(rec, hidden_goal, _pal_entry(J + 1e-3, J + 1e-3), J)
    assert far.position == "outside" and not far.ok
    assert any("outside exact interval" in f for f in far.failed)
    assert verify.format_checks([inside, near, far]).count("within tolerance") == 1
    assert far.to_dict()["position"] == "outside"


@pytest.mark.parametrize("extra", [
    {"tolerance": 2e-3},
    {"solver_gap": 2e-3},
    {"proved_gap": {"min": 2e-3, "max": 0.0}},
    {"equilibria": {"min": {"follower_gap": 2e-3}, "max": {"follower_gap": 0.0}}},
])
def test_verify_tolerance_is_the_intervals_own_precision(extra, pal_run, hidden_goal):
    rec, J = pal_run
    c = verify.check_run(rec, hidden_goal, _pal_entry(J + 1e-3, J + 1e-3, **extra), J)
    assert c.tol_J == pytest.approx(2e-3) and c.position == "within tolerance" and c.ok


def test_verify_unproved_end_does_not_widen_the_tolerance(pal_run, hidden_goal):
    rec, J = pal_run
    c = verify.check_run(rec, hidden_goal,
                         _pal_entry(J + 1e-3, J + 1e-3, proved_gap={"min": None, "max": math.inf}),
                         J)
    assert c.position == "outside" and any("no proved gap" in n for n in c.notes)


def test_solve_table_notes_the_rows_that_are_not_limit_intervals(hidden_goal):
    """The table's header promises limit intervals; a row from a route without a limit (MAL +
    agent reward's enumeration here) is at the file's floor and band, and says so with its band.
    A limit row (MAL's exact route) gets no such note, and under --epsilon (header: at the
    floor) no row does."""
    import io
    doc = document.solve_to_dict(hidden_goal, formulations=["MAL", "MAL_agent_reward"])
    agent = doc["formulations"]["MAL_agent_reward"]
    assert not agent.get("limit") and doc["formulations"]["MAL"]["limit"]

    def lines_after(d, name):
        buf = io.StringIO()
        solve.print_table(hidden_goal, d, out=buf)
        rows = buf.getvalue().splitlines()
        i = next(k for k, line in enumerate(rows) if line.startswith(name))
        return rows[i + 1]

    note = lines_after(doc, "MAL + agent reward")
    assert "note: at the file's floor eta=1e-06" in note
    assert f"L* + {agent['tolerance']:.2g}" in note
    assert "floor" not in lines_after(doc, "MAL   ")
    eps_doc = {**doc, "formulations": {f: {**d, "epsilon": 0.01} for f, d in doc["formulations"].items()}}
    assert "note: at the file's floor" not in lines_after(eps_doc, "MAL + agent reward")
