"""The public API (`import bilevel`) as the README shows it, run as written, and its numbers
against the command line's."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_as_written_and_prints_the_hiding_equilibrium():
    out = subprocess.run([sys.executable, "-c", readme_example()], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    cert, lo, hi = first.split()
    assert cert == "global" and float(lo) == pytest.approx(0.98504, abs=1e-5)
    assert float(hi) == pytest.approx(73.9604, abs=1e-4)
    assert second == "True worst (hiding/decoy)"


def test_api_interval_is_the_cli_json_entry(hidden_goal):
    import bilevel
    interval = bilevel.equilibrium_interval(hidden_goal, "MAL_random_noise", alpha=0.5)
    out = subprocess.run([sys.executable, "-m", "bilevel.solve", "mdps/hidden_goal.yaml", "--json",
                          "--formulations", "MAL_random_noise", "--alpha", "0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    cli = json.loads(out.stdout)["formulations"]["MAL_random_noise"]
    assert cli["J"] == pytest.approx({"min": interval.low.J, "max": interval.high.J}, abs=1e-9)
    assert cli["certificate"] == interval.certificate


def test_verify_flags_an_iterate_whose_policy_is_not_a_best_response(hidden_goal):
    """The decoy policy with the true model: the follower is not a best response there (the goal
    is visible), so verify fails it on eps_pi, which equals J* - J(decoy) in the true model."""
    import bilevel
    interval = bilevel.equilibrium_interval(hidden_goal, "MAL")
    check = bilevel.verify_iterate(hidden_goal, interval.low.policy, np.array(hidden_goal.P), interval)
    assert not check.ok and any("eps_pi" in f for f in check.failed)
    assert check.eps_pi == pytest.approx(interval.high.J - interval.low.J, rel=1e-6)


def test_api_functions_survive_the_import_of_every_submodule(hidden_goal):
    """The facade's names are not shadowed by submodules imported later in the same process."""
    import importlib

    import bilevel
    for name in ("equilibria", "verify", "solve", "report", "studies", "equilibria.exact"):
        importlib.import_module(f"bilevel.{name}")
    assert callable(bilevel.equilibrium_interval) and callable(bilevel.verify_iterate)
    a = bilevel.equilibrium_interval(hidden_goal, "PAL")
    b = bilevel.equilibrium_interval(hidden_goal, "PAL")
    assert a.low.J == b.low.J
