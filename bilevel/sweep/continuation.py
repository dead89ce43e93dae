"""Tasks that finish through further tasks: a task's result may be a continuation,

    {"continue": {"tasks": [task spec, ...], "combine": "module:function", "context": {...}}}
    task spec = {"fn", "kwargs", "label"?, "time_limit"?, "cost"?}     (Task's fields)

which tells the engine to run the child tasks (on any worker, in parallel, each with its own
key and stored record) and then, in the client process, to call

    combine(context, records)      records: the children's final records, in spec order

whose return value is the task's result (or another continuation). A task's record is final
once it is not a continuation. Both the continuation and the final record are stored under the
task's key (the final one replaces the other), so a sweep stopped while children run resumes
with them. This is how one task splits into parallel parts only after it has computed what
they share (the two ends of an interval, once the leader optimum is known).
"""
from __future__ import annotations

from bilevel.sweep.record import failed
from bilevel.sweep.task import Task, jsonable, resolve

CONTINUE = "continue"


class Forward(Exception):
    """Raised by a combine function to make a child's record (typically a failure, with its
    reason as it is) the task's record."""

    def __init__(self, record: dict):
        super().__init__(record.get("reason", ""))
        self.record = record


def continuation(tasks: list[Task], combine: str, context: dict) -> dict:
    """The result that hands a task over to `tasks`, then to `combine(context, records)`."""
    specs = [{"fn": t.fn, "kwargs": t.kwargs, "label": t.label, "time_limit": t.time_limit,
              "cost": t.cost} for t in tasks]
    return {CONTINUE: {"tasks": specs, "combine": combine, "context": context}}


def is_continuation(record: dict) -> bool:
    """Whether an ok record's result is a continuation (not yet the task's final result)."""
    result = record.get("result") if record.get("status") == "ok" else None
    return isinstance(result, dict) and set(result) == {CONTINUE}


def children(record: dict) -> list[Task]:
    """The child tasks of a continuation record."""
    return [Task(**spec) for spec in record["result"][CONTINUE]["tasks"]]


def combined(record: dict, records: list[dict]) -> dict:
    """The record of combine(context, records) of a continuation record: ok with its JSON
    result, or failed with "ExceptionType: message" when combine raises."""
    step = record["result"][CONTINUE]
    try:
        return {"status": "ok", "result": jsonable(resolve(step["combine"])(step["context"], records))}
    except Forward as e:
        return e.record
    except (Exception, SystemExit) as e:
        from bilevel.cli.common import failure_reason
        return failed(failure_reason(e))
