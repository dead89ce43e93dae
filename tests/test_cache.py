"""Caches are keyed on content (bilevel.cache): a stored result is reused only for the same MDP
content, settings and code, and recomputed otherwise."""

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


def test_a_study_record_of_other_code_is_never_reused(tmp_path, monkeypatch):
    """A fixes-study task's stored record is read back under the same key (the poisoned gap
    comes back: the store is really used), and never once the code version differs."""
    import bilevel.cache as c
    from bilevel.studies import fixes
    from bilevel.sweep import ResultStore, run_sweep
    mdp, unit = fixes.fixes_mdp(1, 0), ("MAL", None, "auto", 5.0)
    store = ResultStore(tmp_path)

    def gap():
        rec = run_sweep([fixes.unit_task(mdp, 1, 0, unit)], store=store, workers=0,
                        progress=False)[0]
        return rec["result"]["gap"]

    truth = gap()
    key = fixes.unit_task(mdp, 1, 0, unit).key
    rec = store.get(key)
    rec["result"]["gap"] = 123.0              # as if written by other code
    store.put(key, rec)
    assert gap() == 123.0                     # same MDP, settings and code: reused
    monkeypatch.setattr(c, "code_version", lambda: "other code")
    assert fixes.unit_task(mdp, 1, 0, unit).key != key
    assert gap() == pytest.approx(truth)      # other code: solved again
