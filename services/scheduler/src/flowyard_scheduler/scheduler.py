"""The scheduler: turns start requests and task events into run state and dispatches.

It owns each run's document. For every message it loads the run (from its cache when
this instance already holds it: a run's events all arrive on one partition, so one
instance owns it), asks the domain engine what follows, stores the result with a
conditional write, and only then publishes the effects; the consumer commits the
offset after that. A redelivered message changes nothing and re-publishes in-flight
dispatches, which executors deduplicate.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from flowyard import codec
from flowyard.adapters.kafka import Publisher, Record
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.domain import engine
from flowyard.domain.definition import WorkflowDefinition
from flowyard.domain.run import RunState, RunStatus
from flowyard.errors import ConflictError, DecodeError, NotFoundError
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2
from google.protobuf.message import Message

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5
RUN_CACHE_SIZE = 10_000


def _now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        store: MongoStore,
        publisher: Publisher,
        metrics: ServiceMetrics,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._topics = settings.topics
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._definitions: dict[tuple[str, int], WorkflowDefinition] = {}

    def forget_runs(self) -> None:
        """Partitions moved: another instance may now own some runs, so drop the cache."""
        self._runs.clear()

    async def handle(self, envelope: events_pb2.Envelope, record: Record) -> None:
        kind = envelope.WhichOneof("payload")
        if not envelope.run_id:
            raise DecodeError(f"{kind} message has no run_id")
        if kind == "start_run":
            await self._start_run(envelope)
        elif kind == "task_started":
            started = envelope.task_started
            await self._apply(
                envelope.run_id,
                lambda run, _d, now: engine.task_started(
                    run, started.node_id, started.attempt, now
                ),
            )
        elif kind == "task_succeeded":
            done = envelope.task_succeeded
            output = codec.value_to_json(done.output)
            finished_at = codec.time_from_proto(envelope.time)
            await self._apply(
                envelope.run_id,
                lambda run, d, now: engine.task_succeeded(
                    run, d, done.node_id, done.attempt, output, now
                ),
                finished_at=finished_at,
            )
        elif kind == "task_failed":
            failed = envelope.task_failed
            error = codec.error_from_proto(failed.error)
            await self._apply(
                envelope.run_id,
                lambda run, d, now: engine.task_failed(
                    run, d, failed.node_id, failed.attempt, error, now
                ),
                finished_at=codec.time_from_proto(envelope.time),
            )
        else:
            raise DecodeError(f"the scheduler does not handle {kind!r} messages")

    async def _start_run(self, envelope: events_pb2.Envelope) -> None:
        request = envelope.start_run
        run = await self._load(envelope.run_id)
        if run is None:
            try:
                if envelope.workflow_id and envelope.workflow_version:
                    workflow = await self._store.workflow_version(
                        envelope.workflow_id, envelope.workflow_version
                    )
                else:
                    workflow = await self._store.latest_workflow(request.workflow_name)
            except NotFoundError as exc:
                raise DecodeError(f"cannot start run {envelope.run_id}: {exc}") from exc
            run = engine.new_run(
                envelope.run_id,
                workflow.workflow_id,
                workflow.version,
                workflow.definition,
                codec.trigger_from_proto(request.trigger),
                self._clock(),
            )
            self._definitions[(workflow.workflow_id, workflow.version)] = workflow.definition
            if not await self._store.insert_run(run):
                run = None  # created concurrently; load the stored one below
        await self._apply(envelope.run_id, engine.start, loaded=run)

    async def _apply(
        self,
        run_id: str,
        step: Callable[[RunState, WorkflowDefinition, datetime], engine.Decision],
        finished_at: datetime | None = None,
        loaded: RunState | None = None,
    ) -> None:
        for _ in range(MAX_CONFLICT_RETRIES):
            run = loaded or await self._load(run_id)
            loaded = None
            if run is None:
                raise DecodeError(f"event for unknown run {run_id}")
            definition = await self._definition(run)
            now = self._clock()
            decision = step(run, definition, now)
            if not decision.changed:
                # A redelivery: make sure what this run waits for was really dispatched.
                await self._publish(run, engine.redispatch_in_flight(run, definition), None)
                return
            try:
                stored = await self._store.save_run(decision.run, run.revision)
            except ConflictError:
                self._runs.pop(run_id, None)
                continue
            self._remember(stored)
            await self._publish(stored, decision.effects, finished_at)
            return
        raise ConflictError(f"run {run_id}: gave up after {MAX_CONFLICT_RETRIES} conflicts")

    async def _load(self, run_id: str) -> RunState | None:
        cached = self._runs.get(run_id)
        if cached is not None:
            self._runs.move_to_end(run_id)
            return cached
        return await self._store.find_run(run_id)

    def _remember(self, run: RunState) -> None:
        if run.status.finished:
            self._runs.pop(run.run_id, None)
            return
        self._runs[run.run_id] = run
        self._runs.move_to_end(run.run_id)
        while len(self._runs) > RUN_CACHE_SIZE:
            self._runs.popitem(last=False)

    async def _definition(self, run: RunState) -> WorkflowDefinition:
        key = (run.workflow_id, run.workflow_version)
        if key not in self._definitions:
            workflow = await self._store.workflow_version(*key)
            self._definitions[key] = workflow.definition
        return self._definitions[key]

    async def _publish(
        self, run: RunState, effects: tuple[engine.Effect, ...], finished_at: datetime | None
    ) -> None:
        if not effects:
            return
        messages: list[tuple[str, str, Message]] = []
        dispatched = False
        for effect in effects:
            envelope = codec.new_envelope(run.run_id, run.workflow_id, run.workflow_version)
            if isinstance(effect, engine.DispatchTask):
                dispatched = True
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
                messages.append((self._topics.tasks, run.run_id, envelope))
            elif isinstance(effect, engine.RunStatusChanged):
                envelope.run_status_changed.CopyFrom(
                    events_pb2.RunStatusChanged(
                        status=codec.RUN_STATUS_TO_PROTO[effect.status],
                        previous=codec.RUN_STATUS_TO_PROTO[effect.previous],
                        workflow_name=run.workflow_name,
                        workflow_type=run.workflow_type,
                        error=codec.error_to_proto(run.error),
                        failed_node_id=run.failed_node_id,
                    )
                )
                messages.append((self._topics.run_events, run.run_id, envelope))
                self._count_run_status(run, effect)
            else:
                envelope.task_status_changed.CopyFrom(
                    events_pb2.TaskStatusChanged(
                        node_id=effect.node_id,
                        status=codec.TASK_STATUS_TO_PROTO[effect.status],
                        attempt=effect.attempt,
                    )
                )
                messages.append((self._topics.run_events, run.run_id, envelope))
        await self._publisher.publish_many(messages)
        if dispatched and finished_at is not None:
            self._metrics.step_handoff.observe(max(0.0, (_now() - finished_at).total_seconds()))

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
