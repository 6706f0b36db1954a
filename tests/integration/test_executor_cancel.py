"""An executor kills an attempt whose cancellation it got, even when the cancellation
arrives while the dispatch is still being claimed (before the action started)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from flowyard import codec
from flowyard.adapters.kafka import Record
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.domain.run import Attempt
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2
from flowyard_executor.executor import Executor
from flowyard_executor.nodes import NodeOutcome
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.integration

RECORD = Record("t", 0, 0, b"r1", b"")


class SlowClaims(MongoStore):
    """Claims wait for ``release``: the window in which a cancellation may arrive."""

    def __init__(self, url: str, database: str) -> None:
        super().__init__(url, database)
        self.claiming = asyncio.Event()
        self.release = asyncio.Event()

    async def claim_attempt(self, attempt: Attempt) -> Attempt | None:
        self.claiming.set()
        await self.release.wait()
        return await super().claim_attempt(attempt)


class Published:
    def __init__(self) -> None:
        self.messages: list[events_pb2.Envelope] = []

    async def publish(self, topic: str, key: str, message: Message) -> None:
        assert isinstance(message, events_pb2.Envelope)
        self.messages.append(message)

    async def publish_many(self, items: list[tuple[str, str, Message]]) -> None:
        for topic, key, message in items:
            await self.publish(topic, key, message)


class Sleeper:
    """Actions whose every node sleeps 30 s (a long code task)."""

    def __init__(self) -> None:
        self.cancelled = False

    async def run(self, *_: Any) -> NodeOutcome:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return NodeOutcome(output="woke")


def envelope(**payload: Any) -> events_pb2.Envelope:
    message = codec.new_envelope("r1", "w1", 1)
    for name, value in payload.items():
        getattr(message, name).CopyFrom(value)
    return message


async def test_a_cancellation_during_the_claim_stops_the_attempt(settings: Settings) -> None:
    async with SlowClaims(settings.mongo_url, settings.mongo_db) as store:
        publisher, actions = Published(), Sleeper()
        executor = Executor(
            settings,
            store,
            publisher,  # type: ignore[arg-type]
            actions,  # type: ignore[arg-type]
            ServiceMetrics(CollectorRegistry(), "executor"),
        )
        dispatch = envelope(
            dispatch_task=events_pb2.DispatchTask(node_id="nap", node_type="code", attempt=1)
        )
        began = time.monotonic()
        handling = asyncio.create_task(executor.handle(dispatch, RECORD))
        await asyncio.wait_for(store.claiming.wait(), 5)

        cancel = envelope(cancel_task=events_pb2.CancelTask(node_id="nap", attempt=1))
        await executor.handle(cancel, RECORD)
        store.release.set()
        await asyncio.wait_for(handling, 10)

        assert time.monotonic() - began < 10
        reports = [m for m in publisher.messages if m.WhichOneof("payload") == "task_failed"]
        assert not [m for m in publisher.messages if m.WhichOneof("payload") == "task_succeeded"]
        [failed] = reports
        assert failed.task_failed.error.code == "task.cancelled"
        recorded = await store.find_attempt("r1", "nap", 1)
        assert recorded is not None and recorded.status.finished
        assert recorded.error is not None and recorded.error.code == "task.cancelled"
