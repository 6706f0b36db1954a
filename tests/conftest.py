from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from flowyard.adapters.kafka import ensure_topics
from flowyard.config import Settings, Topics

from tests.stack import StackAddresses, provide_stack

T = TypeVar("T")


@pytest.fixture(scope="session")
def stack() -> Iterator[StackAddresses]:
    with provide_stack() as addresses:
        yield addresses


@pytest.fixture
async def settings(stack: StackAddresses) -> Settings:
    """Settings with a fresh topic prefix and database: no test sees another's data."""
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
    return value


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
