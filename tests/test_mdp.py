"""MDP file format: the reference file loads as specified; bad input gives one clean line."""
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from bilevel.mdp.garnet import garnet
from bilevel.mdp import (MDPError, dump_mdp, ergodicity_report, load_mdp, mdp_from_dict,
                         reachable_states, state_graph)
from tests.conftest import MDPS, ROOT

BASE = yaml.safe_load((MDPS / "hidden_goal.yaml").read_text())


def test_hidden_goal_arrays(hidden_goal):
    m = hidden_goal
    assert m.states == ("A", "B", "C") and m.actions == ("X", "Y")
    assert m.P.shape == (3, 2, 3) and m.R.shape == (3, 2, 3) and m.r.shape == (3, 2)
    assert np.allclose(m.P.sum(axis=-1), 1.0)
    assert m.P[0, 0].tolist() == [0.1, 0.6, 0.3]
    assert m.P[2, :, 2].tolist() == [1.0, 1.0]          # terminal C absorbing
    assert m.R[2].max() == 0.0
    assert m.r[1, 0] == pytest.approx(0.2 * -0.05 + 0.8 * 1.0)
    assert m.rho0.tolist() == [0.0, 1.0, 0.0]
    assert m.gamma == 0.99 and m.horizon == 50
    assert m.terminal.tolist() == [False, False, True]
    assert m.K[:2].all() and m.K[2, :, 2].all() and not m.K[2, :, :2].any()


def test_support_kinds_and_graph(hidden_goal):
    m = mdp_from_dict(dict(BASE, model_support="true"))
    assert (m.K[:2] == (m.P[:2] > 0)).all()
    m = mdp_from_dict(dict(BASE, model_support="neighbors"))
    # B's successors are B, C (X) and A, B (Y): neighbors = {A, B, C}
    assert m.K[1].all()
    g = state_graph(hidden_goal)
    assert set(g.successors("B")) == {"A", "B", "C"}
    assert g["B"]["C"]["actions"]["X"] == (0.8, 1.0)
    assert reachable_states(hidden_goal).all()
    rep = ergodicity_report(hidden_goal)
    assert rep["closed_classes"] == [["C"]] and not rep["strongly_connected"]
    assert ergodicity_report(load_mdp(MDPS / "hidden_goal_ergodic.yaml"))["strongly_connected"]


def test_explicit_support_and_initial_mapping():
    d = dict(BASE, initial={"A": 0.25, "B": 0.75},
             model_support={"B": {"X": ["B", "C", "A"]}})
    m = mdp_from_dict(d)
    assert m.rho0.tolist() == [0.25, 0.75, 0.0]
    assert m.K[1, 0].tolist() == [True, True, True]
    assert m.K[1, 1].tolist() == [True, True, False]   # unspecified pairs default to the true support


def test_dump_round_trips():
    """Every number survives, R also off the support of P: with support `all` a model may move
    mass there and its reward rhat = sum Phat R uses it (a Garnet draws R on every s')."""
    from bilevel.cache import mdp_fingerprint
    for m in [load_mdp(MDPS / "hidden_goal.yaml"), garnet(4, 3, 2, seed=5),
              load_mdp(MDPS / "grid_hidden_goal.yaml")]:
        m2 = mdp_from_dict(yaml.safe_load(dump_mdp(m)))
        assert np.array_equal(m.P, m2.P) and np.array_equal(m.R, m2.R)
        assert np.array_equal(m.K, m2.K) and np.array_equal(m.rho0, m2.rho0)
        assert mdp_fingerprint(m) == mdp_fingerprint(m2)
    g = garnet(4, 3, 2, seed=5)
    assert (g.R[(g.P == 0) & g.K] != 0).any()     # the case the old dump lost


def test_all_shipped_mdps_load():
    for f in sorted(MDPS.glob("*.yaml")):
        m = load_mdp(f)
        assert np.allclose(m.P.sum(-1), 1.0), f


def test_gridworld_compiles(tmp_path):
    m = load_mdp(MDPS / "grid_hidden_goal.yaml")
    assert m.n_actions == 4 and m.n_states == 22
    s = m.states.index("r0c0")
    up, right = m.actions.index("up"), m.actions.index("right")
    assert m.P[s, up, s] == pytest.approx(0.9 + 0.05)    # wall above; slip left also stays
    assert m.P[s, right, m.states.index("r0c1")] == pytest.approx(0.9)
    d = m.states.index("r0c1")
    assert m.terminal[d] and m.R[s, right, d] == 1.0
    g = m.states.index("r4c4")
    assert m.R[g, m.actions.index("down"), g] == 0.75    # staying on the goal pays
    # neighbors support: a model may only predict grid neighbours or staying
    assert m.K[s, up].sum() == 3


