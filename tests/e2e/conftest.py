"""The services running in this process against real Kafka and the real MongoDB-compatible
server, each with its own metrics registry, plus gRPC stubs talking to the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import gateway_pb2_grpc
from flowyard_api_gateway.__main__ import Gateway
from flowyard_executor.__main__ import serve as serve_executor
from flowyard_scheduler.__main__ import serve as serve_scheduler
from prometheus_client import CollectorRegistry

from tests.e2e.servers import Outside, outside_world


@dataclass
class RunningFlowyard:
    settings: Settings
    workflows: gateway_pb2_grpc.WorkflowServiceStub
    runs: gateway_pb2_grpc.RunServiceStub
    channel: grpc.aio.Channel
    metrics: dict[str, ServiceMetrics]


@pytest.fixture
async def flowyard(settings: Settings) -> AsyncIterator[RunningFlowyard]:
    stop = asyncio.Event()
    metrics = {
        name: ServiceMetrics(CollectorRegistry(), name)
        for name in ("scheduler", "executor", "api-gateway")
    }
    services = [
        asyncio.create_task(serve_scheduler(settings, metrics["scheduler"], stop)),
        asyncio.create_task(serve_executor(settings, metrics["executor"], stop)),
    ]
    async with Gateway(settings, metrics["api-gateway"]) as gateway:
        channel = grpc.aio.insecure_channel(gateway.address)
        try:
            yield RunningFlowyard(
                settings,
                gateway_pb2_grpc.WorkflowServiceStub(channel),
                gateway_pb2_grpc.RunServiceStub(channel),
                channel,
                metrics,
            )
        finally:
            await channel.close()
            stop.set()
            done, pending = await asyncio.wait(services, timeout=30)
            for task in pending:
                task.cancel()
            for task in done:
                with contextlib.suppress(asyncio.CancelledError):
                    task.result()  # surfaces a service that crashed during the test


@pytest.fixture
def outside() -> Iterator[Outside]:
    """Loopback HTTP, Slack and SMTP servers plus a refused port (see tests/e2e/servers.py).

    A test module points the services at them by overriding ``settings``:
    ``def settings(settings, outside): return outside.configure(settings)``.
    """
    with outside_world() as servers:
        yield servers
