"""Read run records and equilibria documents, and check every run against its interval."""
from __future__ import annotations

import json
import time
from pathlib import Path

from bilevel.cli.output import progress
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import MDPError
from bilevel.rl.record import RunRecord
from bilevel.verify.check import RunCheck, VerifyInputError, check_run, require_alpha


def load_runs(path: Path) -> list[tuple[str, RunRecord]]:
    """Run records in DIR (every *.json holding a run; summaries are skipped), or one file."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not path.exists():
        raise VerifyInputError(f"{path}: does not exist")
    runs = []
    for p in files:
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise VerifyInputError(f"{p}: not readable JSON ({e.__class__.__name__})") from None
        if not isinstance(d, dict) or "formulation" not in d:
            continue  # a summary or another file
        try:
            rec = RunRecord.from_dict(d)
        except (TypeError, ValueError) as e:
            raise VerifyInputError(f"{p}: not a run record: {e}") from None
        require_alpha(rec, str(p))
        runs.append((str(p), rec))
    if not runs:
        raise VerifyInputError(f"{path}: no run records (*.json written by python -m bilevel.train)")
    return runs


def load_equilibria(path: Path) -> dict:
    """A saved `bilevel.solve --json` document (bilevel.solve.read_solution)."""
    from bilevel.equilibria.document import read_solution
    try:
        return read_solution(path)
    except ValueError as e:
        raise VerifyInputError(str(e)) from None


def equilibrium_entry(sol: dict, formulation: str, alpha: float | None, where: str) -> dict:
    eq = sol["formulations"].get(formulation)
    if not eq:
        raise VerifyInputError(f"{where}: no exact solution for {formulation}")
    if eq.get("status") != "solved":
        raise VerifyInputError(f"{where}: exact {formulation} not solved: {eq.get('reason', eq.get('status'))}")
    if alpha is not None and eq.get("alpha") is not None and abs(float(eq["alpha"]) - alpha) > 1e-12:
        raise VerifyInputError(f"{where}: {formulation} solved for alpha={eq['alpha']}, run used alpha={alpha}")
    return eq


def verify_runs(runs, equilibria: dict | None = None, log=None,
                occupancy: str | None = None) -> list[RunCheck]:
    """Check every (file, RunRecord); equilibria: a solve output, else solved per MDP, alpha and
    the run's occupancy (`log(msg)` says which, and how long each solve took). `occupancy`: the
    occupancy every run must have trained with (a run with another is an input error)."""
    mdps, solved, out = {}, {}, []
    for file, rec in progress(runs, desc="verify"):
        require_alpha(rec, file)
        if occupancy is not None and rec.occupancy != occupancy:
            raise VerifyInputError(f"{file}: occupancy: the run trained with {rec.occupancy}, "
                                   f"--occupancy asks for {occupancy}")
        try:
            mdp = mdps.get((rec.mdp_path, rec.occupancy, rec.model_class)) or load_mdp(rec.mdp_path)
            if mdp.occupancy != rec.occupancy:      # the run's, not the file's
                mdp = mdp.with_(occupancy=rec.occupancy)
        except MDPError as e:
            raise VerifyInputError(f"{file}: {e}") from None
        mdp = run_class(mdp, rec, file)
        mdps[(rec.mdp_path, rec.occupancy, rec.model_class)] = mdp
        if mdp.name != rec.mdp:
            raise VerifyInputError(f"{file}: run is of MDP {rec.mdp!r}, {rec.mdp_path} is {mdp.name!r}")
        if equilibria is not None:
            sol, where = equilibria, "equilibria file"
            if sol.get("mdp", {}).get("name") not in (None, mdp.name):
                raise VerifyInputError(f"{file}: equilibria are of MDP {sol['mdp']['name']!r}, run of {mdp.name!r}")
            sol_occupancy = sol.get("mdp", {}).get("occupancy", "discounted")
            if sol_occupancy != rec.occupancy:
                raise VerifyInputError(f"{file}: equilibria are for occupancy {sol_occupancy}, the run "
                                       f"trained with occupancy {rec.occupancy}")
            sol_class = sol.get("mdp", {}).get("model_class", "tabular")
            if sol_class != rec.model_class:
                raise VerifyInputError(f"{file}: equilibria are for the {sol_class} model class, the run "
                                       f"trained models of the {rec.model_class} class (solve with "
                                       f"--model-class {rec.model_class})")
        else:
            key = (rec.mdp_path, rec.formulation, rec.alpha, rec.occupancy, rec.model_class)
            if key not in solved:
                if log:
                    log(f"solving the exact {rec.formulation} equilibria of {mdp.name}"
                        + ("" if rec.alpha is None else f" at alpha {rec.alpha:g}"))
                t0 = time.perf_counter()
                solved[key] = _solve(mdp, rec.formulation, rec.alpha)
                if log:
                    log(f"  solved in {time.perf_counter() - t0:.1f} s")
            sol, where = solved[key], f"bilevel.solve {rec.mdp_path}"
        eq = equilibrium_entry(sol, rec.formulation, rec.alpha, where)
        out.append(check_run(rec, mdp, eq, float(sol["optimal"]["J"]), file))
    return out


def run_class(mdp, rec: RunRecord, file: str):
    """The MDP in the model class the run trained in: the tabular class of any file, or the file's
    own class (a run of another class than the file's is an input error)."""
    from bilevel.cli.common import apply_model_class
    try:
        return apply_model_class(mdp, rec.model_class)
    except MDPError:
        raise VerifyInputError(f"{file}: model_class: the run trained models of the {rec.model_class} "
                               f"class, {rec.mdp_path} defines {mdp.model_class.as_defined()}") from None


def _solve(mdp, formulation, alpha) -> dict:
    try:
        from bilevel.equilibria.document import solve_to_dict
    except ImportError as e:
        raise VerifyInputError(f"exact solver unavailable ({e}); pass --equilibria FILE.json") from None
    return solve_to_dict(mdp, formulations=[formulation], alpha=alpha)
