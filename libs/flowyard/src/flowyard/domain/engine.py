"""How a run advances: pure functions from (run, definition, event) to (run, effects).

The scheduler feeds events in and carries the effects out (Kafka messages, timers in the
store); it never decides anything itself. Each function is idempotent: an event for an
attempt that is not the current one, or for a task already finished, changes nothing.

Readiness follows the edges: a node starts when every parent has finished and at least
one incoming edge is live (its parent succeeded and, for a condition, the edge belongs
to the branch taken). A node whose incoming edges are all dead is ``skipped``, and so,
in turn, is everything reachable only through it. A failed parent blocks its children;
the run fails once nothing is in flight any more.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from flowyard.domain import inline
from flowyard.domain.definition import Edge, Node, NodeType, WorkflowDefinition
from flowyard.domain.effects import (
    CancelTask,
    CancelTimers,
    Decision,
    DispatchTask,
    Effect,
    NotifyParent,
    RunStatusChanged,
    ScheduleTimer,
    StartChildRun,
    StopChildRun,
    TaskStatusChanged,
    TimerKind,
    Timing,
)
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.run import (
    AuditEntry,
    ParentLink,
    RunState,
    RunStatus,
    TaskError,
    TaskState,
    TaskStatus,
    TriggerInfo,
    transition_run,
    transition_task,
)

# The effect types are part of the engine's interface (``engine.DispatchTask`` etc.).
__all__ = [
    "MAX_LOST_ATTEMPTS",
    "CancelTask",
    "CancelTimers",
    "Decision",
    "DispatchTask",
    "Effect",
    "NotifyParent",
    "RunStatusChanged",
    "ScheduleTimer",
    "StartChildRun",
    "StopChildRun",
    "TaskStatusChanged",
    "TimerKind",
    "Timing",
    "advance",
    "approval_decided",
    "child_run_finished",
    "new_run",
    "reject",
    "resend_effects",
    "run_output",
    "start",
    "task_failed",
    "task_input",
    "task_started",
    "task_succeeded",
    "timer_fired",
]

# The error code an executor reports for an attempt it killed on a stop.
CANCELLED_CODE = "task.cancelled"

# A task whose executors keep dying (say, it kills them) fails after this many losses.
MAX_LOST_ATTEMPTS = 3


def new_run(
    run_id: str,
    workflow_id: str,
    workflow_version: int,
    definition: WorkflowDefinition,
    trigger: TriggerInfo,
    now: datetime,
    *,
    test: bool = False,
    parent: ParentLink | None = None,
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
        test=test,
        parent=parent,
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


def reject(run: RunState, error: TaskError, now: datetime) -> Decision:
    """A queued run that may not start (workflow not active, concurrency full) fails."""
    if run.status is not RunStatus.QUEUED:
        return Decision(run)
    run = replace(transition_run(run, RunStatus.FAILED, now), error=error)
    effects: list[Effect] = [RunStatusChanged(RunStatus.QUEUED, RunStatus.FAILED)]
    if run.parent is not None and run.parent.wait:
        effects.append(NotifyParent(run.parent, run.run_id, run.status, None, error))
    return Decision(run, tuple(effects))


def task_started(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    attempt: int,
    executor_id: str,
    now: datetime,
    timing: Timing,
) -> Decision:
    task = run.tasks.get(node_id)
    if task is None or task.attempt != attempt or run.status.finished:
        return Decision(run)
    node = definition.node(node_id)
    lease = ScheduleTimer(node_id, attempt, TimerKind.LEASE, now + timing.lease)
    if task.status is TaskStatus.RUNNING and executor_id and executor_id != task.executor_id:
        # Another executor took the attempt over from one that died.
        return Decision(_with_task(run, replace(task, executor_id=executor_id)), (lease,))
    if not task.dispatched:
        return Decision(run)
    running = replace(transition_task(task, TaskStatus.RUNNING, now), executor_id=executor_id)
    # No lease yet: the executor's first heartbeat creates it. A short task thus costs no
    # timer writes, and an executor dying before its first heartbeat leaves the dispatch
    # uncommitted in Kafka, which hands it to another executor.
    effects: list[Effect] = [TaskStatusChanged(node_id, TaskStatus.RUNNING, attempt)]
    if node.timeout_seconds:
        deadline = now + timedelta(seconds=node.timeout_seconds) + timing.deadline_grace
        effects.append(ScheduleTimer(node_id, attempt, TimerKind.DEADLINE, deadline))
    run = _with_task(run, running)
    return Decision(_settle(run, definition, now, effects), tuple(effects))


def task_succeeded(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    attempt: int,
    output: JsonValue,
    now: datetime,
    warnings: tuple[str, ...] = (),
) -> Decision:
    task = run.tasks.get(node_id)
    if task is None or task.attempt != attempt or not task.in_flight:
        return Decision(run)
    done = replace(
        transition_task(task, TaskStatus.SUCCEEDED, now),
        output=output,
        error=None,
        warnings=warnings,
        due_at=None,
    )
    run = _with_task(run, done)
    effects: list[Effect] = [TaskStatusChanged(node_id, TaskStatus.SUCCEEDED, attempt)]
    effects.extend(_drop_deadline(definition, node_id))
    return _advance(run, definition, now, effects)


def _drop_deadline(definition: WorkflowDefinition, node_id: str) -> list[Effect]:
    """Timers of a finished attempt. Only a deadline is worth a delete: a heartbeat's
    lease left behind fires once and finds the attempt finished."""
    return [CancelTimers(node_id)] if definition.node(node_id).timeout_seconds else []


def task_failed(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    attempt: int,
    error: TaskError,
    now: datetime,
    output: JsonValue = None,
) -> Decision:
    """A failed attempt; ``output`` is what it produced anyway (kept if the task fails)."""
    task = run.tasks.get(node_id)
    if task is None or task.attempt != attempt or not task.in_flight:
        return Decision(run)
    effects: list[Effect] = _drop_deadline(definition, node_id)
    run = _fail_attempt(run, definition, task, error, now, effects, output)
    return _advance(run, definition, now, effects)


def timer_fired(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    attempt: int,
    kind: TimerKind,
    now: datetime,
) -> Decision:
    """A stored timer came due; stale timers (the task moved on) change nothing."""
    task = run.tasks.get(node_id)
    if task is None or task.attempt != attempt or run.status.finished:
        return Decision(run)
    node = effective_node(run, definition.node(node_id))
    effects: list[Effect] = []
    if kind is TimerKind.RETRY and task.retry_scheduled:
        run = _with_task(run, replace(task, due_at=None))
        effects.append(DispatchTask(node, attempt, task_input(run, definition, node)))
        return Decision(run, tuple(effects))
    if kind is TimerKind.WAIT and task.status is TaskStatus.WAITING and node.type is NodeType.WAIT:
        done = replace(
            transition_task(task, TaskStatus.SUCCEEDED, now),
            output=inline.resumed(task.due_at, now),
            due_at=None,
        )
        run = _with_task(run, done)
        effects.append(TaskStatusChanged(node_id, TaskStatus.SUCCEEDED, attempt))
        return _advance(run, definition, now, effects)
    if task.status is not TaskStatus.RUNNING or not node.type.runs_on_executor:
        return Decision(run)
    if kind is TimerKind.LEASE:
        run = _lose_attempt(run, definition, task, now, effects)
    elif kind is TimerKind.DEADLINE:
        error = TaskError(
            "task.timeout", f"attempt {attempt} gave no result within {node.timeout_seconds} s"
        )
        effects.append(CancelTimers(node_id))
        run = _fail_attempt(run, definition, task, error, now, effects)
    else:
        return Decision(run)
    return _advance(run, definition, now, effects)


def approval_decided(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    approved: bool,
    decided_by: str,
    comment: str,
    now: datetime,
) -> Decision:
    task = run.tasks.get(node_id)
    if task is None or task.status is not TaskStatus.WAITING or run.status.finished:
        return Decision(run)
    if definition.node(node_id).type is not NodeType.APPROVAL:
        return Decision(run)
    output = inline.decision_output(approved, decided_by, comment, now)
    effects: list[Effect] = []
    action = "approve" if approved else "reject"
    entry = AuditEntry(at=now, actor=decided_by, action=action, node_id=node_id, comment=comment)
    run = replace(run, audit=(*run.audit, entry))
    if approved:
        done = replace(transition_task(task, TaskStatus.SUCCEEDED, now), output=output)
        run = _with_task(run, done)
        effects.append(TaskStatusChanged(node_id, TaskStatus.SUCCEEDED, task.attempt))
    else:
        reason = f"rejected by {decided_by or 'unknown'}" + (f": {comment}" if comment else "")
        run = _fail_task(run, task, TaskError("approval.rejected", reason), now, effects, output)
    return _advance(run, definition, now, effects)


def child_run_finished(
    run: RunState,
    definition: WorkflowDefinition,
    node_id: str,
    attempt: int,
    child_run_id: str,
    status: RunStatus,
    output: JsonValue,
    error: TaskError | None,
    now: datetime,
) -> Decision:
    task = run.tasks.get(node_id)
    if (
        task is None
        or task.attempt != attempt
        or task.status is not TaskStatus.RUNNING
        or task.child_run_id != child_run_id
    ):
        return Decision(run)
    result: JsonObject = {"run_id": child_run_id, "status": status.value, "output": output}
    effects: list[Effect] = []
    if status is RunStatus.SUCCEEDED:
        done = replace(transition_task(task, TaskStatus.SUCCEEDED, now), output=result)
        run = _with_task(run, done)
        effects.append(TaskStatusChanged(node_id, TaskStatus.SUCCEEDED, attempt))
    else:
        workflow = definition.node(node_id).config.get("workflow", "")
        detail = f": {error.message}" if error else ""
        failure = TaskError(
            f"workflow.child_{status.value}",
            f"run {child_run_id} of workflow {workflow!r} {status.value}{detail}",
        )
        run = _fail_task(run, task, failure, now, effects, result)
    return _advance(run, definition, now, effects)


def resend_effects(
    run: RunState, definition: WorkflowDefinition, now: datetime, timing: Timing
) -> tuple[Effect, ...]:
    """What the run waits for, sent again after a redelivered event.

    The earlier delivery may have stored the state and died before its effects left.
    Every receiver tolerates duplicates: executors claim attempts, timers already
    stored are kept, child runs have derived ids, parents ignore stale news.
    """
    if run.status.finished:
        if run.parent is None or not run.parent.wait:
            return ()
        return (_notify_parent(run, definition, run.parent),)
    effects: list[Effect] = []
    for task in run.tasks.values():
        node = effective_node(run, definition.node(task.node_id))
        n = task.attempt
        if task.dispatched:
            effects.append(DispatchTask(node, n, task_input(run, definition, node)))
        elif task.retry_scheduled and task.due_at is not None:
            effects.append(ScheduleTimer(node.id, n, TimerKind.RETRY, task.due_at, True))
        elif task.status is TaskStatus.WAITING and task.due_at is not None:
            effects.append(ScheduleTimer(node.id, n, TimerKind.WAIT, task.due_at, True))
        elif task.status is TaskStatus.RUNNING and node.type.runs_on_executor:
            effects.append(ScheduleTimer(node.id, n, TimerKind.LEASE, now + timing.lease, True))
            if node.timeout_seconds and task.started_at is not None:
                deadline = (
                    task.started_at
                    + timedelta(seconds=node.timeout_seconds)
                    + timing.deadline_grace
                )
                effects.append(ScheduleTimer(node.id, n, TimerKind.DEADLINE, deadline, True))
        elif node.type is NodeType.RUN_WORKFLOW and task.child_run_id:
            # Waiting or fire-and-forget alike: the child may never have been asked to start.
            child = inline.child_run(run.run_id, node, n, task_input(run, definition, node))
            if isinstance(child, inline.ChildRun):
                link = ParentLink(run.run_id, node.id, n, wait=child.wait)
                effects.append(StartChildRun(child, link))
    return tuple(effects)


def task_input(run: RunState, definition: WorkflowDefinition, node: Node | str) -> JsonObject:
    """What a node sees: trigger data, both contexts, and every upstream node's output."""
    if isinstance(node, str):
        node = definition.node(node)
    upstream: dict[str, JsonValue] = {}
    for ancestor in sorted(definition.ancestors(node.id)):
        state = run.tasks[ancestor]
        if state.status is TaskStatus.SUCCEEDED or state.skipped_by_operator:
            upstream[ancestor] = state.output  # an operator's skip supplies the output
    return {
        "trigger": run.trigger.data,
        "context": dict(definition.context),
        "node_context": dict(node.context),
        "upstream": upstream,
    }


