"""``flowyard-executor``: runs dispatched tasks."""

from __future__ import annotations

import asyncio
import logging

from flowyard.adapters.credentials import CredentialStore, cipher_from_key
from flowyard.adapters.kafka import EnvelopeConsumer, KafkaPublisher, ensure_topics
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.service import run_service

from flowyard_executor.actions import Actions
from flowyard_executor.executor import Executor
from flowyard_executor.sandbox import CodeSandbox, SandboxLimits, resolve_confinement

SERVICE = "executor"
log = logging.getLogger(__name__)


def sandbox_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        cpu_seconds=settings.code_cpu_seconds,
        memory_bytes=settings.code_memory_mb * 1024 * 1024,
        wall_seconds=settings.code_timeout_seconds,
        disk_bytes=settings.code_disk_mb * 1024 * 1024,
    )


async def serve(settings: Settings, metrics: ServiceMetrics, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    # Refuses to start (naming the cause) rather than run code nodes unconfined by accident.
    confinement = await asyncio.to_thread(
        resolve_confinement,
        settings.code_sandbox,
        settings.code_sandbox_python,
        settings.code_sandbox_uid,
    )
    if confinement.kind == "none":
        log.warning("code nodes run WITHOUT isolation (FLOWYARD_CODE_SANDBOX=none)")
    log.info("code sandbox: %s", confinement.describe())
    async with (
        MongoStore(settings.mongo_url, settings.mongo_db) as store,
        KafkaPublisher(settings.kafka_bootstrap, SERVICE) as publisher,
        CodeSandbox(sandbox_limits(settings), 2, confinement) as sandbox,
        Actions(settings, sandbox, _credentials(settings, store)) as actions,
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


def _credentials(settings: Settings, store: MongoStore) -> CredentialStore | None:
    """The credential store, when this executor has the key to read it."""
    cipher = cipher_from_key(settings.credentials_key)
    return None if cipher is None else CredentialStore(store.database, cipher)


def main() -> None:
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
