"""The scheduler: turns start requests, task events, timers and commands into run state.

It owns each run's document. For every message it loads the run (from its cache when
this instance already holds it: a run's events all arrive on one partition, so one
instance owns it), asks the domain engine what follows, stores the result with a
conditional write, and only then carries out the effects; the consumer commits the
offset after that. A redelivered message changes nothing and re-sends what the run
waits for (dispatches, timers, child-run news), which every receiver deduplicates.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from flowyard import codec
from flowyard.adapters.kafka import Publisher, Record
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.mongo_documents import StoredTimer, timer_id
from flowyard.config import Settings
from flowyard.domain import control, engine
from flowyard.domain.definition import WhenFull, WorkflowDefinition
from flowyard.domain.run import (
    ParentLink,
    RunState,
    RunStatus,
    TaskError,
    TaskStatus,
    TriggerInfo,
    TriggerKind,
)
from flowyard.domain.workflow import StoredWorkflow, WorkflowState
from flowyard.errors import ConflictError, DecodeError, NotFoundError
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2

from flowyard_scheduler.effects import TIMER_KIND_FROM_PROTO, EffectPublisher

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5
RUN_CACHE_SIZE = 10_000

Step = Callable[[RunState, WorkflowDefinition, datetime], engine.Decision]


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
        self._metrics = metrics
        self._clock = clock
        self._timing = engine.Timing(lease=timedelta(seconds=settings.task_lease_seconds))
        self._effects = EffectPublisher(settings.topics, store, publisher, metrics)
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._definitions: dict[tuple[str, int], WorkflowDefinition] = {}

    def forget_runs(self) -> None:
        """Partitions moved: another instance may now own some runs, so drop the cache."""
        self._runs.clear()

    async def handle(self, envelope: events_pb2.Envelope, record: Record) -> None:
        kind = envelope.WhichOneof("payload")
        if kind == "slot_freed":
            await self._start_queued(envelope.workflow_id)
            return
        if not envelope.run_id:
            raise DecodeError(f"{kind} message has no run_id")
        run_id = envelope.run_id
        at = codec.time_from_proto(envelope.time)
        timing = self._timing
        if kind == "start_run":
            await self._start_run(envelope)
        elif kind == "task_started":
            s = envelope.task_started
            await self._apply(
                run_id,
                lambda r, d, now: engine.task_started(
                    r, d, s.node_id, s.attempt, s.executor_id, now, timing
                ),
            )
        elif kind == "task_heartbeat":
            await self._heartbeat(envelope)
        elif kind == "task_succeeded":
            ok = envelope.task_succeeded
            output, warnings = codec.value_to_json(ok.output), tuple(ok.warnings)
            await self._apply(
                run_id,
                lambda r, d, now: engine.task_succeeded(
                    r, d, ok.node_id, ok.attempt, output, now, warnings
                ),
                finished_at=at,
            )
        elif kind == "task_failed":
            bad = envelope.task_failed
            error = codec.error_from_proto(bad.error)
            produced = codec.value_to_json(bad.output)
            await self._apply(
                run_id,
                lambda r, d, now: engine.task_failed(
                    r, d, bad.node_id, bad.attempt, error, now, produced
                ),
                finished_at=at,
            )
        elif kind == "timer_fired":
            await self._timer_fired(envelope)
        elif kind == "child_run_finished":
            await self._child_run_finished(envelope)
        elif kind == "run_command":
            await self._run_command(envelope)
        elif kind == "approval_decided":
            a = envelope.approval_decided
            await self._apply(
                run_id,
                lambda r, d, now: engine.approval_decided(
                    r, d, a.node_id, a.approved, a.decided_by, a.comment, now
                ),
            )
        else:
            raise DecodeError(f"the scheduler does not handle {kind!r} messages")

    # --- starting runs -----------------------------------------------------------------

    async def _start_run(self, envelope: events_pb2.Envelope) -> None:
        run = await self._load(envelope.run_id)
        if run is None:
            run = await self._create_run(envelope)
            if run is None:
                return
        if run.status is RunStatus.QUEUED:
            step = await self._admission(run, await self._definition(run))
        else:
            step = engine.start  # changes nothing: a redelivery, which re-sends effects
        await self._apply(envelope.run_id, step, loaded=run)

    async def _create_run(self, envelope: events_pb2.Envelope) -> RunState | None:
        request = envelope.start_run
        parent = None
        if request.HasField("parent") and request.parent.run_id:
            p = request.parent
            parent = ParentLink(p.run_id, p.node_id, p.attempt, p.wait)
        try:
            if request.test:
                definition = await self._store.snapshot(envelope.run_id)
                workflow_id, version = "", 0
            else:
                workflow = await self._resolve(envelope)
                definition, workflow_id, version = (
                    workflow.definition,
                    workflow.workflow_id,
                    workflow.version,
                )
        except NotFoundError as exc:
            if parent is not None and parent.wait:
                # The parent task waits for this run: tell it there will be none.
                await self._effects.carry_out(
                    _orphan(envelope.run_id), _EMPTY, [_no_child(parent, envelope.run_id, exc)]
                )
                return None
            raise DecodeError(f"cannot start run {envelope.run_id}: {exc}") from exc
        run = engine.new_run(
            envelope.run_id,
            workflow_id,
            version,
            definition,
            codec.trigger_from_proto(request.trigger),
            self._clock(),
            test=request.test,
            parent=parent,
        )
        self._definitions[_definition_key(run)] = definition
        if not await self._store.insert_run(run):
            return await self._store.find_run(run.run_id)  # created concurrently
        return run

    async def _resolve(self, envelope: events_pb2.Envelope) -> StoredWorkflow:
        if envelope.workflow_id and envelope.workflow_version:
            return await self._store.workflow_version(
                envelope.workflow_id, envelope.workflow_version
            )
        return await self._store.latest_workflow(envelope.start_run.workflow_name)

    async def _admission(self, run: RunState, definition: WorkflowDefinition) -> Step:
        """Start a queued run if its workflow is active and a concurrency slot is free."""
        if run.test:
            return engine.start
        latest = await self._store.latest_workflow(run.workflow_id)
        if latest.state is not WorkflowState.ACTIVE:
            self._not_started(run, latest.state.value)
            state = latest.state.value
            error = TaskError(
                f"workflow.{state}", f"workflow {run.workflow_name!r} is {state}; it starts no runs"
            )
            return lambda r, _d, now: engine.reject(r, error, now)
        limit = definition.concurrency
        if limit.max_runs and not await self._store.acquire_slot(
            run.workflow_id, run.run_id, limit.max_runs
        ):
            self._not_started(run, "concurrency")
            if limit.when_full is WhenFull.REJECT:
                error = TaskError(
                    "concurrency.limit",
                    f"workflow {run.workflow_name!r} already runs {limit.max_runs} "
                    "run(s) at once and rejects more",
                )
                return lambda r, _d, now: engine.reject(r, error, now)
            return lambda r, _d, _now: engine.Decision(r)  # queued until a slot frees up
        return engine.start

    def _not_started(self, run: RunState, reason: str) -> None:
        log.info("run %s of %s not started: %s", run.run_id, run.workflow_name, reason)
        self._metrics.runs_not_started.labels(workflow=run.workflow_name, reason=reason).inc()

    async def _start_queued(self, workflow_id: str) -> None:
        """A slot freed up: ask the oldest queued runs to try again, in their own order."""
        if not workflow_id:
            raise DecodeError("slot_freed message has no workflow_id")
        for run_id in await self._store.queued_run_ids(workflow_id, limit=10):
            retry = codec.new_envelope(run_id, workflow_id)
            retry.start_run.SetInParent()
            await self._effects.publish((self._topics.triggers, run_id, retry))

    # --- timers, heartbeats, child runs ------------------------------------------------

    async def _heartbeat(self, envelope: events_pb2.Envelope) -> None:
        beat = envelope.task_heartbeat
        lease = StoredTimer(
            run_id=envelope.run_id,
            workflow_id=envelope.workflow_id,
            workflow_version=envelope.workflow_version,
            node_id=beat.node_id,
            attempt=beat.attempt,
            kind=engine.TimerKind.LEASE.value,
            due_at=self._clock() + self._timing.lease,
        )
        await self._store.schedule_timer(lease)

    async def _timer_fired(self, envelope: events_pb2.Envelope) -> None:
        fired = envelope.timer_fired
        kind = TIMER_KIND_FROM_PROTO.get(fired.kind)
        if kind is None:
            raise DecodeError(f"unknown timer kind {fired.kind}")
        run_id = envelope.run_id
        if kind is engine.TimerKind.LEASE and not await self._lease_expired(
            run_id, fired.node_id, fired.attempt
        ):
            return
        await self._apply(
            run_id,
            lambda r, d, now: engine.timer_fired(r, d, fired.node_id, fired.attempt, kind, now),
        )

    async def _lease_expired(self, run_id: str, node_id: str, attempt: int) -> bool:
        """True when the attempt's executor is gone (and the attempt is marked lost)."""
        now = self._clock()
        lease = await self._store.find_timer(
            timer_id(run_id, node_id, attempt, engine.TimerKind.LEASE.value)
        )
        if lease is not None and lease.due_at > now:
            return False  # a heartbeat moved it after it was read as due
        run = await self._load(run_id)
        task = run.tasks.get(node_id) if run else None
        if task is None or task.status is not TaskStatus.RUNNING or task.attempt != attempt:
            return False
        lost = await self._store.mark_attempt_lost(run_id, node_id, attempt, task.executor_id, now)
        if lost:
            log.warning("run %s: executor %s lost %s", run_id, task.executor_id, node_id)
            self._metrics.attempts_lost.inc()
        return lost

    async def _child_run_finished(self, envelope: events_pb2.Envelope) -> None:
        child = envelope.child_run_finished
        status = codec.RUN_STATUS_FROM_PROTO.get(child.status, RunStatus.FAILED)
        output = codec.value_to_json(child.output)
        error = codec.error_from_proto(child.error) if child.error.code else None
        await self._apply(
            envelope.run_id,
            lambda r, d, now: engine.child_run_finished(
                r, d, child.node_id, child.attempt, child.child_run_id, status, output, error, now
            ),
        )

    async def _run_command(self, envelope: events_pb2.Envelope) -> None:
        command = codec.command_from_proto(envelope.run_command)
        current: WorkflowDefinition | None = None
        if command.action == "restart":
            run = await self._load(envelope.run_id)
            if run is None:
                raise DecodeError(f"command for unknown run {envelope.run_id}")
            if not run.test:
                latest = await self._store.latest_workflow(run.workflow_id)
                version = command.workflow_version or latest.version
                stored = await self._store.workflow_version(run.workflow_id, version)
                current = stored.definition
                self._definitions[(run.workflow_id, version)] = current
                command = replace(command, workflow_version=version)
        await self._apply(
            envelope.run_id,
            lambda r, d, now: control.apply_command(r, d, command, now, current),
        )

    # --- the loop every event goes through ---------------------------------------------

    async def _apply(
        self,
        run_id: str,
        step: Step,
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
                # A redelivery: make sure what this run waits for was really sent.
                resend = engine.resend_effects(run, definition, now, self._timing)
                await self._effects.carry_out(run, definition, resend)
                if run.status.finished and definition.concurrency.max_runs and not run.test:
                    await self._effects.publish(await self._effects.free_slot(run))
                await self._effects.run_after.run_finished(run, definition)  # idempotent
                return
            try:
                stored = await self._store.save_run(decision.run, run.revision)
            except ConflictError:
                self._runs.pop(run_id, None)
                continue
            self._remember(stored)
            if stored.workflow_version != run.workflow_version:  # a restart on a new version
                definition = await self._definition(stored)
            await self._effects.carry_out(stored, definition, decision.effects, finished_at)
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
        key = _definition_key(run)
        if key not in self._definitions:
            if run.test:
                self._definitions[key] = await self._store.snapshot(run.run_id)
            else:
                workflow = await self._store.workflow_version(*key)
                self._definitions[key] = workflow.definition
        return self._definitions[key]


def _definition_key(run: RunState) -> tuple[str, int]:
    # Dry runs have no registered version: their definition is the run's own snapshot.
    return (f"test:{run.run_id}", 0) if run.test else (run.workflow_id, run.workflow_version)


def _no_child(parent: ParentLink, run_id: str, exc: Exception) -> engine.NotifyParent:
    error = TaskError("workflow.not_found", str(exc))
    return engine.NotifyParent(parent, run_id, RunStatus.FAILED, None, error)


def _orphan(run_id: str) -> RunState:
    """A stand-in for a run that could not be created, to address effects with."""
    return RunState(
        run_id=run_id,
        workflow_id="",
        workflow_name="",
        workflow_version=0,
        status=RunStatus.FAILED,
        trigger=TriggerInfo(TriggerKind.WORKFLOW),
        created_at=_now(),
    )


_EMPTY = WorkflowDefinition(name="", nodes=(), edges=())