def run_output(run: RunState, definition: WorkflowDefinition) -> JsonObject:
    """A finished run's result: the outputs of its final (sink) tasks that succeeded."""
    return {
        node_id: run.tasks[node_id].output
        for node_id in definition.sinks()
        if run.tasks[node_id].status is TaskStatus.SUCCEEDED
    }


# --- internals -------------------------------------------------------------------------


def _fail_attempt(
    run: RunState,
    definition: WorkflowDefinition,
    task: TaskState,
    error: TaskError,
    now: datetime,
    effects: list[Effect],
    output: JsonValue = None,
) -> RunState:
    """A failed attempt: retry under the node's policy, or fail the task."""
    node = effective_node(run, definition.node(task.node_id))
    used = task.attempt - task.base_attempt - task.lost_attempts
    if run.status is RunStatus.STOPPING and error.code == CANCELLED_CODE:
        cancelled = replace(
            transition_task(task, TaskStatus.CANCELLED, now), error=error, due_at=None
        )
        effects.append(TaskStatusChanged(task.node_id, TaskStatus.CANCELLED, task.attempt))
        return _with_task(run, cancelled)
    if used >= node.retry.max_attempts or run.status.finished or run.status is RunStatus.STOPPING:
        return _fail_task(run, task, error, now, effects, output)
    next_attempt = task.attempt + 1
    delay = node.retry.backoff_before(used + 1, salt=f"{run.run_id}/{node.id}")
    due = now + timedelta(seconds=delay) if delay > 0 else None
    retried = replace(
        task, status=TaskStatus.PENDING, attempt=next_attempt, error=error, due_at=due
    )
    run = _with_task(run, retried)
    effects.append(TaskStatusChanged(node.id, TaskStatus.PENDING, next_attempt))
    if due is None:
        effects.append(DispatchTask(node, next_attempt, task_input(run, definition, node)))
    else:
        effects.append(ScheduleTimer(node.id, next_attempt, TimerKind.RETRY, due))
    return run


