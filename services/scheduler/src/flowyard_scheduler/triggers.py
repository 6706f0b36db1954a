"""The scheduler's trigger loops, started beside its run consumer: the cron loop
(schedules) and the consumer of producers' events on ``flowyard.events.ingest``.

Events are consumed in their own consumer group (``<prefix>.scheduler-events``), so a
rebalance of one loop never pauses the other; run-after is not a loop but a hook where a
run's success is carried out (:mod:`flowyard_scheduler.run_after`).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from flowyard.adapters.kafka import Publisher, RecordConsumer
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.trigger_store import TriggerStore
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics

from flowyard_scheduler.cron import CronLoop
from flowyard_scheduler.events import EventIngest
from flowyard_scheduler.registry import TriggerRegistry

EVENT_CONCURRENCY = 16


class TriggerLoops:
    def __init__(
        self,
        settings: Settings,
        store: MongoStore,
        publisher: Publisher,
        metrics: ServiceMetrics,
        service: str,
        stop: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._service = service
        self._stop = stop
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> TriggerLoops:
        settings, store = self._settings, self._store
        triggers = TriggerStore(store)
        await triggers.ensure_indexes()
        registry = TriggerRegistry(store, triggers)
        ingest = EventIngest(settings, store, self._publisher, self._metrics, registry)
        async with contextlib.AsyncExitStack() as stack:
            self.events = await stack.enter_async_context(
                RecordConsumer(
                    settings,
                    [settings.topics.events_ingest],
                    settings.topics.group(f"{self._service}-events"),
                    ingest.handle,
                    self._publisher,
                    self._metrics,
                    self._service,
                    concurrency=EVENT_CONCURRENCY,
                )
            )
            self._stack = stack.pop_all()
        self._tasks.append(
            asyncio.create_task(self.events.run_until(self._done), name="event-ingest")
        )
        if settings.cron_poll_seconds > 0:
            cron = CronLoop(settings, store, self._publisher, self._metrics, registry, triggers)
            self._tasks.append(asyncio.create_task(cron.run_until(self._done), name="cron"))
        self._watch = asyncio.create_task(self._follow_stop())
        return self

    async def _follow_stop(self) -> None:
        await self._stop.wait()
        self._done.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._watch.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 30)
        except TimeoutError:
            for task in self._tasks:
                task.cancel()
        await self._stack.aclose()
