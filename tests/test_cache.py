"""Caches are keyed on content (bilevel.cache): a stored result is reused only for the same MDP
content, settings and code, and recomputed otherwise."""
import json

import numpy as np
import pytest

from bilevel.cache import cache_key, code_version, mdp_fingerprint


def test_fingerprint_follows_content_not_names(hidden_goal):
    renamed = hidden_goal.with_(name="other", source="elsewhere.yaml")
    assert mdp_fingerprint(renamed) == mdp_fingerprint(hidden_goal)
    P = np.array(hidden_goal.P)
    P[0, 0] = np.roll(P[0, 0], 1)
    assert mdp_fingerprint(hidden_goal.with_(P=P)) != mdp_fingerprint(hidden_goal)
    assert mdp_fingerprint(hidden_goal.with_(gamma=0.9)) != mdp_fingerprint(hidden_goal)
    assert mdp_fingerprint(hidden_goal.with_(floor=1e-5)) != mdp_fingerprint(hidden_goal)


def test_key_depends_on_settings_and_code(hidden_goal, monkeypatch):
    import bilevel.cache as c
    k = cache_key(hidden_goal, alpha=0.5)
    assert k == cache_key(hidden_goal, alpha=0.5) != cache_key(hidden_goal, alpha=0.9)
    monkeypatch.setattr(c, "code_version", lambda: "another-version")
    assert c.cache_key(hidden_goal, alpha=0.5) != k
    assert len(code_version()) == 16


def test_report_sweep_is_reused_only_under_the_same_key():
    from bilevel.report.data import build_data
    path = "mdps/hidden_goal.yaml"
    first = build_data(path, sweep_alphas=(0.5,))
    assert first["timings"]["sweep_source"] == "solved"
    again = build_data(path, sweep_alphas=(0.5,), cached=first)
    assert again["timings"]["sweep_source"] == "cached" and again["sweeps"] == first["sweeps"]
    stale = dict(first, sweep_key="written-by-older-code")
    assert build_data(path, sweep_alphas=(0.5,), cached=stale)["timings"]["sweep_source"] == "solved"


def test_fixes_cache_recomputes_a_stale_entry(tmp_path):
    from bilevel.studies import fixes as studies
    settings = {"seed": 0, "solver": "auto", "time_limit": 5.0, "agent_solver": "auto",
                "agent_time_limit": 1.0, "alphas": [0.5], "with_pal": False, "agent_alphas": [],
                "recheck": None}
    first = studies.fixes_for_mdp(1, settings, False, tmp_path)
    f = tmp_path / "fixes1.json"
    doc = json.loads(f.read_text())
    assert all("key" in r for r in doc["results"])
    for r in doc["results"]:               # as if written by other code: the gap is poisoned
        r["key"], r["gap"] = "stale", 123.0
    f.write_text(json.dumps(doc))
    again = studies.fixes_for_mdp(1, settings, False, tmp_path)
    assert [r.gap for r in again] == pytest.approx([r.gap for r in first], nan_ok=True)
    assert 123.0 not in [r.gap for r in again]
