"""`python -m bilevel.report FILE [--runs DIR] [--studies DIR] [--out reports/NAME] [--model-class C]`: a self-contained report.

Writes OUT/index.html (PNGs embedded as base64, no network, no JS), OUT/report.md, OUT/*.png,
OUT/data.json holding every number shown, and OUT/equilibria.json (the solve document, to pass back
with --equilibria: solving takes a second on hidden_goal, but minutes on larger MDPs, rendering seconds). The
numbers come from `bilevel.report.data` (exact equilibria, alpha sweeps of both MAL fixes, run
records checked by `bilevel.verify`); the pages are rendered from data.json by
`bilevel.report.render` with its formatters (`fmt_*`). Progress goes to stderr (-q: none, -v:
solver detail).

Exit status: 0 written, 1 written but something it computed failed (an exact formulation, a
sweep point; one line on stderr names them), 2 bad input (one line on stderr). JSON files hold
null where a number is NaN or infinite.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bilevel.cli.common import add_model_class_arg, add_occupancy_arg, json_dumps
from bilevel.cli.output import add_verbosity, say, setup_logging
from bilevel.mdp.io import load_mdp
from bilevel.mdp.model import MDPError
from bilevel.cache import TASK_CACHE
from bilevel.sweep import add_sweep_args, sweep_options
from bilevel.report.data import SWEEP_ALPHAS, ReportError, build_data, failures, report_mdp
from bilevel.report.figures import make_figures
from bilevel.report.render import render_html, render_md


def write_report(path: str, out: str | Path, runs_dir=None, equilibria=None, sweep_alphas=SWEEP_ALPHAS,
                 log=None, studies_dir=None, fresh: bool = False, sweep: dict | None = None,
                 occupancy: str | None = None, model_class: str | None = None) -> dict:
    """Build data, figures, index.html and report.md under `out`; return the data. The alpha
    sweep of a previous OUT/data.json is reused when its content key matches, unless `fresh`."""
    out = Path(out)
    cached = None
    if (out / "data.json").exists() and not fresh:
        try:
            cached = json.loads((out / "data.json").read_text())
        except ValueError:
            cached = None
    data = build_data(path, runs_dir, equilibria, sweep_alphas, cached, log=log,
                      studies_dir=studies_dir, sweep=sweep, occupancy=occupancy, model_class=model_class)
    out.mkdir(parents=True, exist_ok=True)      # after the input is known to be good
    if log:
        log(f"drawing the figures into {out}")
    t0 = time.perf_counter()
    pngs = make_figures(data, report_mdp(path, occupancy, model_class), out, studies_dir)
    data["timings"]["figures_seconds"] = time.perf_counter() - t0
    (out / "data.json").write_text(json_dumps(data, indent=1))
    doc = {k: data[k] for k in ("mdp", "optimal", "formulations")}
    (out / "equilibria.json").write_text(json_dumps(doc, indent=1))   # reuse with --equilibria
    (out / "index.html").write_text(render_html(data, pngs))
    (out / "report.md").write_text(render_md(data, pngs))
    return data


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bilevel.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="MDP YAML file")
    ap.add_argument("--runs", help="directory of run records (python -m bilevel.train --out DIR)")
    ap.add_argument("--out", help="output directory (default reports/<mdp name>/)")
    ap.add_argument("--equilibria", help="saved `python -m bilevel.solve FILE --json` output (else solved now)")
    ap.add_argument("--studies", help="directory of saved studies (python -m bilevel.studies "
                                      "theorem|counterexample|fixes --out DIR) to add to the report")
    add_occupancy_arg(ap)
    add_model_class_arg(ap)
    ap.add_argument("--no-sweep", action="store_true", help="skip the alpha sweeps")
    ap.add_argument("--alphas", help=f"comma-separated sweep alphas (default {','.join(map(str, SWEEP_ALPHAS))}); "
                                     "a sweep in OUT/data.json with the same content key (MDP, "
                                     "alphas, code version) is reused")
    ap.add_argument("--fresh", action="store_true", help="recompute the sweep even if cached")
    add_sweep_args(ap)
    add_verbosity(ap)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args)
    log = say("report")
    try:
        alphas = () if args.no_sweep else (tuple(float(a) for a in args.alphas.split(",")) if args.alphas
                                           else SWEEP_ALPHAS)
    except ValueError:
        print(f"error: --alphas {args.alphas!r}: not comma-separated numbers", file=sys.stderr)
        return 2
    try:
        name = load_mdp(args.file).name
        out = Path(args.out or f"reports/{name}")
        t0 = time.perf_counter()
        data = write_report(args.file, out, args.runs, args.equilibria, alphas, log=log,
                            studies_dir=args.studies, fresh=args.fresh,
                            sweep=dict(sweep_options(args), store=TASK_CACHE, fresh=args.fresh),
                            occupancy=args.occupancy, model_class=args.model_class)
    except (MDPError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = data["timings"]
    print(f"wrote {out}/index.html, report.md, data.json and {len(list(out.glob('*.png')))} figures in "
          f"{time.perf_counter() - t0:.1f} s (solve {t['solve_seconds']:.1f} s, sweep "
          f"{t['sweep_seconds']:.1f} s{' (cached)' if t['sweep_source'] == 'cached' else ''}, "
          f"figures {t['figures_seconds']:.1f} s)")
    failed = failures(data)
    if failed:
        print(f"error: failed: {', '.join(failed)} (shown as failed in the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
