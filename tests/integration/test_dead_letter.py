"""Messages a service cannot decode go to the dead-letter topic, and consumption goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from flowyard import codec
from flowyard.adapters.kafka import EnvelopeConsumer, KafkaPublisher, Record
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2
from prometheus_client import CollectorRegistry

from tests.integration.kafka_reading import read_dead_letters

pytestmark = pytest.mark.integration


async def test_undecodable_messages_are_dead_lettered_and_good_ones_still_handled(
    settings: Settings, eventually: Callable[..., Awaitable[Any]]
) -> None:
    handled: list[str] = []

    async def handler(envelope: events_pb2.Envelope, record: Record) -> None:
        handled.append(envelope.run_id)

    metrics = ServiceMetrics(CollectorRegistry(), "test")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        good = codec.new_envelope("run-1")
        good.task_started.node_id = "a"
        topic = settings.topics.task_events
        await producer.send_and_wait(topic, b"not protobuf \xff\x00", key=b"run-0")
        await producer.send_and_wait(topic, good.SerializeToString(), key=b"run-1")
    finally:
        await producer.stop()

    async with KafkaPublisher(settings.kafka_bootstrap, "test") as publisher:
        consumer = EnvelopeConsumer(
            settings, [topic], settings.topics.group("test"), handler, publisher, metrics, "test"
        )
        async with consumer:
            runner = asyncio.create_task(consumer.run())

            def good_one_handled() -> None:
                assert handled == ["run-1"]

            await eventually(good_one_handled, within=30)
            consumer.stop()
            await runner

    [letter] = await read_dead_letters(settings, 1)
    assert letter.source_topic == topic
    assert letter.key == b"run-0"
    assert letter.value == b"not protobuf \xff\x00"
    assert "Envelope" in letter.reason or "empty" in letter.reason or "payload" in letter.reason
    assert letter.service == "test"
    dead = metrics.registry.get_sample_value("flowyard_dead_letters_total", {"topic": topic})
    assert dead == 1.0