def _lose_attempt(
    run: RunState,
    definition: WorkflowDefinition,
    task: TaskState,
    now: datetime,
    effects: list[Effect],
) -> RunState:
    """The executor running ``task`` stopped sending heartbeats: run it elsewhere."""
    node = effective_node(run, definition.node(task.node_id))
    who = task.executor_id or "unknown"
    effects.append(CancelTimers(node.id))
    if run.status is RunStatus.STOPPING and node.cancellable:
        # Being stopped: the lost attempt is not run again, it counts as cancelled.
        error = TaskError("executor.lost", f"executor {who} stopped responding while stopping")
        cancelled = replace(
            transition_task(task, TaskStatus.CANCELLED, now), error=error, due_at=None
        )
        effects.append(TaskStatusChanged(node.id, TaskStatus.CANCELLED, task.attempt))
        return _with_task(run, cancelled)
    if task.lost_attempts + 1 >= MAX_LOST_ATTEMPTS:
        error = TaskError(
            "executor.lost",
            f"executor {who} stopped responding; {task.lost_attempts + 1} attempts were lost",
        )
        return _fail_task(run, task, error, now, effects)
    error = TaskError("executor.lost", f"executor {who} stopped responding; re-dispatched")
    next_attempt = task.attempt + 1
    moved = replace(
        task,
        status=TaskStatus.PENDING,
        attempt=next_attempt,
        error=error,
        executor_id="",
        lost_attempts=task.lost_attempts + 1,
    )
    run = _with_task(run, moved)
    effects.append(TaskStatusChanged(node.id, TaskStatus.PENDING, next_attempt))
    effects.append(DispatchTask(node, next_attempt, task_input(run, definition, node)))
    return run


