"""Runs and tasks, and the explicit rules for how their statuses may change.

Every status change goes through :func:`transition_run` or :func:`transition_task`, which
check the ``*_TRANSITIONS`` tables; the engine module decides *when* to change, these
tables decide *whether* a change is legal at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from flowyard.domain.json import JsonValue
from flowyard.errors import InvalidTransitionError


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_RUN


class TaskStatus(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_TASK


_FINISHED_RUN = frozenset({RunStatus.STOPPED, RunStatus.SUCCEEDED, RunStatus.FAILED})
_FINISHED_TASK = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED}
)

# FROM -> allowed TO. A failed run may run again (retry, resume, restart); a finished run
# of any outcome may rerun from a chosen task; every other way back is a new run (replay).
RUN_TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.STOPPED, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.WAITING,
            RunStatus.STOPPING,
            RunStatus.STOPPED,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
        }
    ),
    RunStatus.WAITING: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.STOPPING,
            RunStatus.STOPPED,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
        }
    ),
    RunStatus.STOPPING: frozenset({RunStatus.STOPPED}),
    RunStatus.STOPPED: frozenset({RunStatus.RUNNING}),
    RunStatus.SUCCEEDED: frozenset({RunStatus.RUNNING}),
    RunStatus.FAILED: frozenset({RunStatus.RUNNING}),
}

# A pending task has been dispatched when its attempt number is above zero.
TASK_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset(
        {
            TaskStatus.RUNNING,
            TaskStatus.WAITING,
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.SKIPPED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.PENDING}
    ),
    TaskStatus.WAITING: frozenset(
        {TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.SUCCEEDED: frozenset({TaskStatus.PENDING}),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING, TaskStatus.SKIPPED}),
    TaskStatus.SKIPPED: frozenset({TaskStatus.PENDING}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.PENDING}),
}


@dataclass(frozen=True)
class TaskError:
    code: str
    message: str
    stack_trace: str = ""


class TriggerKind(StrEnum):
    MANUAL = "manual"
    API = "api"
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    EVENT = "event"
    WORKFLOW = "workflow"
    REPLAY = "replay"


@dataclass(frozen=True)
class TriggerInfo:
    kind: TriggerKind
    data: JsonValue = None
    detail: str = ""
    started_by: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True)
class ParentLink:
    """The run-workflow task of another run that started this run."""

    run_id: str
    node_id: str
    attempt: int
    wait: bool = True


@dataclass(frozen=True)
class TaskState:
    node_id: str
    status: TaskStatus = TaskStatus.PENDING
    # Number of the latest attempt; 0 = never started.
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: JsonValue = None
    error: TaskError | None = None
    warnings: tuple[str, ...] = ()
    # When a timer acts on the task next (a delay's resume, a retry's dispatch).
    due_at: datetime | None = None
    executor_id: str = ""
    child_run_id: str = ""
    # Attempts lost with their executor; they do not count against the retry policy.
    lost_attempts: int = 0
    # Attempts of earlier rounds: an operator's retry, rerun or restart starts a new round
    # whose attempts are numbered on from here, so no attempt record is overwritten.
    base_attempt: int = 0
    # Skipped by an operator: downstream nodes run on, seeing ``output``.
    skipped_by_operator: bool = False

    @property
    def begun(self) -> bool:
        """An attempt of the current round exists."""
        return self.attempt > self.base_attempt

    @property
    def dispatched(self) -> bool:
        """Sent to executors and not yet started (a retry waiting for its timer is not)."""
        return self.status is TaskStatus.PENDING and self.begun and self.due_at is None

    @property
    def retry_scheduled(self) -> bool:
        return self.status is TaskStatus.PENDING and self.begun and self.due_at is not None

    @property
    def in_flight(self) -> bool:
        return self.status is TaskStatus.RUNNING or (
            self.status is TaskStatus.PENDING and self.begun
        )

    def next_round(self) -> TaskState:
        """Pending again for an operator's retry or rerun, attempt history kept."""
        return TaskState(
            node_id=self.node_id,
            attempt=self.attempt,
            base_attempt=self.attempt,
        )


@dataclass(frozen=True)
class AuditEntry:
    """One operator action on a run: who, when, what, why."""

    at: datetime
    actor: str
    action: str
    node_id: str = ""
    comment: str = ""
    command_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class RunState:
    run_id: str
    workflow_id: str
    workflow_name: str
    workflow_version: int
    status: RunStatus
    trigger: TriggerInfo
    created_at: datetime
    tasks: Mapping[str, TaskState] = field(default_factory=dict)
    workflow_type: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: TaskError | None = None
    failed_node_id: str = ""
    test: bool = False
    parent: ParentLink | None = None
    audit: tuple[AuditEntry, ...] = ()
    replay_of: str = ""
    # Node config changed for this run only (a resolution's parameter override).
    overrides: Mapping[str, Mapping[str, JsonValue]] = field(default_factory=dict)
    stopped_by: str = ""
    # Stopping with cleanup: the cleanup nodes run once running tasks are stopped.
    cleanup_requested: bool = False
    # Optimistic-concurrency counter: stored writes are conditional on it.
    revision: int = 0

    def task(self, node_id: str) -> TaskState:
        return self.tasks[node_id]

    def applied(self, command_id: str) -> bool:
        return bool(command_id) and any(a.command_id == command_id for a in self.audit)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(f"{t.node_id}: {w}" for t in self.tasks.values() for w in t.warnings)


def transition_run(run: RunState, to: RunStatus, now: datetime) -> RunState:
    if to is run.status:
        return run
    if to not in RUN_TRANSITIONS[run.status]:
        raise InvalidTransitionError(f"run {run.run_id} cannot go from {run.status} to {to}")
    started_at = run.started_at or (now if to is RunStatus.RUNNING else None)
    finished_at = now if to.finished else None
    return replace(run, status=to, started_at=started_at, finished_at=finished_at)


def transition_task(task: TaskState, to: TaskStatus, now: datetime) -> TaskState:
    if to is task.status:
        return task
    if to not in TASK_TRANSITIONS[task.status]:
        raise InvalidTransitionError(f"task {task.node_id} cannot go from {task.status} to {to}")
    if to is TaskStatus.RUNNING:
        return replace(task, status=to, started_at=now, finished_at=None)
    if to.finished:
        return replace(task, status=to, started_at=task.started_at or now, finished_at=now)
    return replace(task, status=to)


@dataclass(frozen=True)
class Attempt:
    """One execution of one task, as the executor recorded it."""

    run_id: str
    node_id: str
    number: int
    status: TaskStatus
    input: JsonValue = None
    output: JsonValue = None
    error: TaskError | None = None
    executor_id: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    warnings: tuple[str, ...] = ()
