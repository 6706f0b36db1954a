"""Fires durable timers: delays, retry backoffs, heartbeat leases, node deadlines.

Timers live in MongoDB with their due time indexed, so they survive a restart of any
scheduler. The poller turns each due timer into a ``TimerFired`` event on the task-events
topic, keyed by run id: the instance that owns the run handles it in order with the
run's other events. A timer is deleted only after its event is published, so a crash in
between fires it twice at worst; the engine ignores a timer for a task that moved on.
Several scheduler instances may poll at once for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from flowyard import codec
from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.domain.engine import TimerKind
from flowyard.errors import InfrastructureError
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2
from google.protobuf.message import Message

from flowyard_scheduler.effects import TIMER_KIND_TO_PROTO

log = logging.getLogger(__name__)

BATCH = 200


def _now() -> datetime:
    return datetime.now(UTC)


class TimerPoller:
    def __init__(
        self,
        settings: Settings,
        store: MongoStore,
        publisher: Publisher,
        metrics: ServiceMetrics,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._topic = settings.topics.task_events
        self._interval = settings.timer_poll_seconds
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock

    async def run_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                fired = await self.fire_due()
            except InfrastructureError as exc:
                log.warning("timer poll failed, trying again: %s", exc)
                fired = 0
            if fired < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._interval)

    async def fire_due(self) -> int:
        """Publish every timer due now; the number fired."""
        timers = await self._store.due_timers(self._clock(), BATCH)
        if not timers:
            return 0
        messages: list[tuple[str, str, Message]] = []
        for timer in timers:
            envelope = codec.new_envelope(timer.run_id, timer.workflow_id, timer.workflow_version)
            envelope.timer_fired.CopyFrom(
                events_pb2.TimerFired(
                    node_id=timer.node_id,
                    attempt=timer.attempt,
                    kind=TIMER_KIND_TO_PROTO[TimerKind(timer.kind)],
                    due_at=codec.time_to_proto(timer.due_at),
                )
            )
            messages.append((self._topic, timer.run_id, envelope))
        await self._publisher.publish_many(messages)
        for timer in timers:
            await self._store.delete_fired_timer(timer)
            self._metrics.timers_fired.labels(kind=timer.kind).inc()
        return len(timers)
