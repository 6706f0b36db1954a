"""``flowyard-scheduler``: consumes triggers, task events and commands, advances runs,
and fires durable timers."""

from __future__ import annotations

import asyncio
import contextlib

from flowyard.adapters.kafka import EnvelopeConsumer, KafkaPublisher, ensure_topics
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.service import run_service

from flowyard_scheduler.scheduler import Scheduler
from flowyard_scheduler.timers import TimerPoller
from flowyard_scheduler.triggers import TriggerLoops

SERVICE = "scheduler"


async def serve(settings: Settings, metrics: ServiceMetrics, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    async with (
        MongoStore(settings.mongo_url, settings.mongo_db) as store,
        KafkaPublisher(settings.kafka_bootstrap, SERVICE) as publisher,
    ):
        scheduler = Scheduler(settings, store, publisher, metrics)
        timers = TimerPoller(settings, store, publisher, metrics)
        topics = settings.topics
        async with EnvelopeConsumer(
            settings,
            [topics.triggers, topics.task_events, topics.commands],
            topics.group(SERVICE),
            scheduler.handle,
            publisher,
            metrics,
            SERVICE,
            concurrency=16,
            ordered_by_key=True,
            on_revoked=scheduler.forget_runs,
        ) as consumer:
            poller = asyncio.create_task(timers.run_until(stop), name="timer-poller")
            try:
                # Schedules and producers' events (FEATURES T2, T4), beside the run loop.
                async with TriggerLoops(settings, store, publisher, metrics, SERVICE, stop):
                    await consumer.run_until(stop)
            finally:
                # Cancelling mid-batch is safe: a timer is deleted only after it fired.
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller


def main() -> None:
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
