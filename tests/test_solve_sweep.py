"""One `bilevel.solve` runs its formulations (and an alpha sweep's points) as independent sweep
tasks: on a 2-worker local cluster the exit status, the JSON document and the table are those
of the serial run in this process."""
import json
import re
import subprocess
import sys

import pytest

from conftest import MDPS, ROOT, without_seconds


def solve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bilevel.solve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def table(text: str) -> list[str]:
    """The printed table with the trailing seconds column dropped."""
    return [re.sub(r"\s+[\d.]+$", "", line) for line in text.splitlines()]


def test_two_local_workers_give_the_serial_document_table_and_exit_status():
    f = str(MDPS / "hidden_goal.yaml")
    runs = {w: solve(f, "--json", "--workers", w, "-q") for w in ("0", "2")}
    assert runs["0"].returncode == runs["2"].returncode == 0
    serial, parallel = (json.loads(runs[w].stdout) for w in ("0", "2"))
    assert without_seconds(parallel) == without_seconds(serial)
    assert set(serial["formulations"]) == {"PAL", "MAL", "MAL_agent_reward", "MAL_random_noise",
                                           "MAL_agent_true_reward"}
    # the numbers themselves: PAL is [J*, J*] with J* from the document's optimum
    J = serial["formulations"]["PAL"]["J"]
    assert J["min"] == J["max"] == pytest.approx(serial["optimal"]["J"], rel=1e-12)
    tables = {w: solve(f, "--workers", w, "-q", "--formulations", "PAL,MAL") for w in ("0", "2")}
    assert tables["0"].returncode == tables["2"].returncode == 0
    assert table(tables["2"].stdout) == table(tables["0"].stdout)


def test_a_task_that_raises_is_the_same_failed_entry_on_the_cluster(hidden_goal):
    """A formulation whose solve raises inside its task (here: a name no formulation has) is a
    `failed` entry with the exception as its reason, next to the solved ones, in both paths."""
    from bilevel.equilibria.document import solve_to_dict
    serial = solve_to_dict(hidden_goal, ["PAL", "NOPE"])
    parallel = solve_to_dict(hidden_goal, ["PAL", "NOPE"], sweep={"workers": 2, "progress": False})
    assert without_seconds(parallel) == without_seconds(serial)
    assert serial["formulations"]["PAL"]["status"] == "solved"
    bad = serial["formulations"]["NOPE"]
    assert bad["status"] == "failed" and bad["reason"].startswith("ValueError") and "NOPE" in bad["reason"]
