"""The layout keeps its promises: no import cycles (lazy imports included), every module under
400 lines, and the public commands still start."""
import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from conftest import ROOT

PACKAGES = ("bilevel", "solvers")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def import_graph() -> nx.DiGraph:
    """Edges module -> module for every import statement anywhere in a module (also inside
    functions), resolved to the most specific module that exists."""
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):
                    g.add_edge(name, t)
                    break
    return g


def test_the_import_graph_has_no_cycles():
    """A cycle, even through a lazy import inside a function, means two stages depend on each
    other: the pipeline order is broken. (A package may import its own submodules.)"""
    g = import_graph()
    cycles = list(nx.simple_cycles(g, length_bound=6))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_the_check_finds_a_planted_cycle(tmp_path, monkeypatch):
    """The cycle check itself can fail: two modules that import each other are found."""
    pkg = tmp_path / "bilevel"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from bilevel.b import g\n")
    (pkg / "b.py").write_text("from bilevel.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("bilevel",))
    assert list(nx.simple_cycles(import_graph()))


def test_every_module_is_under_400_lines():
    long = {n: len(f.read_text().splitlines()) for n, f in modules().items()}
    long = {n: k for n, k in long.items() if k >= MAX_LINES}
    assert not long, f"modules of {MAX_LINES} lines or more: {long}"


@pytest.mark.parametrize("command", ["solve", "train", "verify", "report", "studies", "garnet", "convert"])
def test_every_command_starts(command):
    out = subprocess.run([sys.executable, "-m", f"bilevel.{command}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert f"bilevel.{command}" in out.stdout
