"""Records on disk, one JSON file per task key: `<directory>/<key>.json`.

A file is written to a temporary name in the same directory and moved into place with
os.replace, so a reader (or a sweep stopped mid-write) sees either no file or a whole record.
A file that does not parse (only a machine crash can leave one) reads as missing, so its task
runs again.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

KEY_FORMAT = re.compile(r"[0-9A-Za-z_-]+")


class ResultStore:
    """The records of finished tasks under `directory` (created if missing)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of `key`; ValueError for a key that is not a plain file name."""
        if not KEY_FORMAT.fullmatch(key):
            raise ValueError(f"a store key is letters, digits, '_' and '-', got {key!r}")
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored record of `key`, or None."""
        try:
            record = json.loads(self.path(key).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict) -> None:
        """Store `record` (strict JSON) under `key`, atomically (temporary file + os.replace)."""
        target = self.path(key)
        text = json.dumps(record, allow_nan=False, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key[:16]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def keys(self) -> list[str]:
        """The stored keys, sorted."""
        return sorted(p.stem for p in self.directory.glob("*.json") if not p.name.startswith("."))

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        return len(self.keys())
