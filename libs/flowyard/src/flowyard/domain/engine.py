"""How a run advances: pure functions from (run, definition, event) to (run, effects).

The scheduler feeds events in and carries the effects out (Kafka messages); it never
decides anything itself. Each function is idempotent: an event for an attempt that is
not the current one, or for a task already finished, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from flowyard.domain.definition import Node, WorkflowDefinition
from flowyard.domain.json import JsonValue
from flowyard.domain.run import (
    RunState,
    RunStatus,
    TaskError,
    TaskState,
    TaskStatus,
    TriggerInfo,
    transition_run,
    transition_task,
)


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


Effect = DispatchTask | RunStatusChanged | TaskStatusChanged


@dataclass(frozen=True)
class Decision:
    run: RunState
    effects: tuple[Effect, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return bool(self.effects)


def new_run(
    run_id: str,
    workflow_id: str,
    workflow_version: int,
    definition: WorkflowDefinition,
    trigger: TriggerInfo,
    now: datetime,
) -> RunState:
    """A queued run with one pending task per node."""
    return RunState(
        run_id=run_id,
        workflow_id=workflow_id,
        workflow_name=definition.name,
        workflow_type=definition.type,
        workflow_version=workflow_version,
        status=RunStatus.QUEUED,
        trigger=trigger,
        created_at=now,
        tasks={node_id: TaskState(node_id) for node_id in definition.topological_order()},
    )


def start(run: RunState, definition: WorkflowDefinition, now: datetime) -> Decision:
    """Queued -> running: the trigger node completes with the trigger data as its output."""
    if run.status is not RunStatus.QUEUED:
        return Decision(run)
    effects: list[Effect] = [RunStatusChanged(run.status, RunStatus.RUNNING)]
    run = transition_run(run, RunStatus.RUNNING, now)
    trigger_id = definition.trigger.id
    trigger_task = transition_task(run.task(trigger_id), TaskStatus.SUCCEEDED, now)
    trigger_task = replace(trigger_task, attempt=1, output=run.trigger.data)
    run = _with_task(run, trigger_task)
    effects.append(TaskStatusChanged(trigger_id, TaskStatus.SUCCEEDED, 1))
    return _advance(run, definition, now, effects)


def task_started(run: RunState, node_id: str, attempt: int, now: datetime) -> Decision:
    task = run.tasks.get(node_id)
    if task is None or task.attempt != attempt or task.status is not TaskStatus.PENDING:
        return Decision(run)
    if run.status.finished:
        return Decision(run)
    run = _with_task(run, transition_task(task, TaskStatus.RUNNING, now))
    return Decision(run, (TaskStatusChanged(node_id, TaskStatus.RUNNING, attempt),))


def task_succeeded(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    attempt: int,
    output: JsonValue,
    now: datetime,
) -> Decision:
    task = run.tasks.get(node_id)
    if task is None or task.attempt != attempt or task.status.finished:
        return Decision(run)
    done = replace(transition_task(task, TaskStatus.SUCCEEDED, now), output=output, error=None)
    run = _with_task(run, done)
    effects: list[Effect] = [TaskStatusChanged(node_id, TaskStatus.SUCCEEDED, attempt)]
    return _advance(run, definition, now, effects)


def task_failed(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    attempt: int,
    error: TaskError,
    now: datetime,
) -> Decision:
    task = run.tasks.get(node_id)
    if task is None or task.attempt != attempt or task.status.finished:
        return Decision(run)
    node = definition.node(node_id)
    if attempt < node.retry.max_attempts and not run.status.finished:
        # The failed attempt is recorded by the executor; the task goes on with the next.
        next_attempt = attempt + 1
        delay = timedelta(seconds=node.retry.backoff_before(next_attempt))
        retried = replace(task, status=TaskStatus.PENDING, attempt=next_attempt, error=error)
        run = _with_task(run, retried)
        dispatch = DispatchTask(node, next_attempt, task_input(run, definition, node), now + delay)
        return Decision(
            run, (TaskStatusChanged(node_id, TaskStatus.PENDING, next_attempt), dispatch)
        )
    failed = replace(transition_task(task, TaskStatus.FAILED, now), error=error)
    run = _with_task(run, failed)
    if not run.error:
        run = replace(run, error=error, failed_node_id=node_id)
    effects: list[Effect] = [TaskStatusChanged(node_id, TaskStatus.FAILED, attempt)]
    return _advance(run, definition, now, effects)


def redispatch_in_flight(run: RunState, definition: WorkflowDefinition) -> tuple[Effect, ...]:
    """Dispatches for tasks sent but not yet started.

    Used when an event turns out to be a redelivery: the earlier delivery may have stored
    the state and died before its dispatches reached Kafka. Executors drop duplicates.
    """
    if run.status.finished:
        return ()
    return tuple(
        DispatchTask(definition.node(t.node_id), t.attempt, task_input(run, definition, t.node_id))
        for t in run.tasks.values()
        if t.status is TaskStatus.PENDING and t.dispatched
    )


def task_input(
    run: RunState, definition: WorkflowDefinition, node: Node | str
) -> dict[str, JsonValue]:
    """What a node sees: trigger data, both contexts, and every upstream node's output."""
    if isinstance(node, str):
        node = definition.node(node)
    upstream: dict[str, JsonValue] = {}
    for ancestor in sorted(definition.ancestors(node.id)):
        state = run.tasks[ancestor]
        if state.status is TaskStatus.SUCCEEDED:
            upstream[ancestor] = state.output
    return {
        "trigger": run.trigger.data,
        "context": dict(definition.context),
        "node_context": dict(node.context),
        "upstream": upstream,
    }


def _advance(
    run: RunState, definition: WorkflowDefinition, now: datetime, effects: list[Effect]
) -> Decision:
    """Dispatch every task whose parents are done, then settle the run's status."""
    if not run.status.finished:
        for node_id in definition.topological_order():
            task = run.tasks[node_id]
            if task.status is not TaskStatus.PENDING or task.dispatched:
                continue
            parents = [run.tasks[p] for p in definition.parents(node_id)]
            if not all(p.status.finished for p in parents):
                continue
            if any(p.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) for p in parents):
                continue
            node = definition.node(node_id)
            if parents and all(p.status is TaskStatus.SKIPPED for p in parents):
                skipped = transition_task(task, TaskStatus.SKIPPED, now)
                run = _with_task(run, skipped)
                effects.append(TaskStatusChanged(node_id, TaskStatus.SKIPPED, 0))
                continue
            run = _with_task(run, replace(task, attempt=1))
            effects.append(TaskStatusChanged(node_id, TaskStatus.PENDING, 1))
            effects.append(DispatchTask(node, 1, task_input(run, definition, node)))
    return Decision(_settle(run, now, effects), tuple(effects))


def _settle(run: RunState, now: datetime, effects: list[Effect]) -> RunState:
    if run.status.finished:
        return run
    in_flight = any(
        t.status is TaskStatus.RUNNING or (t.status is TaskStatus.PENDING and t.dispatched)
        for t in run.tasks.values()
    )
    if in_flight:
        return run
    if any(t.status is TaskStatus.FAILED for t in run.tasks.values()):
        target = RunStatus.FAILED
    elif all(t.status.finished for t in run.tasks.values()):
        target = RunStatus.SUCCEEDED
    else:
        return run
    effects.append(RunStatusChanged(run.status, target))
    return transition_run(run, target, now)


def _with_task(run: RunState, task: TaskState) -> RunState:
    return replace(run, tasks={**run.tasks, task.node_id: task})
