from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MDPS = ROOT / "mdps"


@pytest.fixture(scope="session")
def hidden_goal():
    from bilevel.mdp import load_mdp
    return load_mdp(MDPS / "hidden_goal.yaml")
