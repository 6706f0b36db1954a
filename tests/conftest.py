from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from flowyard.adapters.kafka import ensure_topics
from flowyard.config import Settings, Topics
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pymongo import AsyncMongoClient

from tests.stack import StackAddresses, provide_stack

T = TypeVar("T")


@pytest.fixture(scope="session")
def stack() -> Iterator[StackAddresses]:
    with provide_stack() as addresses:
        yield addresses


@pytest.fixture
async def settings(stack: StackAddresses) -> AsyncIterator[Settings]:
    """Settings with a fresh topic prefix and database: no test sees another's data.

    Both are deleted afterwards: a whole suite's topics (eight per test) would otherwise
    pile up into thousands of partitions and exhaust a small broker's memory.
    """
    unique = uuid.uuid4().hex[:10]
    value = replace(
        Settings(),
        kafka_bootstrap=stack.kafka_bootstrap,
        mongo_url=stack.mongo_url,
        mongo_db=f"test_{unique}",
        topics=Topics(prefix=f"t{unique}"),
        topic_partitions=2,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        metrics_port=0,
        code_timeout_seconds=20,
    )
    await ensure_topics(value)
    yield value
    await asyncio.to_thread(_delete_topics, value)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(value.mongo_url)
    try:
        await client.drop_database(value.mongo_db)
    finally:
        await client.close()


def _delete_topics(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="test-cleanup")
    try:
        prefix = f"{settings.topics.prefix}."
        mine = [t for t in admin.list_topics() if t.startswith(prefix)]
        if mine:
            with contextlib.suppress(KafkaError):
                admin.delete_topics(mine, timeout_ms=10_000)
    finally:
        admin.close()


async def assert_eventually(
    check: Callable[[], Awaitable[T] | T], within: float = 20.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns without raising AssertionError; return its value."""
    deadline = time.monotonic() + within
    while True:
        try:
            result: Any = check()
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[no-any-return]
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[Any]]:
    return assert_eventually
