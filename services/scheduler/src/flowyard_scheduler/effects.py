"""Carries the engine's effects out: timers into the store, messages onto Kafka.

Called only after the run that caused the effects is stored, so a crash in between
leaves a state from which :func:`flowyard.domain.engine.resend_effects` recovers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from flowyard import codec
from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.mongo_documents import StoredTimer
from flowyard.config import Topics
from flowyard.domain import engine
from flowyard.domain.control import Command
from flowyard.domain.definition import WorkflowDefinition
from flowyard.domain.run import RunState, RunStatus, TaskStatus, TriggerInfo, TriggerKind
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2, run_pb2
from google.protobuf.message import Message

from flowyard_scheduler.run_after import RunAfter

TIMER_KIND_TO_PROTO = {
    engine.TimerKind.RETRY: events_pb2.TIMER_KIND_RETRY,
    engine.TimerKind.WAIT: events_pb2.TIMER_KIND_WAIT,
    engine.TimerKind.LEASE: events_pb2.TIMER_KIND_LEASE,
    engine.TimerKind.DEADLINE: events_pb2.TIMER_KIND_DEADLINE,
}
TIMER_KIND_FROM_PROTO = {v: k for k, v in TIMER_KIND_TO_PROTO.items()}


class EffectPublisher:
    def __init__(
        self, topics: Topics, store: MongoStore, publisher: Publisher, metrics: ServiceMetrics
    ) -> None:
        self._topics = topics
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        # Starts the workflows that run after a run that succeeded (FEATURES T5).
        self.run_after = RunAfter(topics, store, publisher, metrics)

    async def carry_out(
        self,
        run: RunState,
        definition: WorkflowDefinition,
        effects: Sequence[engine.Effect],
        finished_at: datetime | None = None,
    ) -> None:
        messages: list[tuple[str, str, Message]] = []
        dispatched = False
        for effect in effects:
            if isinstance(effect, engine.ScheduleTimer):
                await self._store.schedule_timer(_timer(run, effect), effect.keep_existing)
            elif isinstance(effect, engine.CancelTimers):
                await self._store.cancel_timers(run.run_id, effect.node_id)
            elif isinstance(effect, engine.DispatchTask):
                dispatched = True
                messages.append((self._topics.tasks, run.run_id, _dispatch(run, effect)))
            elif isinstance(effect, engine.RunStatusChanged):
                messages.append((self._topics.run_events, run.run_id, _run_status(run, effect)))
                self._count_run_status(run, effect)
                if effect.status.finished and definition.concurrency.max_runs and not run.test:
                    messages.append(await self.free_slot(run))
            elif isinstance(effect, engine.TaskStatusChanged):
                event = _task_status(run, definition, effect)
                messages.append((self._topics.run_events, run.run_id, event))
            elif isinstance(effect, engine.StartChildRun):
                messages.append((self._topics.triggers, effect.child.run_id, _child(run, effect)))
            elif isinstance(effect, engine.StopChildRun):
                stop = Command(
                    "stop",
                    actor=effect.actor,
                    command_id=f"stop-with-parent-{effect.parent_run_id}",
                    comment=f"its parent run {effect.parent_run_id} was stopped",
                )
                envelope = codec.new_envelope(effect.child_run_id)
                envelope.run_command.CopyFrom(codec.command_to_proto(stop))
                messages.append((self._topics.commands, effect.child_run_id, envelope))
            elif isinstance(effect, engine.CancelTask):
                messages.append((self._topics.tasks, run.run_id, _cancel(run, effect)))
            else:
                parent = effect.parent
                messages.append((self._topics.task_events, parent.run_id, _notify(effect)))
        if messages:
            await self._publisher.publish_many(messages)
        if any(_succeeded(effect) for effect in effects):
            await self.run_after.run_finished(run, definition)
        if dispatched and finished_at is not None:
            handoff = (datetime.now(UTC) - finished_at).total_seconds()
            self._metrics.step_handoff.observe(max(0.0, handoff))

    async def publish(self, item: tuple[str, str, Message]) -> None:
        await self._publisher.publish_many([item])

    async def free_slot(self, run: RunState) -> tuple[str, str, Message]:
        """Give the run's concurrency slot back and wake the workflow's queued runs."""
        await self._store.release_slot(run.workflow_id, run.run_id)
        envelope = codec.new_envelope("", run.workflow_id, run.workflow_version)
        envelope.slot_freed.SetInParent()
        return (self._topics.triggers, run.workflow_id, envelope)

    def _count_run_status(self, run: RunState, change: engine.RunStatusChanged) -> None:
        status = change.status
        if change.previous is RunStatus.QUEUED and status is RunStatus.RUNNING:
            self._metrics.runs_started.labels(
                workflow=run.workflow_name, trigger=run.trigger.kind.value
            ).inc()
        if status.finished:
            self._metrics.runs_finished.labels(
                workflow=run.workflow_name, status=status.value
            ).inc()
            if run.started_at and run.finished_at:
                self._metrics.run_duration.labels(workflow=run.workflow_name).observe(
                    (run.finished_at - run.started_at).total_seconds()
                )


def _succeeded(effect: engine.Effect) -> bool:
    return isinstance(effect, engine.RunStatusChanged) and effect.status is RunStatus.SUCCEEDED


def _envelope(run: RunState) -> events_pb2.Envelope:
    return codec.new_envelope(run.run_id, run.workflow_id, run.workflow_version)


def _timer(run: RunState, effect: engine.ScheduleTimer) -> StoredTimer:
    return StoredTimer(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        workflow_version=run.workflow_version,
        node_id=effect.node_id,
        attempt=effect.attempt,
        kind=effect.kind.value,
        due_at=effect.due_at,
    )


def _dispatch(run: RunState, effect: engine.DispatchTask) -> events_pb2.Envelope:
    envelope = _envelope(run)
    node = effect.node
    envelope.dispatch_task.CopyFrom(
        events_pb2.DispatchTask(
            node_id=node.id,
            node_type=node.type.value,
            attempt=effect.attempt,
            config=codec.json_to_struct(node.config),
            input=codec.json_to_value(effect.input),
            timeout_seconds=node.timeout_seconds,
            not_before=codec.time_to_proto(effect.not_before),
            cancellable=node.cancellable,
        )
    )
    return envelope


def _run_status(run: RunState, effect: engine.RunStatusChanged) -> events_pb2.Envelope:
    envelope = _envelope(run)
    envelope.run_status_changed.CopyFrom(
        events_pb2.RunStatusChanged(
            status=codec.RUN_STATUS_TO_PROTO[effect.status],
            previous=codec.RUN_STATUS_TO_PROTO[effect.previous],
            workflow_name=run.workflow_name,
            workflow_type=run.workflow_type,
            error=codec.error_to_proto(run.error),
            failed_node_id=run.failed_node_id,
            actor=run.stopped_by if effect.status.finished else "",
        )
    )
    return envelope


def _task_status(
    run: RunState, definition: WorkflowDefinition, effect: engine.TaskStatusChanged
) -> events_pb2.Envelope:
    envelope = _envelope(run)
    task = run.tasks.get(effect.node_id)
    failed = effect.status is TaskStatus.FAILED and task is not None
    envelope.task_status_changed.CopyFrom(
        events_pb2.TaskStatusChanged(
            node_id=effect.node_id,
            status=codec.TASK_STATUS_TO_PROTO[effect.status],
            attempt=effect.attempt,
            node_type=definition.node(effect.node_id).type.value,
            warnings=list(task.warnings) if task else [],
            error=codec.error_to_proto(task.error) if failed and task else None,
            workflow_name=run.workflow_name,
            workflow_type=run.workflow_type,
        )
    )
    return envelope


def _child(run: RunState, effect: engine.StartChildRun) -> events_pb2.Envelope:
    child = effect.child
    trigger = TriggerInfo(
        kind=TriggerKind.WORKFLOW,
        data=child.input,
        detail=run.run_id,
        started_by=run.trigger.started_by,
    )
    envelope = codec.new_envelope(child.run_id)
    envelope.start_run.CopyFrom(
        events_pb2.StartRun(
            workflow_name=child.workflow,
            trigger=codec.trigger_to_proto(trigger),
            parent=events_pb2.ParentLink(
                run_id=effect.parent.run_id,
                node_id=effect.parent.node_id,
                attempt=effect.parent.attempt,
                wait=effect.parent.wait,
            ),
        )
    )
    return envelope


def _cancel(run: RunState, effect: engine.CancelTask) -> events_pb2.Envelope:
    envelope = _envelope(run)
    envelope.cancel_task.CopyFrom(
        events_pb2.CancelTask(node_id=effect.node_id, attempt=effect.attempt)
    )
    return envelope


def _notify(effect: engine.NotifyParent) -> events_pb2.Envelope:
    envelope = codec.new_envelope(effect.parent.run_id)
    envelope.child_run_finished.CopyFrom(
        events_pb2.ChildRunFinished(
            node_id=effect.parent.node_id,
            attempt=effect.parent.attempt,
            child_run_id=effect.child_run_id,
            status=codec.RUN_STATUS_TO_PROTO[effect.status],
            output=codec.json_to_value(effect.output),
            error=codec.error_to_proto(effect.error) or run_pb2.TaskError(),
        )
    )
    return envelope
