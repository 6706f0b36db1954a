"""``flowyard-api-gateway``: the gRPC front door (with health and reflection)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import grpc
from flowyard.adapters.kafka import KafkaPublisher, ensure_topics
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.service import run_service
from flowyard.v1 import gateway_pb2, gateway_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flowyard_api_gateway.history_servicer import add_history_service, prepare_history
from flowyard_api_gateway.metrics_interceptor import RequestMetricsInterceptor
from flowyard_api_gateway.run_events import RunEventsHub
from flowyard_api_gateway.servicers import RunServicer, WorkflowServicer

SERVICE = "api-gateway"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)


async def serve(settings: Settings, metrics: ServiceMetrics, stop: asyncio.Event) -> None:
    async with Gateway(settings, metrics) as gateway:
        log.info("gRPC on %s", gateway.address)
        await stop.wait()


class Gateway:
    """The gateway's resources and gRPC server; ``port`` is the bound port."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._stack = contextlib.AsyncExitStack()
        self.port = 0

    @property
    def address(self) -> str:
        host = self._settings.grpc_addr.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def __aenter__(self) -> Gateway:
        settings = self._settings
        await ensure_topics(settings)
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                MongoStore(settings.mongo_url, settings.mongo_db)
            )
            await prepare_history(store)
            publisher = await stack.enter_async_context(
                KafkaPublisher(settings.kafka_bootstrap, SERVICE)
            )
            hub = await stack.enter_async_context(
                RunEventsHub(settings.kafka_bootstrap, settings.topics.run_events)
            )
            self._server = build_server(settings, store, publisher, hub, self._metrics)
            self.port = self._server.add_insecure_port(settings.grpc_addr)
            await self._server.start()
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Stop taking calls, give in-flight calls 5 s, then cancel them.
        await self._server.stop(grace=5)
        await self._stack.aclose()


def build_server(
    settings: Settings,
    store: MongoStore,
    publisher: KafkaPublisher,
    hub: RunEventsHub,
    metrics: ServiceMetrics,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[RequestMetricsInterceptor(metrics)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ],
    )
    gateway_pb2_grpc.add_WorkflowServiceServicer_to_server(
        WorkflowServicer(store, publisher, settings.topics), server
    )
    gateway_pb2_grpc.add_RunServiceServicer_to_server(
        RunServicer(store, publisher, settings.topics, hub, metrics), server
    )
    history_service = add_history_service(server, store, hub)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [
        gateway_pb2.DESCRIPTOR.services_by_name[name].full_name
        for name in ("WorkflowService", "RunService")
    ]
    services.append(history_service)
    for name in [*services, ""]:
        asyncio.get_running_loop().create_task(
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        )
    reflection.enable_server_reflection(
        [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return server


def main() -> None:
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