def _write(tmp_path, doc, name="m.yaml"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


BAD = {
    "malformed": ("name: [unclosed\n", "malformed YAML"),
    "unknown state": (dict(BASE, transitions={**BASE["transitions"], "B": {"X": {"Z": 1.0}, "Y": {"A": 1.0}}}),
                      "unknown state 'Z'"),
    "unknown action": (dict(BASE, transitions={**BASE["transitions"], "B": {"W": {"B": 1.0}, "X": {"B": 1.0}, "Y": {"A": 1.0}}}),
                       "unknown action 'W'"),
    "row sum": (dict(BASE, transitions={**BASE["transitions"], "B": {"X": {"B": 0.2, "C": 0.7}, "Y": {"A": 1.0}}}),
                "transitions.B.X: probabilities of state B, action X sum to 0.9"),
    "negative": (dict(BASE, transitions={**BASE["transitions"], "B": {"X": {"B": -0.2, "C": 1.2}, "Y": {"A": 1.0}}}),
                 "negative probability"),
    "gamma high": (dict(BASE, gamma=1.0), "gamma: must lie in (0, 1)"),
    "gamma low": (dict(BASE, gamma=0.0), "gamma: must lie in (0, 1)"),
    "gamma text": (dict(BASE, gamma="high"), "gamma: must be a number"),
    "terminal with transitions": (dict(BASE, terminal=["C", "A"]), "transitions.A: a terminal state"),
    "missing initial": ({k: v for k, v in BASE.items() if k != "initial"}, "initial: missing"),
    "support excludes": (dict(BASE, model_support={"B": {"X": ["B"]}}),
                         "model_support.B.X: model support excludes true transition(s) to C"),
    "support kind": (dict(BASE, model_support="some"), "model_support: must be one of"),
    "missing action": (dict(BASE, transitions={**BASE["transitions"], "B": {"X": {"B": 1.0}}}),
                       "missing action 'Y'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_one_line_error(tmp_path, case):
    doc, expected = BAD[case]
    p = _write(tmp_path, doc)
    with pytest.raises(MDPError) as e:
        load_mdp(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p)) and expected in msg, msg


def test_missing_file_error(tmp_path):
    with pytest.raises(MDPError, match="file does not exist"):
        load_mdp(tmp_path / "nope.yaml")


@pytest.mark.parametrize("case", ["row sum", "gamma high", "malformed", "support excludes"])
def test_cli_bad_input_exit_2_no_traceback(tmp_path, case):
    p = _write(tmp_path, BAD[case][0])
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(p)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr and str(p) in lines[0]
    assert BAD[case][1] in lines[0]


def test_cli_missing_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", str(tmp_path / "x.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "file does not exist" in out.stderr and "Traceback" not in out.stderr


# --------------------------------------------------------------------------- fuzzing

names = st.sampled_from(["A", "B", "C", "X", "Y", "Z", 1, True, None, ""])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                    st.text(max_size=3), names)
values = st.recursive(scalars, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(names, ch, max_size=3),
                      max_leaves=12)


def _mutate(draw_key, value):
    d = dict(BASE)
    d[draw_key] = value
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(set(BASE) | {"gridworld", "model_floor", "bogus"})), values)
def test_fuzz_loader_raises_only_mdp_error(key, value):
    try:
        mdp_from_dict(_mutate(key, value))
    except MDPError:
        pass


@settings(max_examples=150, deadline=None)
@given(values)
def test_fuzz_loader_whole_document(doc):
    try:
        mdp_from_dict(doc)
    except MDPError:
        pass


def test_gridworld_rejects_non_letter_terminal():
    with pytest.raises(MDPError, match="gridworld.terminal"):
        mdp_from_dict({"gamma": 0.9, "gridworld": {"map": ["SD"], "terminal": [{}]}})


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["map", "slip", "rewards", "terminal", "step_reward"]), values))
def test_fuzz_gridworld(spec):
    try:
        mdp_from_dict({"gamma": 0.9, "gridworld": spec})
    except MDPError:
        pass
