"""Stage 7, the report: `data` computes every number (data.json), `figures` draws the PNGs,
`render` writes index.html and report.md from the Jinja2 templates in templates/, `cli` is
`python -m bilevel.report`."""
from bilevel.report.cli import main
from bilevel.report.data import build_data

__all__ = ["build_data", "main"]
