"""Operators' commands on a run: stop, retry a task, restart, rerun from a task, skip,
resume (FEATURES C1-C6, C9, C11).

Pure functions like the engine's. :func:`command_problem` says why a command does not
fit the run's state (the gateway answers ``FAILED_PRECONDITION`` with it, before anything
is sent); :func:`apply_command` carries a command out. A command whose id the run's audit
already holds changes nothing, so a command sent twice acts once. No command erases
history: a task run again starts a new round of attempts numbered after the old ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from flowyard.domain import engine
from flowyard.domain.definition import NodeType, WorkflowDefinition
from flowyard.domain.effects import (
    CancelTask,
    CancelTimers,
    Decision,
    Effect,
    RunStatusChanged,
    StopChildRun,
    TaskStatusChanged,
)
from flowyard.domain.json import JsonValue
from flowyard.domain.run import (
    AuditEntry,
    RunState,
    RunStatus,
    TaskState,
    TaskStatus,
    transition_run,
    transition_task,
)

ACTIONS = ("stop", "retry_task", "restart", "rerun_from", "skip_task", "resume")


@dataclass(frozen=True)
class Command:
    action: str
    actor: str
    command_id: str = ""
    comment: str = ""
    node_id: str = ""
    cleanup: bool = False
    # skip_task: what downstream nodes see.
    output: JsonValue = None
    # retry_task: settings changed for this run only.
    config_override: Mapping[str, JsonValue] = field(default_factory=dict)
    # restart: the version to continue with.
    workflow_version: int = 0


def command_problem(run: RunState, definition: WorkflowDefinition, command: Command) -> str | None:
    """Why ``command`` cannot apply to the run as it is now; None when it can."""
    action, status = command.action, run.status
    if action not in ACTIONS:
        return f"unknown command {action!r}"
    if action == "stop":
        if status.finished or status is RunStatus.STOPPING:
            return f"run {run.run_id} is {status}; only queued, running or waiting runs stop"
        return None
    if status.finished and run.started_at is None:
        # Refused (or stopped) while queued: its trigger never ran, so nothing can go on.
        why = f" ({run.error.code})" if run.error else ""
        return (
            f"run {run.run_id} is {status} and never started{why}; replay it to run it as a new run"
        )
    if action in ("restart", "resume"):
        if status is not RunStatus.FAILED:
            return f"run {run.run_id} is {status}; only a failed run can {action}"
        return None
    if not command.node_id:
        return f"{action} needs a node id"
    task = run.tasks.get(command.node_id)
    if task is None:
        return f"run {run.run_id} has no task {command.node_id!r}"
    if action == "rerun_from":
        if not status.finished:
            return f"run {run.run_id} is {status}; rerun from a task once the run has finished"
        if definition.node(task.node_id).cleanup:
            return f"{task.node_id!r} is a cleanup node"
        if definition.node(task.node_id).type is NodeType.TRIGGER:
            return (
                f"{task.node_id!r} is the trigger; rerun from a node after it, "
                "or replay the run for a new run with the same data"
            )
        return None
    if status in (RunStatus.STOPPING, RunStatus.STOPPED, RunStatus.QUEUED):
        return f"run {run.run_id} is {status}"
    if task.status is not TaskStatus.FAILED:
        done = "retried" if action == "retry_task" else "skipped"
        return f"task {task.node_id!r} is {task.status}; only a failed task can be {done}"
    if action == "skip_task" and not definition.node(task.node_id).skippable:
        return f"task {task.node_id!r} may not be skipped (its node sets skippable: false)"
    return None


def apply_command(
    run: RunState,
    definition: WorkflowDefinition,
    command: Command,
    now: datetime,
    current: WorkflowDefinition | None = None,
) -> Decision:
    """Carry ``command`` out. ``current`` is the workflow version a restart moves to."""
    if run.applied(command.command_id) or command_problem(run, definition, command):
        return Decision(run)
    entry = AuditEntry(
        at=now,
        actor=command.actor,
        action=command.action,
        node_id=command.node_id,
        comment=command.comment,
        command_id=command.command_id,
        detail=_detail(command),
    )
    run = replace(run, audit=(*run.audit, entry))
    effects: list[Effect] = []
    if command.action == "stop":
        return _stop(run, definition, command, now, effects)
    if command.action == "restart" and current is not None:
        run, definition = _move_to(run, current, command.workflow_version)
    if command.action == "retry_task":
        if command.config_override:
            overrides = dict(run.overrides)
            overrides[command.node_id] = {
                **overrides.get(command.node_id, {}),
                **command.config_override,
            }
            run = replace(run, overrides=overrides)
        targets = {command.node_id}
    elif command.action == "rerun_from":
        targets = {command.node_id, *definition.descendants(command.node_id)}
    elif command.action == "skip_task":
        task = run.task(command.node_id)
        skipped = replace(
            transition_task(task, TaskStatus.SKIPPED, now),
            skipped_by_operator=True,
            output=command.output,
            error=None,
        )
        run = engine.with_task(run, skipped)
        effects.append(TaskStatusChanged(task.node_id, TaskStatus.SKIPPED, task.attempt))
        targets = set()
    else:  # resume, restart: every task that did not get through
        targets = {
            t.node_id
            for t in run.tasks.values()
            if t.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
        }
    return _run_again(run, definition, targets, now, effects)


def _run_again(
    run: RunState,
    definition: WorkflowDefinition,
    targets: set[str],
    now: datetime,
    effects: list[Effect],
) -> Decision:
    """Reset ``targets`` to a new round (and what their outcome decided) and go on."""
    downstream = _downstream_of(definition, targets)
    for node_id in definition.topological_order():
        task = run.task(node_id)
        decided_by_targets = node_id in downstream and task.status is not TaskStatus.PENDING
        if node_id in targets or decided_by_targets:
            run = engine.with_task(run, task.next_round())
            effects.append(TaskStatusChanged(node_id, TaskStatus.PENDING, task.attempt))
    if run.status.finished:
        effects.append(RunStatusChanged(run.status, RunStatus.RUNNING))
        run = transition_run(run, RunStatus.RUNNING, now)
        run = replace(
            run,
            error=None,
            failed_node_id="",
            finished_at=None,
            stopped_by="",
            cleanup_requested=False,
        )
    return engine.advance(run, definition, now, effects)


def _downstream_of(definition: WorkflowDefinition, targets: set[str]) -> set[str]:
    found: set[str] = set()
    for node_id in targets:
        found |= definition.descendants(node_id)
    return found


def _stop(
    run: RunState,
    definition: WorkflowDefinition,
    command: Command,
    now: datetime,
    effects: list[Effect],
) -> Decision:
    """Cancel what runs (non-cancellable tasks finish), then stop, cleaning up if asked."""
    run = replace(run, stopped_by=command.actor, cleanup_requested=command.cleanup)
    if run.status is RunStatus.QUEUED:
        effects.append(RunStatusChanged(run.status, RunStatus.STOPPED))
        return Decision(transition_run(run, RunStatus.STOPPED, now), tuple(effects))
    effects.append(RunStatusChanged(run.status, RunStatus.STOPPING))
    run = transition_run(run, RunStatus.STOPPING, now)
    for task in run.tasks.values():
        node = definition.node(task.node_id)
        if task.status is TaskStatus.RUNNING and node.cancellable:
            if node.type.runs_on_executor:
                effects.append(CancelTask(task.node_id, task.attempt))
                continue  # cancelled when the executor reports the killed attempt
            if task.child_run_id:  # the child run this task waits for stops too
                effects.append(StopChildRun(task.child_run_id, command.actor, run.run_id))
            run = _cancel(run, task, now, effects)
        elif task.in_flight and task.status is TaskStatus.PENDING:
            effects.append(CancelTask(task.node_id, task.attempt))
            run = _cancel(run, task, now, effects)
        elif task.status is TaskStatus.WAITING:
            run = _cancel(run, task, now, effects)
    return engine.advance(run, definition, now, effects)


def _cancel(run: RunState, task: TaskState, now: datetime, effects: list[Effect]) -> RunState:
    cancelled = replace(transition_task(task, TaskStatus.CANCELLED, now), due_at=None)
    effects.append(TaskStatusChanged(task.node_id, TaskStatus.CANCELLED, task.attempt))
    effects.append(CancelTimers(task.node_id))
    return engine.with_task(run, cancelled)


def _move_to(
    run: RunState, current: WorkflowDefinition, version: int
) -> tuple[RunState, WorkflowDefinition]:
    """Carry the run over to another version: finished work of kept nodes stays."""
    tasks: dict[str, TaskState] = {}
    for node_id in current.topological_order():
        old = run.tasks.get(node_id)
        tasks[node_id] = old if old is not None else TaskState(node_id)
    return replace(run, tasks=tasks, workflow_version=version or run.workflow_version), current


def _detail(command: Command) -> str:
    if command.action == "stop" and command.cleanup:
        return "with cleanup"
    if command.action == "restart" and command.workflow_version:
        return f"on version {command.workflow_version}"
    if command.config_override:
        return "override " + ", ".join(f"{k}={v!r}" for k, v in command.config_override.items())
    return ""
