"""The process that runs time-limited tasks, one at a time: `python -m bilevel.sweep.child
PARENT_PID` (started by bilevel.sweep.server, which kills its process group past a limit).

    stdout  {"pid": its process id, "code": bilevel.cache.code_version()}    once it is ready
    stdin   {"fn": "package.module:function", "kwargs": {...}}               one task per line
    stdout  the task's record (bilevel.sweep.task.call), strict JSON          one line per task

It imports the solver stack (PRELOAD) before it says it is ready, and every task's module
stays imported for the next task. Anything a task prints (Python or a solver's C library, on
file descriptor 1) goes to stderr and a task reading stdin reads /dev/null, so the two pipes
carry only the protocol. The process exits at the end of its input, and as soon as its
parent (the process that waits for it) is gone, so a lost worker leaves no task running.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time

PARENT_POLL = 0.5      # seconds between checks that the parent is alive
PRELOAD = ("pyomo.environ", "bilevel.equilibria")


def exit_with_parent(parent: int) -> None:
    """Background thread: os._exit(1) as soon as this process's parent is no longer `parent`."""
    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def protocol_pipes():
    """(tasks, replies): private copies of file descriptors 0 and 1; then fd 0 reads /dev/null
    and fd 1 writes to stderr, for everything the tasks do."""
    tasks, replies = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return tasks, replies


def preload() -> None:
    """Import PRELOAD (a module that fails to import is left to the task that needs it)."""
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:
            pass


def reply(out, message: dict) -> None:
    out.write(json.dumps(message, allow_nan=False).encode() + b"\n")
    out.flush()


def main(argv: list[str]) -> int:
    if argv:
        exit_with_parent(int(argv[0]))
    tasks, replies = protocol_pipes()
    from bilevel.cache import code_version
    from bilevel.sweep.task import call
    code = code_version()
    preload()
    reply(replies, {"pid": os.getpid(), "code": code})
    for line in tasks:
        task = json.loads(line)
        record = call(task["fn"], task["kwargs"])
        try:
            sys.stdout.flush()               # the task's buffered prints, to stderr
        except Exception:
            pass
        reply(replies, record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