def _fail_task(
    run: RunState,
    task: TaskState,
    error: TaskError,
    now: datetime,
    effects: list[Effect],
    output: JsonValue = None,
) -> RunState:
    failed = replace(
        transition_task(task, TaskStatus.FAILED, now), error=error, output=output, due_at=None
    )
    run = _with_task(run, failed)
    if not run.error:
        run = replace(run, error=error, failed_node_id=task.node_id)
    effects.append(TaskStatusChanged(task.node_id, TaskStatus.FAILED, task.attempt))
    return run


def _edge_live(edge: Edge, parent: TaskState) -> bool:
    if parent.status is TaskStatus.SKIPPED and parent.skipped_by_operator:
        return True  # the operator chose to go on past this task
    if parent.status is not TaskStatus.SUCCEEDED:
        return False
    if not edge.when:
        return True
    output = parent.output
    return isinstance(output, dict) and output.get("branch") == edge.when


def _advance(
    run: RunState, definition: WorkflowDefinition, now: datetime, effects: list[Effect]
) -> Decision:
    """Start every node whose parents are done, then settle the run's status."""
    if run.status in (RunStatus.RUNNING, RunStatus.WAITING) or _cleaning(run, definition):
        # Topological order: a condition settled inline is seen by its children below.
        for node_id in definition.topological_order():
            task = run.tasks[node_id]
            edges = definition.incoming(node_id)
            node = definition.node(node_id)
            if task.status is not TaskStatus.PENDING or task.begun:
                continue
            if node.cleanup != (run.status is RunStatus.STOPPING):
                continue  # cleanup nodes run only while a stop with cleanup finishes
            if not edges:
                if node.cleanup:  # a root of the cleanup graph
                    run = _begin(run, definition, node, now, effects)
                continue
            parents = {e.source: run.tasks[e.source] for e in edges}
            if not all(p.status.finished for p in parents.values()):
                continue
            if any(p.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) for p in parents.values()):
                continue
            if not any(_edge_live(e, parents[e.source]) for e in edges):
                run = _with_task(run, transition_task(task, TaskStatus.SKIPPED, now))
                effects.append(TaskStatusChanged(node_id, TaskStatus.SKIPPED, 0))
                continue
            run = _begin(run, definition, node, now, effects)
    return Decision(_settle(run, definition, now, effects), tuple(effects))


