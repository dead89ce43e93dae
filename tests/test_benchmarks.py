"""The scaling benchmark runs end to end on a tiny grid (its timings are never asserted), and
its numbers are the engine's: the IPOPT leader optimum matches SCIP's, the LP's J* the
value iteration's."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bilevel.occupancy import value_iteration

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_scaling_benchmark_on_a_2x2_grid(tmp_path):
    from equilibria_scaling import grid_mdp
    out = tmp_path / "scaling.json"
    r = subprocess.run([sys.executable, "benchmarks/equilibria_scaling.py", "--sizes", "2x2",
                        "--scip-limit", "30", "--no-interval", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "largest grid within 60 s" in r.stdout
    row = json.loads(out.read_text())["rows"][0]
    mdp = grid_mdp("2x2")
    V, _ = value_iteration(mdp.P, mdp.r, mdp.gamma)
    assert row["highs"]["J"] == pytest.approx(float(mdp.rho0 @ V), abs=1e-6)
    assert row["ipopt"]["ok"] and row["scip"]["status"] == "global"
    assert row["ipopt"]["L"] == pytest.approx(row["scip"]["L"], abs=1e-5)
    assert row["ipopt"]["rss_mb"] > 50       # a whole interpreter with Pyomo and IPOPT
