"""The executor: runs dispatched task attempts and reports what happened.

For each dispatch it records the attempt in MongoDB (input, output or error, timings)
and publishes ``TaskStarted``, a ``TaskHeartbeat`` every few seconds while it runs, then
``TaskSucceeded``/``TaskFailed`` on the task-events topic. A dispatch whose attempt
already finished (a redelivery) is not run again; its recorded result is published once
more, which the scheduler ignores if it has it. An attempt left running by an executor
that died is taken over, unless the scheduler declared it lost first (then the attempt
runs again under a new number).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from flowyard import codec
from flowyard.adapters.kafka import Publisher, Record
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.domain.engine import CANCELLED_CODE
from flowyard.domain.json import problem as json_problem
from flowyard.domain.run import Attempt, TaskError, TaskStatus
from flowyard.errors import DecodeError, InfrastructureError
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2

from flowyard_executor.actions import Actions
from flowyard_executor.log_sink import LogSink
from flowyard_executor.nodes import NodeOutcome

OUTPUT_NOT_JSON = "task.output_not_json"


def deliverable(outcome: NodeOutcome) -> NodeOutcome:
    """``outcome``, or a failure when its output cannot travel to the scheduler as a run's
    data (a NaN or nesting deeper than json.MAX_DEPTH, e.g. a document a query node read):
    the task fails here with the reason, instead of an event the scheduler cannot read."""
    found = json_problem(outcome.output)
    if not found:
        return outcome
    return replace(
        outcome,
        output=None,
        error=TaskError(OUTPUT_NOT_JSON, f"the node's output cannot be passed on: {found}"),
    )


log = logging.getLogger(__name__)

MAX_REMEMBERED_CANCELS = 10_000


def _now() -> datetime:
    return datetime.now(UTC)


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class Executor:
    def __init__(
        self,
        settings: Settings,
        store: MongoStore,
        publisher: Publisher,
        actions: Actions,
        metrics: ServiceMetrics,
        executor_id: str | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._topics = settings.topics
        self._store = store
        self._publisher = publisher
        self._actions = actions
        self._heartbeat_seconds = settings.heartbeat_seconds
        self._metrics = metrics
        self._clock = clock
        self.executor_id = executor_id or new_executor_id()
        self._log_sink = LogSink(store, publisher, settings.topics)
        self._running: dict[tuple[str, str, int], asyncio.Task[NodeOutcome]] = {}
        # Cancellations seen, so a dispatch that arrives after its cancel never starts.
        self._cancelled: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    async def handle(self, envelope: events_pb2.Envelope, record: Record) -> None:
        if envelope.WhichOneof("payload") == "cancel_task":
            self._cancel(envelope.run_id, envelope.cancel_task)
            return
        if envelope.WhichOneof("payload") != "dispatch_task":
            raise DecodeError(
                f"the executor does not handle {envelope.WhichOneof('payload')!r} messages"
            )
        dispatch = envelope.dispatch_task
        if not envelope.run_id or not dispatch.node_id or dispatch.attempt < 1:
            raise DecodeError("dispatch needs run_id, node_id and an attempt >= 1")
        key = (envelope.run_id, dispatch.node_id, dispatch.attempt)
        if key in self._cancelled:
            return  # stopped before it started: the scheduler counts it cancelled already
        inputs = codec.value_to_json(dispatch.input)
        attempt = Attempt(
            run_id=envelope.run_id,
            node_id=dispatch.node_id,
            number=dispatch.attempt,
            status=TaskStatus.RUNNING,
            input=inputs,
            executor_id=self.executor_id,
            started_at=self._clock(),
        )
        previous = await self._store.claim_attempt(attempt)
        if previous is not None and not previous.status.finished:
            # Claimed before but never finished: the executor that had it died (the offset
            # was not committed). At-least-once: run it again here, unless the scheduler
            # declared it lost meanwhile and dispatched a new attempt.
            if await self._store.take_over_attempt(attempt, previous.executor_id):
                previous = None
            else:
                previous = await self._store.find_attempt(
                    attempt.run_id, attempt.node_id, attempt.number
                )
        if previous is not None:
            if previous.status.finished:
                await self._report(envelope, previous)
            return
        started = self._envelope(envelope)
        started.task_started.CopyFrom(
            events_pb2.TaskStarted(
                node_id=dispatch.node_id, attempt=dispatch.attempt, executor_id=self.executor_id
            )
        )
        await self._publisher.publish(self._topics.task_events, envelope.run_id, started)
        self._metrics.tasks_in_flight.inc()
        heartbeat = asyncio.create_task(self._beat(envelope), name="heartbeat")
        # Its own task, so that a stop cancels the action (killing a code process)
        # without cancelling this handler, which still reports the outcome.
        action = asyncio.create_task(
            self._actions.run(
                dispatch.node_type,
                codec.struct_to_json(dispatch.config),
                inputs,
                dispatch.timeout_seconds or None,
            )
        )
        self._running[key] = action
        if key in self._cancelled:
            action.cancel()  # the cancellation came while the attempt was being claimed
        try:
            outcome = await asyncio.shield(action)
        except asyncio.CancelledError:
            if not (action.cancelled() and key in self._cancelled):
                action.cancel()  # the executor itself is shutting down
                raise
            outcome = NodeOutcome(
                error=TaskError(CANCELLED_CODE, "stopped by an operator while it ran")
            )
        finally:
            self._running.pop(key, None)
            heartbeat.cancel()
            self._metrics.tasks_in_flight.dec()
        outcome = deliverable(outcome)
        finished = replace(
            attempt,
            status=TaskStatus.FAILED if outcome.error else TaskStatus.SUCCEEDED,
            output=outcome.output,
            error=outcome.error,
            warnings=outcome.warnings,
            finished_at=self._clock(),
        )
        await self._store.save_attempt(finished)
        await self._log_sink.store(envelope, finished, outcome.logs)
        await self._report(envelope, finished)
        if finished.started_at and finished.finished_at:
            self._metrics.task_duration.labels(node_type=dispatch.node_type).observe(
                (finished.finished_at - finished.started_at).total_seconds()
            )
        self._metrics.tasks_finished.labels(
            node_type=dispatch.node_type, status=finished.status.value
        ).inc()

    def _cancel(self, run_id: str, cancel: events_pb2.CancelTask) -> None:
        key = (run_id, cancel.node_id, cancel.attempt)
        self._cancelled[key] = None
        while len(self._cancelled) > MAX_REMEMBERED_CANCELS:
            self._cancelled.popitem(last=False)
        action = self._running.get(key)
        if action is not None:
            log.info("cancelling %s/%s attempt %d", run_id, cancel.node_id, cancel.attempt)
            action.cancel()

    async def _beat(self, dispatch: events_pb2.Envelope) -> None:
        """Tell the scheduler this attempt is alive until it finishes."""
        task = dispatch.dispatch_task
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            beat = self._envelope(dispatch)
            beat.task_heartbeat.CopyFrom(
                events_pb2.TaskHeartbeat(
                    node_id=task.node_id, attempt=task.attempt, executor_id=self.executor_id
                )
            )
            try:
                await self._publisher.publish(self._topics.task_events, dispatch.run_id, beat)
            except InfrastructureError as exc:
                log.warning("heartbeat for %s/%s not sent: %s", dispatch.run_id, task.node_id, exc)

    async def _report(self, dispatch: events_pb2.Envelope, attempt: Attempt) -> None:
        event = self._envelope(dispatch)
        if attempt.finished_at is not None:
            stamp = codec.time_to_proto(attempt.finished_at)
            assert stamp is not None
            event.time.CopyFrom(stamp)
        if attempt.error is None:
            event.task_succeeded.CopyFrom(
                events_pb2.TaskSucceeded(
                    node_id=attempt.node_id,
                    attempt=attempt.number,
                    output=codec.json_to_value(attempt.output),
                    warnings=list(attempt.warnings),
                )
            )
        else:
            event.task_failed.CopyFrom(
                events_pb2.TaskFailed(
                    node_id=attempt.node_id,
                    attempt=attempt.number,
                    error=codec.error_to_proto(attempt.error),
                    output=codec.json_to_value(attempt.output),
                )
            )
        await self._publisher.publish(self._topics.task_events, attempt.run_id, event)

    @staticmethod
    def _envelope(dispatch: events_pb2.Envelope) -> events_pb2.Envelope:
        return codec.new_envelope(dispatch.run_id, dispatch.workflow_id, dispatch.workflow_version)