def advance(
    run: RunState, definition: WorkflowDefinition, now: datetime, effects: list[Effect]
) -> Decision:
    """Start what is ready and settle the run (for operators' commands)."""
    return _advance(run, definition, now, effects)


def _cleaning(run: RunState, definition: WorkflowDefinition) -> bool:
    """A stop with cleanup whose regular tasks have all come to rest."""
    if run.status is not RunStatus.STOPPING or not run.cleanup_requested:
        return False
    return not any(
        t.in_flight for t in run.tasks.values() if not definition.node(t.node_id).cleanup
    )


def _begin(
    run: RunState,
    definition: WorkflowDefinition,
    node: Node,
    now: datetime,
    effects: list[Effect],
) -> RunState:
    """The round's first attempt of a node: dispatched, or settled here for inline types."""
    n = run.task(node.id).base_attempt + 1
    task = replace(run.task(node.id), attempt=n)
    node = effective_node(run, node)
    scope = task_input(run, definition, node)
    if node.type.runs_on_executor:
        effects.append(TaskStatusChanged(node.id, TaskStatus.PENDING, n))
        effects.append(DispatchTask(node, n, scope))
        return _with_task(run, task)
    if node.type in (NodeType.CONDITION, NodeType.TRANSFORM):
        evaluate = inline.condition if node.type is NodeType.CONDITION else inline.transform
        settled = evaluate(node, scope)
        if settled.error is not None:
            return _fail_task(run, task, settled.error, now, effects)
        done = replace(transition_task(task, TaskStatus.SUCCEEDED, now), output=settled.output)
        effects.append(TaskStatusChanged(node.id, TaskStatus.SUCCEEDED, n))
        return _with_task(run, done)
    if node.type is NodeType.WAIT:
        due = inline.wait_until(node, scope, now)
        if isinstance(due, TaskError):
            return _fail_task(run, task, due, now, effects)
        waiting = replace(transition_task(task, TaskStatus.WAITING, now), due_at=due)
        effects.append(TaskStatusChanged(node.id, TaskStatus.WAITING, n))
        effects.append(ScheduleTimer(node.id, n, TimerKind.WAIT, due))
        return _with_task(run, replace(waiting, started_at=now))
    if node.type is NodeType.APPROVAL:
        waiting = replace(transition_task(task, TaskStatus.WAITING, now), started_at=now)
        effects.append(TaskStatusChanged(node.id, TaskStatus.WAITING, n))
        return _with_task(run, waiting)
    if node.type is NodeType.RUN_WORKFLOW:
        child = inline.child_run(run.run_id, node, n, scope)
        if isinstance(child, TaskError):
            return _fail_task(run, task, child, now, effects)
        effects.append(StartChildRun(child, ParentLink(run.run_id, node.id, n, child.wait)))
        if child.wait:
            running = transition_task(task, TaskStatus.RUNNING, now)
            effects.append(TaskStatusChanged(node.id, TaskStatus.RUNNING, n))
            return _with_task(run, replace(running, child_run_id=child.run_id))
        output: JsonObject = {"run_id": child.run_id, "workflow": child.workflow}
        done = replace(
            transition_task(task, TaskStatus.SUCCEEDED, now),
            output=output,
            child_run_id=child.run_id,
        )
        effects.append(TaskStatusChanged(node.id, TaskStatus.SUCCEEDED, n))
        return _with_task(run, done)
    error = TaskError("node.unsupported", f"the engine cannot run {node.type.value!r} nodes")
    return _fail_task(run, task, error, now, effects)


