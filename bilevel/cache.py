"""Content-addressed cache keys: a stored result is reused only when the MDP's content, the
settings and the code that computed it are all the same, so a cache is never silently stale.

    key = sha256(mdp_fingerprint(mdp), code_version(), settings)

`code_version` hashes the source of the `bilevel` and `solvers` packages (and the package
version), so any change of the code invalidates every entry; `--fresh` in the commands that
cache recomputes regardless.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# where the commands keep sweep results (bilevel.sweep.ResultStore) unless told otherwise
TASK_CACHE = Path(os.environ.get("BILEVEL_CACHE", "~/.cache/stackelberg-mbrl")).expanduser() / "tasks"


@lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex digits) of the package version and every .py file of bilevel/ and solvers/."""
    h = hashlib.sha256()
    try:
        h.update(metadata.version("stackelberg-mbrl").encode())
    except metadata.PackageNotFoundError:
        h.update(b"unknown")
    for pkg in ("bilevel", "solvers"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def mdp_fingerprint(mdp) -> str:
    """sha256 of everything that defines the MDP's numbers (not its name or file path)."""
    h = hashlib.sha256()
    for a in (mdp.P, mdp.R, mdp.rho0, mdp.terminal, mdp.K):
        arr = np.ascontiguousarray(a)
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    h.update(json.dumps([mdp.gamma, mdp.floor, mdp.horizon]).encode())
    if getattr(mdp, "occupancy", "discounted") != "discounted":   # discounted keys stay as they were
        h.update(json.dumps({"occupancy": mdp.occupancy}).encode())
    model_class = getattr(mdp, "model_class", None)
    if model_class is not None and not model_class.tabular:   # tabular keys stay as they were
        h.update(json.dumps(model_class.fingerprint()).encode())
    return h.hexdigest()


def cache_key(mdp, **settings) -> str:
    """The key of one cached result: the MDP's content, the code version and the settings."""
    doc = {"mdp": mdp_fingerprint(mdp), "code": code_version(), "settings": settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
