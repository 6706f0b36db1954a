"""``flowyard-api-gateway``: the gRPC front door (with health and reflection).

``flowyard-api-gateway issue-token --name NAME --role ROLE`` issues a token straight into
the token store (MongoDB, from the same FLOWYARD_MONGO_* settings) and prints it: the way
to the first admin token, which no gRPC call can give without a token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from types import TracebackType

import grpc
from flowyard.adapters.credentials import CredentialStore, cipher_from_key
from flowyard.adapters.kafka import KafkaPublisher, ensure_topics
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.tokens import TokenStore
from flowyard.config import Settings, load_settings
from flowyard.domain.access import Role, check_principal_name
from flowyard.errors import InfrastructureError
from flowyard.metrics import ServiceMetrics
from flowyard.service import run_service
from flowyard.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    credentials_pb2,
    credentials_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flowyard_api_gateway.alert_servicer import add_alert_service, prepare_alerts
from flowyard_api_gateway.auth import AuthInterceptor, TokenAuthenticator
from flowyard_api_gateway.control import RunControlServicer
from flowyard_api_gateway.credential_service import CredentialServicer
from flowyard_api_gateway.decoding import RequestDecodingInterceptor
from flowyard_api_gateway.history_servicer import add_history_service, prepare_history
from flowyard_api_gateway.metrics_interceptor import RequestMetricsInterceptor
from flowyard_api_gateway.run_events import RunEventsHub
from flowyard_api_gateway.servicers import RunServicer, WorkflowServicer
from flowyard_api_gateway.token_service import TokenServicer
from flowyard_api_gateway.webhooks import WebhookServer

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
            tokens = TokenStore(store.database)
            await tokens.ensure_indexes()
            await prepare_alerts(store)
            await prepare_history(store)
            publisher = await stack.enter_async_context(
                KafkaPublisher(settings.kafka_bootstrap, SERVICE)
            )
            hub = await stack.enter_async_context(
                RunEventsHub(settings.kafka_bootstrap, settings.topics.run_events)
            )
            # Webhooks (FEATURES T3) on the HTTP port; webhooks.address is where it listens.
            self.webhooks = await stack.enter_async_context(
                WebhookServer(settings, store, publisher, self._metrics)
            )
            self._server = build_server(settings, store, tokens, publisher, hub, self._metrics)
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
    tokens: TokenStore,
    publisher: KafkaPublisher,
    hub: RunEventsHub,
    metrics: ServiceMetrics,
) -> grpc.aio.Server:
    authenticator = TokenAuthenticator(tokens)
    server = grpc.aio.server(
        # The first interceptor is the outermost: calls refused by auth are counted too.
        # Requests are parsed last, once admitted (malformed bytes: INVALID_ARGUMENT).
        interceptors=[
            RequestMetricsInterceptor(metrics),
            AuthInterceptor(authenticator),
            RequestDecodingInterceptor(),
        ],
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
    gateway_pb2_grpc.add_RunControlServiceServicer_to_server(
        RunControlServicer(store, publisher, settings.topics), server
    )
    auth_pb2_grpc.add_TokenServiceServicer_to_server(TokenServicer(tokens, authenticator), server)
    credentials = CredentialStore(store.database, cipher_from_key(settings.credentials_key))
    credentials_pb2_grpc.add_CredentialServiceServicer_to_server(
        CredentialServicer(credentials), server
    )
    history_service = add_history_service(server, store, hub)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [
        gateway_pb2.DESCRIPTOR.services_by_name[name].full_name
        for name in ("WorkflowService", "RunService", "RunControlService")
    ] + [
        auth_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
        credentials_pb2.DESCRIPTOR.services_by_name["CredentialService"].full_name,
    ]
    services.append(history_service)
    services.append(add_alert_service(server, store, settings))
    for name in [*services, ""]:
        asyncio.get_running_loop().create_task(
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        )
    reflection.enable_server_reflection(
        [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return server


async def issue_token(settings: Settings, name: str, role: Role, created_by: str) -> str:
    """Issue a token straight into the store; returns the token."""
    async with TokenStore.connect(settings.mongo_url, settings.mongo_db) as tokens:
        _record, token = await tokens.issue(name, role, created_by=created_by)
    return token


def _issue_token_command(args: argparse.Namespace) -> int:
    problem = check_principal_name(args.name)
    if problem:
        print(f"error: --name: {problem}", file=sys.stderr)
        return 2
    settings = load_settings(SERVICE)
    role = Role.from_label(args.role)
    try:
        token = asyncio.run(issue_token(settings, args.name, role, "issue-token command"))
    except InfrastructureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(token)
    print(
        f"issued {role.with_article} token for {args.name} (database {settings.mongo_db}); "
        "it is shown only this once",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flowyard-api-gateway",
        description="Flowyard's gRPC gateway. Without a command it serves.",
    )
    commands = parser.add_subparsers(dest="command")
    issue = commands.add_parser(
        "issue-token",
        help="issue a token straight into the store (the first admin token) and print it",
        description="Needs only MongoDB (FLOWYARD_MONGO_URL, FLOWYARD_MONGO_DB), no token. "
        "Prints the token on stdout, once.",
    )
    issue.add_argument("--name", required=True, help="the principal's name")
    issue.add_argument(
        "--role", required=True, choices=[r.label for r in Role], help="the token's role"
    )
    args = parser.parse_args(argv)
    if args.command == "issue-token":
        sys.exit(_issue_token_command(args))
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
