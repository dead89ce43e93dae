"""Large inputs: the MDP summary lists at most a few names per list, and before solving a large
model or MPEC, `bilevel.solve` says how large it is and which route it takes. The MDPs are built
in code; nothing here solves them."""
import importlib
import io
import re

import networkx as nx
import numpy as np
import pytest

from bilevel.mdp.garnet import garnet
from bilevel.mdp.graph import _graph_from_P
from bilevel.mdp import ergodicity_report, model_size, reachable_states
from conftest import MDPS

solve = importlib.import_module("bilevel.solve")

NAME = r"\bs\d+(?:=[\d.e-]+)?"
NAMES_IN_A_LIST = re.compile(rf"(?:{NAME}, ){{8}}{NAME}")     # 9 or more names in a row


@pytest.fixture(scope="module")
def big():
    """3000 states, 2 actions, support all: 18 million model entries."""
    return garnet(3000, 2, 2, support="all")


@pytest.fixture(scope="module")
def many_actions():
    """One state, 20001 actions: few model entries but S*A > 20000."""
    return garnet(1, 20001, 1, support="all")


def test_model_size(big, many_actions):
    assert model_size(big) == {"states": 3000, "actions": 2, "pairs": 6000,
                               "model_entries": 18_000_000, "dense_entries": 18_000_000}
    assert model_size(many_actions)["pairs"] == 20001
    assert model_size(many_actions)["model_entries"] == 20001


def test_name_list_truncates_to_eight_names():
    assert solve.name_list(["a", "b"]) == "a, b"
    assert solve.name_list([f"s{i}" for i in range(8)]) == ", ".join(f"s{i}" for i in range(8))
    assert solve.name_list([f"s{i}" for i in range(20)]) == \
        ", ".join(f"s{i}" for i in range(8)) + ", ... (12 more)"


def test_summary_of_a_large_mdp_truncates_every_list_of_names(big):
    out = io.StringIO()
    solve.print_summary(big, {"J": 0.0, "episode_reward": None, "policy": None}, out=out)
    text = out.getvalue()
    assert "... (2992 more)" in text                    # the start distribution (uniform)
    assert re.search(r"closed: \[s\d+(, s\d+){7}, \.\.\. \(\d+ more\)\]", text), text
    assert not NAMES_IN_A_LIST.search(text), text
    assert max(len(line) for line in text.splitlines()) < 400


def test_summary_of_a_small_mdp_lists_every_name(hidden_goal):
    out = io.StringIO()
    solve.print_summary(hidden_goal, solve.optimum(hidden_goal), out=out)
    text = out.getvalue()
    assert "start: B=1; terminal: C;" in text and "closed: [C]" in text and "more)" not in text


def test_reachable_states_agrees_with_per_start_search():
    for seed in range(5):
        m = garnet(40, 2, 1, seed=seed, initial="uniform" if seed % 2 else "first")
        g = _graph_from_P(m.P)
        expect = np.zeros(m.n_states, bool)
        for s in np.flatnonzero(m.rho0 > 0):
            expect[list(nx.descendants(g, int(s)) | {int(s)})] = True
        assert np.array_equal(reachable_states(m), expect)


def test_ergodicity_report_of_a_large_mdp(big):
    rep = ergodicity_report(big)
    assert len(rep["reachable"]) == 3000            # uniform start: every state
    assert sum(len(c) for c in rep["classes"]) == 3000


def test_size_note_for_a_large_model(big):
    note = solve.size_note(big)
    assert "\n" not in note
    assert "18,000,000 model entries" in note and "6,000 state-action pairs" in note
    assert "--solver auto" in note
    assert "PAL exact route" in note and "MAL_agent_reward MPEC with IPOPT (local)" in note
    ipopt = solve.size_note(big, ["MAL"], solver="ipopt")
    assert "--solver ipopt: MAL MPEC with IPOPT (local)" in ipopt


def test_size_note_for_many_state_action_pairs(many_actions):
    note = solve.size_note(many_actions, ["MAL"])
    assert "20,001 model entries" in note and "20,001 state-action pairs" in note


def test_no_size_note_for_a_small_mdp(hidden_goal):
    assert solve.size_note(hidden_goal) is None
    assert solve.size_note(garnet(100, 100, 2, support="all")) is None    # 10^6 entries: not past


def test_solve_prints_the_size_note_before_solving(big, monkeypatch, capsys, tmp_path):
    """main on a large MDP: one note line on stderr before the solve starts (the solve, the
    optimum and the loading are stand-ins here)."""
    seen = {}

    def fake_solve(mdp, forms, *a, **kw):
        seen["stderr"] = capsys.readouterr().err
        return {"mdp": solve.mdp_head(mdp), "optimal": {"J": 0.0, "episode_reward": None},
                "formulations": {}}

    monkeypatch.setattr(solve, "load_mdp", lambda path: big)
    monkeypatch.setattr(solve, "optimum", lambda mdp: {"J": 0.0, "episode_reward": None,
                                                        "policy": None})
    monkeypatch.setattr(solve, "solve_to_dict", fake_solve)
    assert solve.main([str(tmp_path / "big.yaml"), "--formulations", "PAL,MAL", "--json"]) == 0
    notes = [ln for ln in seen["stderr"].splitlines() if ln.startswith("note: large input")]
    assert len(notes) == 1
    assert "18,000,000 model entries" in notes[0] and "PAL exact route, MAL exact route" in notes[0]


def test_solve_prints_no_size_note_for_a_small_mdp(capsys):
    assert solve.main([str(MDPS / "hidden_goal.yaml"), "--formulations", "PAL", "--json"]) == 0
    assert "note: large input" not in capsys.readouterr().err
