"""What every command prints besides its result: `-q`/`-v` through `logging`, and progress bars.

    -q   warnings and errors only, no progress bars
    (none) progress messages (INFO) and a tqdm bar on a terminal
    -v   solver-level detail (DEBUG)
Messages go to stderr through the `bilevel` logger, so stdout holds only the result (a table or
JSON). Progress bars are shown only when stderr is a terminal and -q is not given.
"""
from __future__ import annotations

import argparse
import logging
import sys

LOGGER = "bilevel"


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a record is emitted (so a replaced or
    captured stderr, as in tests, is followed)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add the shared -q/--quiet and -v/--verbose flags."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="solver-level detail")


def setup_logging(args: argparse.Namespace) -> logging.Logger:
    """Configure the `bilevel` logger from -q/-v (idempotent: one stderr handler)."""
    level = (logging.WARNING if getattr(args, "quiet", False)
             else logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    log = logging.getLogger(LOGGER)
    log.setLevel(level)
    for h in list(log.handlers):
        if getattr(h, "_bilevel", False):
            log.removeHandler(h)
    h = _StderrHandler()
    h.setFormatter(logging.Formatter("%(message)s"))
    h._bilevel = True
    log.addHandler(h)
    log.propagate = False
    return log


def logger(name: str = "") -> logging.Logger:
    """The `bilevel` logger or one of its children (`bilevel.<name>`)."""
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


def say(name: str = ""):
    """A `log(msg)` callable for the engine's `log=` parameters: INFO on `bilevel.<name>`,
    printed as `[name] msg`."""
    log = logger(name)
    prefix = f"[{name}] " if name else ""
    return lambda msg: log.info(prefix + str(msg))


def progress(iterable=None, total: int | None = None, desc: str = "", quiet: bool = False):
    """A tqdm bar on stderr, shown only on a terminal and without -q (else a plain iterator)."""
    from tqdm import tqdm
    disable = quiet or not sys.stderr.isatty() or logger().getEffectiveLevel() > logging.INFO
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=disable, leave=False)