def _settle(
    run: RunState, definition: WorkflowDefinition, now: datetime, effects: list[Effect]
) -> RunState:
    if run.status.finished or run.status is RunStatus.QUEUED:
        return run
    regular = [t for t in run.tasks.values() if not definition.node(t.node_id).cleanup]
    if run.status is RunStatus.STOPPING:
        cleanup = [t for t in run.tasks.values() if definition.node(t.node_id).cleanup]
        if any(t.in_flight for t in regular) or any(t.in_flight for t in cleanup):
            return run
        if _cleaning(run, definition) and any(
            t.status is TaskStatus.PENDING and not t.begun for t in cleanup
        ):
            return run  # cleanup nodes still to start (their parents are running)
        return _finish(run, definition, RunStatus.STOPPED, now, effects)
    in_flight = any(t.in_flight for t in regular)
    waiting = [t for t in regular if t.status is TaskStatus.WAITING]
    failed = [t for t in regular if t.status is TaskStatus.FAILED]
    if failed and not in_flight:
        # Nothing can succeed any more: waiting approvals and delays are called off.
        for task in waiting:
            cancelled = replace(transition_task(task, TaskStatus.CANCELLED, now), due_at=None)
            run = _with_task(run, cancelled)
            effects.append(TaskStatusChanged(task.node_id, TaskStatus.CANCELLED, task.attempt))
        if run.error is None:
            run = replace(run, error=failed[0].error, failed_node_id=failed[0].node_id)
        target = RunStatus.FAILED
    elif in_flight:
        target = RunStatus.RUNNING
    elif waiting:
        target = RunStatus.WAITING
    elif all(t.status.finished for t in regular):
        target = RunStatus.SUCCEEDED
    else:
        return run
    if target is run.status:
        return run
    if target.finished:
        return _finish(run, definition, target, now, effects)
    effects.append(RunStatusChanged(run.status, target))
    return transition_run(run, target, now)


def _finish(
    run: RunState,
    definition: WorkflowDefinition,
    target: RunStatus,
    now: datetime,
    effects: list[Effect],
) -> RunState:
    # Cleanup nodes that had no reason to run say so instead of staying pending.
    for task in run.tasks.values():
        if definition.node(task.node_id).cleanup and task.status is TaskStatus.PENDING:
            run = _with_task(run, transition_task(task, TaskStatus.SKIPPED, now))
            effects.append(TaskStatusChanged(task.node_id, TaskStatus.SKIPPED, task.attempt))
    effects.append(RunStatusChanged(run.status, target))
    run = transition_run(run, target, now)
    effects.append(CancelTimers())
    if run.parent is not None and run.parent.wait:
        effects.append(_notify_parent(run, definition, run.parent))
    return run


def _notify_parent(run: RunState, definition: WorkflowDefinition, parent: ParentLink) -> Effect:
    return NotifyParent(parent, run.run_id, run.status, run_output(run, definition), run.error)


def effective_node(run: RunState, node: Node) -> Node:
    """The node with this run's overrides (a resolution's new threshold) applied."""
    override = run.overrides.get(node.id)
    if not override:
        return node
    return replace(node, config={**node.config, **override})


def with_task(run: RunState, task: TaskState) -> RunState:
    return _with_task(run, task)


def _with_task(run: RunState, task: TaskState) -> RunState:
    return replace(run, tasks={**run.tasks, task.node_id: task})
