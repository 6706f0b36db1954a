"""The services running in this process against real Kafka and the real MongoDB-compatible
server, each with its own metrics registry, plus gRPC stubs talking to the gateway.

The stubs carry an admin token (principal ``e2e-admin``) issued straight into the token
store; ``await flowyard.client_as(name, role)`` gives stubs with another principal's token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from flowyard.adapters.tokens import TokenStore
from flowyard.client_auth import bearer_channel
from flowyard.config import Settings
from flowyard.domain.access import Role
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import auth_pb2, auth_pb2_grpc, gateway_pb2_grpc
from flowyard_api_gateway.__main__ import Gateway
from flowyard_executor.__main__ import serve as serve_executor
from flowyard_scheduler.__main__ import serve as serve_scheduler
from prometheus_client import CollectorRegistry

from tests.e2e.servers import Outside, outside_world

ADMIN = "e2e-admin"


@dataclass
class Client:
    """Stubs whose calls carry one token."""

    token: str
    channel: grpc.aio.Channel
    workflows: gateway_pb2_grpc.WorkflowServiceStub
    runs: gateway_pb2_grpc.RunServiceStub
    tokens: auth_pb2_grpc.TokenServiceStub

    @classmethod
    def connect(cls, address: str, token: str) -> Client:
        channel = bearer_channel(address, token)
        return cls(
            token,
            channel,
            gateway_pb2_grpc.WorkflowServiceStub(channel),
            gateway_pb2_grpc.RunServiceStub(channel),
            auth_pb2_grpc.TokenServiceStub(channel),
        )


@dataclass
class RunningFlowyard:
    settings: Settings
    workflows: gateway_pb2_grpc.WorkflowServiceStub
    runs: gateway_pb2_grpc.RunServiceStub
    channel: grpc.aio.Channel
    metrics: dict[str, ServiceMetrics]
    address: str = ""
    admin: Client | None = None
    principal: str = ADMIN
    others: list[Client] = field(default_factory=list)

    @property
    def tokens(self) -> auth_pb2_grpc.TokenServiceStub:
        assert self.admin is not None
        return self.admin.tokens

    def client(self, token: str) -> Client:
        """Stubs sending ``token`` (any string, e.g. a bad one), closed with the fixture."""
        client = Client.connect(self.address, token)
        self.others.append(client)
        return client

    async def client_as(self, name: str, role: Role) -> Client:
        """Stubs with a new token for principal ``name``, issued by the admin."""
        issued = await self.tokens.IssueToken(auth_pb2.IssueTokenRequest(name=name, role=int(role)))
        return self.client(issued.token)


async def admin_token(settings: Settings, name: str = ADMIN) -> str:
    """An admin token issued straight into the test's token store (as the bootstrap does)."""
    async with TokenStore.connect(settings.mongo_url, settings.mongo_db) as tokens:
        _record, token = await tokens.issue(name, Role.ADMIN, created_by="e2e fixture")
    return token


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
        admin = Client.connect(gateway.address, await admin_token(settings))
        running = RunningFlowyard(
            settings, admin.workflows, admin.runs, admin.channel, metrics, gateway.address, admin
        )
        try:
            yield running
        finally:
            for client in [admin, *running.others]:
                await client.channel.close()
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
