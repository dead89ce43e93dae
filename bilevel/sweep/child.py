"""The process that runs one time-limited task: `python -m bilevel.sweep.child PARENT_PID`.

    stdin   {"fn": "package.module:function", "kwargs": {...}}
    stdout  the task's record (bilevel.sweep.task.call), strict JSON

Anything the task prints (Python or a solver's C library, on file descriptor 1) goes to stderr,
so stdout holds only the record. The process exits when its parent (the worker that waits for
it) is gone, so a lost worker leaves no task running.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

from bilevel.sweep.task import call

PARENT_POLL = 0.5      # seconds between checks that the parent is alive


def exit_with_parent(parent: int) -> None:
    """Background thread: os._exit(1) as soon as this process's parent is no longer `parent`."""
    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    if argv:
        exit_with_parent(int(argv[0]))
    task = json.load(sys.stdin)
    record_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    record = call(task["fn"], task["kwargs"])
    record_out.write(json.dumps(record, allow_nan=False))
    record_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
