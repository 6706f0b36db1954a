"""What the engine decides besides the new run state: the effects the scheduler carries
out (messages to send, timers to set or drop, child runs to start) and the timing the
engine needs to place timers. Plain data, no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from flowyard.domain import inline
from flowyard.domain.definition import Node
from flowyard.domain.json import JsonValue
from flowyard.domain.run import ParentLink, RunState, RunStatus, TaskError, TaskStatus


class TimerKind(StrEnum):
    RETRY = "retry"
    WAIT = "wait"
    LEASE = "lease"
    DEADLINE = "deadline"


@dataclass(frozen=True)
class Timing:
    """Durations the engine needs to place timers."""

    lease: timedelta = timedelta(seconds=30)
    # Executors enforce a node's timeout themselves; the scheduler's deadline is the
    # backstop for an executor that cannot, so it waits a little longer.
    deadline_grace: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class DispatchTask:
    node: Node
    attempt: int
    input: JsonValue
    not_before: datetime | None = None


@dataclass(frozen=True)
class RunStatusChanged:
    previous: RunStatus
    status: RunStatus


@dataclass(frozen=True)
class TaskStatusChanged:
    node_id: str
    status: TaskStatus
    attempt: int


@dataclass(frozen=True)
class ScheduleTimer:
    node_id: str
    attempt: int
    kind: TimerKind
    due_at: datetime
    # Re-sent after a redelivery: do not move a timer that exists already.
    keep_existing: bool = False


@dataclass(frozen=True)
class CancelTimers:
    """Drop the timers of one task, or of the whole run when ``node_id`` is empty."""

    node_id: str = ""


@dataclass(frozen=True)
class CancelTask:
    """Tell executors to kill a running (or not yet started) attempt."""

    node_id: str
    attempt: int


@dataclass(frozen=True)
class StopChildRun:
    """Stop the child run a stopped parent task was waiting for."""

    child_run_id: str
    actor: str
    parent_run_id: str


@dataclass(frozen=True)
class StartChildRun:
    child: inline.ChildRun
    parent: ParentLink


@dataclass(frozen=True)
class NotifyParent:
    parent: ParentLink
    child_run_id: str
    status: RunStatus
    output: JsonValue
    error: TaskError | None


Effect = (
    DispatchTask
    | RunStatusChanged
    | TaskStatusChanged
    | ScheduleTimer
    | CancelTimers
    | CancelTask
    | StopChildRun
    | StartChildRun
    | NotifyParent
)


@dataclass(frozen=True)
class Decision:
    run: RunState
    effects: tuple[Effect, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return bool(self.effects)
