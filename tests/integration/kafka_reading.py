"""Reading what services wrote to Kafka, for assertions."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from flowyard.config import Settings
from flowyard.v1 import events_pb2


async def read_dead_letters(settings: Settings, count: int) -> list[events_pb2.DeadLetter]:
    """The first ``count`` dead letters of this test's topic (fails after 30 s)."""
    consumer = AIOKafkaConsumer(
        settings.topics.dead_letter,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    letters: list[events_pb2.DeadLetter] = []
    try:
        async with asyncio.timeout(30):
            while len(letters) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        letter = events_pb2.DeadLetter()
                        letter.ParseFromString(record.value)
                        letters.append(letter)
    finally:
        await consumer.stop()
    return letters
