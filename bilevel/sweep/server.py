"""Time-limited tasks in persistent child processes: the calling side of
`python -m bilevel.sweep.child` (bilevel/sweep/child.py holds the protocol).

    record = the child's reply to {"fn", "kwargs"}              when it comes within time_limit s
           = failed("time limit of N s exceeded", time_limit=N)   else: the child's process group
                                                                  is killed with SIGKILL
           = failed("ChildProcessError: the task's process was killed by signal S | exited with
                     code C without a record")                    when the child dies first

A calling process (a Dask worker, or the client with workers=0) keeps its idle children and
gives each time-limited task one of them, so a child's start-up (interpreter, Pyomo,
bilevel.equilibria: ~1.5 s) is paid once, not per task; one child for a worker with one thread.
A child that was killed or died is forgotten, and the next task starts a new one. The time
limit counts from the moment the task is sent (a new child's start-up is bounded by
STARTUP_LIMIT instead). A child serves a second task only if its code version (the source
tree when it started) is this process's, the one in the keys (bilevel.cache.code_version).
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

from bilevel.cache import code_version
from bilevel.sweep.record import failed

STARTUP_LIMIT = 120.0      # seconds for a new child to start and import the solver stack
EXIT_GRACE = 5.0           # seconds a child that closed its output has to exit on its own


class Child:
    """One `python -m bilevel.sweep.child PARENT_PID` process in its own process group: tasks
    as JSON lines on its stdin, a hello line {"pid", "code"} and then one record per task as
    JSON lines on its stdout (read here with a deadline)."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen([sys.executable, "-m", "bilevel.sweep.child",
                                      str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, env=env,
                                     start_new_session=True)
        self.pending = bytearray()
        self.code: str | None = None

    def start(self) -> dict | None:
        """Wait for the hello line (STARTUP_LIMIT): None when the child is ready, else the
        failed record (the child killed)."""
        try:
            line = self.line(time.monotonic() + STARTUP_LIMIT)
        except TimeoutError:
            self.kill()
            return failed(f"ChildProcessError: the task's process did not start within "
                          f"{STARTUP_LIMIT:g} s")
        if line is None:
            return self.crashed()
        try:
            self.code = json.loads(line)["code"]
        except (ValueError, TypeError, KeyError):
            self.kill()
            return failed("ChildProcessError: the task's process did not say it was ready")
        return None

    def run(self, fn: str, kwargs: dict, time_limit: float) -> dict:
        """The record of fn(**kwargs) in this child, waited for `time_limit` seconds."""
        message = json.dumps({"fn": fn, "kwargs": kwargs}).encode() + b"\n"
        deadline = time.monotonic() + time_limit
        try:
            self.send(message)
            line = self.line(deadline)
        except BrokenPipeError:
            return self.crashed()
        except TimeoutError:
            self.kill()
            return failed(f"time limit of {time_limit:g} s exceeded", time_limit=time_limit)
        except BaseException:
            self.kill()
            raise
        if line is None:
            return self.crashed()
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            return failed("ChildProcessError: the task's process wrote no valid record")

    def send(self, data: bytes) -> None:
        """Write all of `data` to the child's stdin."""
        view, fd = memoryview(data), self.proc.stdin.fileno()
        while view:
            view = view[os.write(fd, view):]

    def line(self, deadline: float) -> bytes | None:
        """The child's next output line; None at end of output; TimeoutError past `deadline`
        (time.monotonic)."""
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        end = self.pending.find(b"\n")
        while end < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if poller.poll(max(1, int(1000 * left + 1))):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None
                end = chunk.find(b"\n")
                if end >= 0:
                    end += len(self.pending)
                self.pending += chunk
        line = bytes(self.pending[:end])
        del self.pending[:end + 1]
        return line

    def alive(self) -> bool:
        return self.proc.poll() is None

    def crashed(self) -> dict:
        """The failed record of a child whose output ended: its exit code or signal (after
        EXIT_GRACE seconds to exit, SIGKILL), its process group killed."""
        try:
            self.proc.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        return failed(f"ChildProcessError: the task's process {exit_cause(self.proc.returncode)} "
                      f"without a record")

    def kill(self) -> None:
        """SIGKILL the child's process group (the task and anything it started) and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.close_pipes()

    def close(self) -> None:
        """End an idle child: end of its input (it exits), SIGKILL after 2 s."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def exit_cause(returncode: int) -> str:
    """'exited with code N' or 'was killed by signal NAME' (subprocess's negative codes)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


_idle: list[Child] = []          # this process's children waiting for a task
_lock = threading.Lock()
_owner = os.getpid()             # a forked copy of this module does not own the children


def take() -> Child | None:
    """An idle child of this process on its code version (None: none left); the others end."""
    global _owner
    stale = []
    with _lock:
        if _owner != os.getpid():
            _owner, _idle[:] = os.getpid(), []
        child = None
        while _idle and child is None:
            c = _idle.pop()
            if c.alive() and c.code == code_version():
                child = c
            else:
                stale.append(c)
    for c in stale:
        c.close()
    return child


def give_back(child: Child) -> None:
    """Keep `child` for the next task, if it is alive and on this process's code version."""
    if child.alive() and child.code == code_version() and _owner == os.getpid():
        with _lock:
            _idle.append(child)
    else:
        child.close()


def close_idle() -> None:
    """End this process's idle children (at exit; the next task starts a new one)."""
    with _lock:
        children = list(_idle) if _owner == os.getpid() else []
        _idle[:] = []
    for child in children:
        child.close()


atexit.register(close_idle)


def call_with_limit(fn: str, kwargs: dict, time_limit: float) -> dict:
    """The record of fn(**kwargs) in a child process of this process, killed (with anything
    it started) past `time_limit` seconds (see the module docstring)."""
    child = take()
    if child is None:
        child = Child()
        not_started = child.start()
        if not_started is not None:
            return not_started
    record = child.run(fn, kwargs, time_limit)
    if child.proc.returncode is None:
        give_back(child)
    return record
