"""A task's record: {"status": "ok", "result": ...} or {"status": "failed", "reason": ...}."""
from __future__ import annotations


def failed(reason: str, **extra) -> dict:
    """A failed record."""
    return {"status": "failed", "reason": reason, **extra}
