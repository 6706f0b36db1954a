"""``flowyard-executor``: runs dispatched tasks."""

from __future__ import annotations

import asyncio

from flowyard.adapters.kafka import EnvelopeConsumer, KafkaPublisher, ensure_topics
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.service import run_service

from flowyard_executor.actions import Actions
from flowyard_executor.executor import Executor
from flowyard_executor.sandbox import CodeSandbox, SandboxLimits

SERVICE = "executor"


def sandbox_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        cpu_seconds=settings.code_cpu_seconds,
        memory_bytes=settings.code_memory_mb * 1024 * 1024,
        wall_seconds=settings.code_timeout_seconds,
    )


async def serve(settings: Settings, metrics: ServiceMetrics, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    async with (
        MongoStore(settings.mongo_url, settings.mongo_db) as store,
        KafkaPublisher(settings.kafka_bootstrap, SERVICE) as publisher,
        CodeSandbox(sandbox_limits(settings), warm_processes=2) as sandbox,
        Actions(settings, sandbox) as actions,
    ):
        executor = Executor(settings, store, publisher, actions, metrics)
        async with EnvelopeConsumer(
            settings,
            [settings.topics.tasks],
            settings.topics.group(SERVICE),
            executor.handle,
            publisher,
            metrics,
            SERVICE,
            concurrency=settings.executor_concurrency,
        ) as consumer:
            await consumer.run_until(stop)


def main() -> None:
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
