"""The README's model-class table on mdps/linear_hidden_goal.yaml, and the --model-class flag.

The reference values are independent of the engine's routes: J* by value iteration, the decoy's
return by evaluating the deterministic decoy policy in the true MDP.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from bilevel.equilibria.routing import solve_formulation
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import with_model_class
from bilevel.mdp.model_class import TABULAR
from bilevel.tabular.evaluation import policy_return, value_iteration

LINEAR = "mdps/linear_hidden_goal.yaml"


@pytest.fixture(scope="module")
def linear():
    return load_mdp(LINEAR)


@pytest.fixture(scope="module")
def references(linear):
    V, _ = value_iteration(linear.P, linear.r, linear.gamma, tol=1e-12)
    J_star = float(linear.rho0 @ V)
    decoy = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])     # A: Y, B: X (the decoy)
    J_decoy = policy_return(linear.P, linear.r, linear.rho0, linear.gamma, decoy)
    return J_star, J_decoy


@pytest.mark.parametrize("name, end", [("PAL", "decoy"), ("MAL_agent_reward", "decoy"),
                                       ("MAL_random_noise", "decoy"),
                                       ("MAL_agent_true_reward", "optimum")])
def test_linear_class_rows(linear, references, name, end):
    J_star, J_decoy = references
    iv = solve_formulation(linear, name)
    assert iv.status == "solved" and iv.certificate == "global"
    target = J_decoy if end == "decoy" else J_star
    assert iv.low.J == pytest.approx(target, abs=1e-6)
    assert iv.high.J == pytest.approx(target, abs=1e-6)
    assert iv.low.follower_gap <= 1e-6 and iv.high.follower_gap <= 1e-6
    assert linear.model_blocks.distance(iv.low.model) < 1e-9      # a model of the class


def test_linear_class_mal_cannot_hide(linear, references):
    """The tabular MAL interval reaches down to the decoy; no model of the linear class is a
    wall, so the class's MAL interval stays near J* (its low end mixes the decoy in inside the
    band at the file's floor)."""
    J_star, J_decoy = references
    tab = solve_formulation(with_model_class(linear, TABULAR), "MAL")
    assert tab.low.J == pytest.approx(J_decoy, abs=1e-6) and tab.high.J == pytest.approx(J_star, abs=1e-6)
    iv = solve_formulation(linear, "MAL")
    assert iv.status == "solved" and iv.certificate == "global"
    assert iv.high.J == pytest.approx(J_star, abs=1e-6)
    assert J_star - 0.2 < iv.low.J <= J_star + 1e-9
    assert iv.low.policy[1, 0] < 0.01          # B takes the decoy with probability below 1%


def test_model_class_flag(tmp_path):
    """--model-class tabular drops the class (PAL back at J*); naming a class the file does not
    define is a one-line input error with status 2, on solve and on train; train takes the
    file's class by default, and its record says so."""
    run = lambda *a: subprocess.run([sys.executable, *a], capture_output=True, text=True, timeout=300)
    ok = run("-m", "bilevel.solve", LINEAR, "--formulations", "PAL", "--model-class", "tabular", "--json", "-q")
    assert ok.returncode == 0, ok.stderr
    assert '"model_class"' not in ok.stdout
    bad = run("-m", "bilevel.solve", LINEAR, "--model-class", "aggregated")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "model_class" in bad.stderr and LINEAR in bad.stderr
    train = run("-m", "bilevel.train", LINEAR, "--formulations", "MAL", "--seeds", "1", "--iters", "2",
                "--model-class", "aggregated", "--out", str(tmp_path))
    assert train.returncode == 2 and "Traceback" not in train.stderr and "model_class" in train.stderr
    train = run("-m", "bilevel.train", LINEAR, "--formulations", "MAL", "--seeds", "1", "--iters", "2",
                "--workers", "0", "--fresh", "--out", str(tmp_path))
    assert train.returncode == 0, train.stderr
    record = json.loads((tmp_path / "MAL_inner-outer_seed0.json").read_text())
    assert record["model_class"] == "linear"


def test_aggregated_trap_mal_row():
    """README: MAL on aggregated_trap keeps its hiding equilibria down to the worst policy of M
    (stepping into the pit), [min_pi J, J*], certified global; both ends by value iteration
    (on r and on -r) in the true MDP."""
    trap = load_mdp("mdps/aggregated_trap.yaml")
    V_max, _ = value_iteration(trap.P, trap.r, trap.gamma, tol=1e-12)
    V_min, _ = value_iteration(trap.P, -trap.r, trap.gamma, tol=1e-12)
    iv = solve_formulation(trap, "MAL")
    assert iv.status == "solved" and iv.certificate == "global"
    assert iv.low.J == pytest.approx(-float(trap.rho0 @ V_min), abs=1e-5)
    assert iv.high.J == pytest.approx(float(trap.rho0 @ V_max), abs=1e-6)
